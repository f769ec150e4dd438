"""Rules files: the shipped examples load; a bad file names its line and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_app.triggers.facts import WindowFacts
from stream_app.triggers.rules import Conditions, RulesError, load_rules, parse_rules

GOOD = """\
rules:
  - name: r1
    threshold: {enter: 0.6, exit: 0.4}
"""


def test_shipped_examples_load() -> None:
    rules = load_rules()
    assert [r.name for r in rules.rules] == ["cart_abandon_rescue", "high_intent_browse"]
    assert rules.by_name("cart_abandon_rescue").conditions.has_cart is True


def test_minimal_rule_defaults() -> None:
    rule = parse_rules(GOOD).rules[0]
    assert (rule.persistence, rule.once_per_session, rule.cooldown_s) == (1, True, 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("exit: 0.4", "exit: 0.7"), "x.yaml:3: rules[0].threshold: exit must be"),
        (GOOD + "    persistence: 0\n", "x.yaml:4: rules[0].persistence: Input should be"),
        (GOOD + "    colour: red\n", "x.yaml:4: rules[0].colour: Extra inputs"),
        (GOOD.replace("r1", "Bad Name"), "x.yaml:2: rules[0].name: String should match"),
        (GOOD + GOOD[7:], "x.yaml:2: rules: rule name 'r1' is used twice"),
        ("rules: [\n", "x.yaml:2: not valid YAML"),
        ("- 1\n", "x.yaml:1: expected a mapping"),
    ],
)
def test_bad_file_is_one_line_with_the_line_number(text: str, expected: str) -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(text, "x.yaml")
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules(tmp_path / "nope.yaml")


def test_conditions() -> None:
    facts = WindowFacts(n_events=5, n_cart=1, cart_value=30.0, top_category="Home/Apparel/Men's")
    assert Conditions(has_cart=True, min_cart_value=30, category_prefix="Home/Apparel").hold(facts)
    assert not Conditions(has_cart=False).hold(facts)
    assert not Conditions(min_cart_value=30.01).hold(facts)
    assert not Conditions(min_events=6).hold(facts)
    assert not Conditions(category_prefix="Home/Bags").hold(facts)
