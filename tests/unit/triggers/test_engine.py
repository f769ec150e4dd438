"""Trigger evaluation and the engine over the in-memory state store (no servers)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.triggers.engine import TriggerEngine, TriggerRecord
from stream_app.triggers.evaluate import RuleState, ScoreInput, step, trigger_id
from stream_app.triggers.facts import WindowFacts
from stream_app.triggers.rules import RuleSet, parse_rules
from stream_app.triggers.state import InMemoryTriggerState

RULES = """\
rules:
  - name: cart
    threshold: {enter: 0.6, exit: 0.3}
    persistence: 2
    conditions: {has_cart: true}
    once_per_session: false
    cooldown_s: 0
  - name: once
    threshold: {enter: 0.6, exit: 0.3}
"""
CART = WindowFacts(n_events=3, n_cart=1, cart_value=20.0)
T0 = 1_700_000_000_000


def rules(text: str = RULES) -> RuleSet:
    return parse_rules(text)


def score(seq: int, p: float, session: str = "s1", user: str = "u1", **kw: object) -> ScoreInput:
    base = ScoreInput(session, user, p, "m1", seq, T0 + seq * 1000, T0 + seq * 1000, facts=CART)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def walk(rule_name: str, scores: Sequence[ScoreInput]) -> tuple[list[str], RuleState]:
    rule = rules().by_name(rule_name)
    state, whys = RuleState(), []
    for s in scores:
        result = step(rule, state, s)
        whys.append("FIRE" if result.wants_fire else result.why)
        state = result.if_fired if result.wants_fire and result.if_fired else result.if_not
    return whys, state


def test_hysteresis_persistence_and_rearm() -> None:
    ps = [0.7, 0.5, 0.7, 0.7, 0.9, 0.5, 0.2, 0.7, 0.7]
    whys, state = walk("cart", [score(i + 1, p) for i, p in enumerate(ps)])
    assert whys == [
        "streak",
        "between",
        "streak",
        "FIRE",
        "fired_already",
        "between",
        "below_exit",
        "streak",
        "FIRE",
    ]
    assert state.episode == 1


def test_once_per_session_never_rearms() -> None:
    whys, state = walk("once", [score(1, 0.9), score(2, 0.1), score(3, 0.9)])
    assert whys == ["FIRE", "below_exit", "fired_already"]
    assert state.episode == 0


def test_redelivered_stale_and_purchased_scores_never_fire() -> None:
    whys, _ = walk(
        "once",
        [
            score(1, 0.9, stale=True),
            score(1, 0.9),
            score(2, 0.9, purchased=True),
            score(3, 0.95, facts=dataclasses.replace(CART, has_purchase=True)),
        ],
    )
    assert whys == ["stale", "duplicate", "purchased", "purchased"]


def test_conditions_block_the_fire() -> None:
    browse = dataclasses.replace(CART, n_cart=0)
    whys, _ = walk("cart", [score(1, 0.9, facts=browse), score(2, 0.9, facts=browse)])
    assert whys == ["streak", "conditions"]


def test_missing_fields_read_as_false() -> None:
    s = ScoreInput.from_record({"session_id": "a", "score": 0.5})
    assert (s.stale, s.purchased, s.facts, s.reasons) == (False, False, WindowFacts(), ())


class Sink:
    def __init__(self) -> None:
        self.records: list[TriggerRecord] = []

    async def __call__(self, records: Sequence[TriggerRecord]) -> None:
        self.records.extend(records)


def engine(text: str = RULES, **kw: object) -> tuple[TriggerEngine, Sink, InMemoryTriggerState]:
    sink, state = Sink(), InMemoryTriggerState()
    eng = TriggerEngine(
        rules=rules(text), state=state, publish=sink, now_of=lambda s: s.last_event_time_ms, **kw
    )  # type: ignore[arg-type]
    return eng, sink, state


async def test_engine_fires_once_and_ids_are_deterministic() -> None:
    eng, sink, _ = engine()
    batch = [score(1, 0.9), score(2, 0.9), score(1, 0.9, session="s2"), score(2, 0.95, "s2")]
    await eng.process(batch)
    await eng.process(batch)  # the whole batch re-delivered
    fired = sorted((r.rule, r.session_id) for r in sink.records)
    assert fired == [("cart", "s1"), ("cart", "s2"), ("once", "s1"), ("once", "s2")]
    assert {r.trigger_id for r in sink.records} == {trigger_id(rule, sid, 0) for rule, sid in fired}


async def test_cooldown_per_user_and_rate_limit() -> None:
    text = """\
rules:
  - name: r
    threshold: {enter: 0.5, exit: 0.2}
    cooldown_s: 60
    rate_limit: {max_triggers: 2, per_s: 3600}
"""
    eng, sink, _ = engine(text)
    result = await eng.process([score(1, 0.9, "a", "u1"), score(1, 0.9, "b", "u1")])
    assert [r.session_id for r in sink.records] == ["a"]
    assert result.decisions["r:cooldown"] == 1
    result = await eng.process([score(1, 0.9, s, f"u-{s}") for s in "cdef"])
    assert len(sink.records) == 2  # one more fits in the rate window
    assert result.decisions["r:rate_limited"] == 3


async def test_crash_between_reserve_and_publish_is_recovered_once() -> None:
    calls = {"n": 0}
    sink = Sink()

    async def flaky(records: Sequence[TriggerRecord]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("broker gone")  # the crash: reserved, not published
        await sink(records)

    state = InMemoryTriggerState()
    eng = TriggerEngine(rules=rules(), state=state, publish=flaky)
    with pytest.raises(ConnectionError):
        await eng.process([score(1, 0.9)])
    result = await eng.process([score(1, 0.9)])  # the re-delivery
    assert [r.rule for r in result.recovered] == ["once"]
    await eng.process([score(2, 0.9)])  # 'cart' (persistence 2) fires now; 'once' did already
    ids = [r.trigger_id for r in sink.records]
    assert sorted(ids) == sorted({trigger_id("once", "s1", 0), trigger_id("cart", "s1", 0)})


async def test_reasons_come_from_the_explainer() -> None:
    async def explain(scores: Sequence[ScoreInput]) -> list[list[dict[str, object]]]:
        return [[{"code": "item_in_cart", "text": "x", "weight": 0.2}] for _ in scores]

    eng, sink, _ = engine(explain=explain)
    await eng.process([score(1, 0.9)])
    assert sink.records[0].reasons[0]["code"] == "item_in_cart"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30), st.integers(0, 3))
def test_never_more_than_one_fire_per_episode(ps: list[float], dup: int) -> None:
    """Any score sequence, with re-deliveries: fires == episodes opened, ids all distinct."""
    import asyncio

    eng, sink, _ = engine()
    scores = [score(i + 1, p) for i, p in enumerate(ps)]
    batches = [scores[i : i + 3] for i in range(0, len(scores), 3)]

    async def run() -> None:
        for b in batches:
            for _ in range(1 + dup % 2):
                await eng.process(b)

    asyncio.run(run())
    ids = [r.trigger_id for r in sink.records if r.rule == "cart"]
    assert len(ids) == len(set(ids))
    whys, _ = walk("cart", scores)
    assert len(ids) == whys.count("FIRE")
