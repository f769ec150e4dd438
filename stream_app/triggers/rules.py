"""Trigger rules: typed models and the YAML file they come from.

A rules file is ``{"rules": [Rule, ...]}``. A file that does not validate fails at start with
one line naming the file, the line and the problem (``RulesError``), never a traceback::

    rules.yaml:7: rules[0].threshold.exit: must be below enter (0.6)

The shipped examples are ``default_rules.yaml`` next to this module.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from stream_app.core.errors import ConfigError
from stream_app.triggers.facts import WindowFacts

RULE_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,47}$"


class RulesError(ConfigError):
    """A rules file that cannot be used; the message is one line with the file and line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Threshold(_Strict):
    """Hysteresis: fire when the score reaches ``enter``; re-arm only below ``exit``."""

    enter: float = Field(gt=0.0, le=1.0)
    exit: float = Field(ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _exit_below_enter(self) -> Threshold:
        if self.exit >= self.enter:
            raise ValueError(f"exit must be below enter ({self.enter})")
        return self


class Conditions(_Strict):
    """Window facts a session must show (all given ones must hold)."""

    has_cart: bool | None = None
    min_cart_value: float = Field(default=0.0, ge=0.0)
    min_events: int = Field(default=0, ge=0)
    category_prefix: str = ""

    def hold(self, facts: WindowFacts) -> bool:
        if self.has_cart is not None and facts.has_cart != self.has_cart:
            return False
        return (
            facts.cart_value >= self.min_cart_value
            and facts.n_events >= self.min_events
            and facts.top_category.startswith(self.category_prefix)
        )


class RateLimit(_Strict):
    """At most ``max_triggers`` of this rule per ``per_s`` seconds, across all workers."""

    max_triggers: int = Field(ge=1)
    per_s: int = Field(default=60, ge=1, le=86_400)


class Rule(_Strict):
    name: str = Field(pattern=RULE_NAME_PATTERN)
    description: str = ""
    threshold: Threshold
    persistence: int = Field(default=1, ge=1, le=100, description="consecutive scores >= enter")
    conditions: Conditions = Field(default_factory=Conditions)
    once_per_session: bool = True
    cooldown_s: int = Field(default=0, ge=0, le=90 * 86_400, description="per user")
    rate_limit: RateLimit | None = None


class RuleSet(_Strict):
    rules: tuple[Rule, ...] = Field(min_length=1)

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        names = [rule.name for rule in rules]
        if duplicate := next((n for n in names if names.count(n) > 1), None):
            raise ValueError(f"rule name {duplicate!r} is used twice")
        return rules

    def by_name(self, name: str) -> Rule:
        return next(rule for rule in self.rules if rule.name == name)


def default_rules_path() -> Path:
    return Path(str(resources.files("stream_app.triggers") / "default_rules.yaml"))


def load_rules(path: Path | None = None) -> RuleSet:
    """The rules in ``path`` (default: the shipped examples); ``RulesError`` if invalid."""
    path = path or default_rules_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{path}: cannot read rules file: {exc.strerror}") from None
    return parse_rules(text, str(path))


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else 0
        raise RulesError(f"{source}:{line}: not valid YAML: {exc.problem}") from None
    if not isinstance(data, dict):
        raise RulesError(f"{source}:1: expected a mapping with a 'rules' list")
    try:
        return RuleSet.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        loc = tuple(error["loc"])
        line = _line_of(node, loc)
        message = str(error["msg"]).removeprefix("Value error, ")
        raise RulesError(f"{source}:{line}: {_dotted(loc) or 'file'}: {message}") from None


def _dotted(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int:
    """The 1-based line of the deepest YAML node ``loc`` reaches."""
    if node is None:
        return 1
    for part in loc:
        child = _child(node, part)
        if child is None:
            break
        node = child
    return int(node.start_mark.line) + 1


def _child(node: yaml.Node, part: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == part:
                return value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]
    return None
