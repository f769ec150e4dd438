"""The pure session-window rules: ordering, dedup, late events, trimming, aggregates."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.ingest.events import Event
from stream_app.sessions.windows import (
    LATE_REASON,
    OVERFLOW_REASON,
    ApplyOutcome,
    WindowRules,
    WindowState,
    apply_events,
    expected_window,
    order_key,
    price_cents,
)

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
SID = "session-1"
RULES = WindowRules(max_events=4, session_gap_ms=30 * 60 * 1000, max_seen_ids=100)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def at(seconds: float) -> int:
    """Epoch ms of ``T0 + seconds``."""
    return ms(T0 + timedelta(seconds=seconds))


def ev(event_id: str, seconds: float, event_type: str = "view", **fields: object) -> Event:
    return Event(event_id, at(seconds), event_type, SID, **fields)  # type: ignore[arg-type]


def run(events: Sequence[Event], rules: WindowRules = RULES) -> ApplyOutcome:
    return apply_events(WindowState.empty(SID), events, rules)


def ids(events: Sequence[Event]) -> list[str]:
    return [e.event_id for e in events]


# ---------------------------------------------------------------------------------------------
# Ordering and trimming


def test_window_is_ordered_by_time_then_id() -> None:
    out = run([ev("b", 5), ev("c", 1), ev("a", 5), ev("d", 3)])
    assert ids(out.snapshot.events) == ["c", "d", "a", "b"]


def test_out_of_order_event_lands_in_place_across_calls() -> None:
    first = run([ev("a", 0), ev("c", 20)])
    second = apply_events(first.state or WindowState.empty(SID), [ev("b", 10)], RULES)
    assert ids(second.snapshot.events) == ["a", "b", "c"]
    assert second.accepted == (ev("b", 10),)


def test_window_keeps_the_newest_max_events() -> None:
    out = run([ev(f"e{i}", i) for i in range(7)])
    assert ids(out.snapshot.events) == ["e3", "e4", "e5", "e6"]
    assert out.snapshot.aggregates.n_events == 7


def test_event_older_than_the_window_still_counts_in_aggregates() -> None:
    full = run([ev(f"e{i}", 100 + i, "cart", price=1.0, product_id=f"p{i}") for i in range(4)])
    assert full.state is not None
    out = apply_events(full.state, [ev("old", 1, "cart", price=2.5, product_id="px")], RULES)
    assert out.accepted == (ev("old", 1, "cart", price=2.5, product_id="px"),)
    assert "old" not in ids(out.snapshot.events)
    agg = out.snapshot.aggregates
    assert (agg.n_events, agg.first_event_ms, agg.n_products) == (5, at(1), 5)
    assert agg.cart_value == 6.5


# ---------------------------------------------------------------------------------------------
# Dedup


def test_redelivered_event_changes_nothing() -> None:
    first = run([ev("a", 0, "cart", price=3.0), ev("b", 1)])
    assert first.state is not None
    again = apply_events(first.state, [ev("a", 0, "cart", price=3.0)], RULES)
    assert again.duplicates == (ev("a", 0, "cart", price=3.0),)
    assert again.accepted == ()
    assert again.state == first.state


def test_duplicate_inside_one_call_counts_once() -> None:
    out = run([ev("a", 0, "cart", price=3.0), ev("a", 0, "cart", price=3.0)])
    assert len(out.accepted) == 1
    assert len(out.duplicates) == 1
    assert out.snapshot.aggregates.count("cart") == 1
    assert out.snapshot.aggregates.cart_value == 3.0


# ---------------------------------------------------------------------------------------------
# Late events


def test_event_before_last_minus_gap_is_late_and_not_applied() -> None:
    gap_s = RULES.session_gap_ms / 1000
    out = run([ev("new", 10_000), ev("late", 10_000 - gap_s - 0.001), ev("edge", 10_000 - gap_s)])
    assert ids(out.late) == ["late"]
    assert ids(out.accepted) == ["new", "edge"]  # exactly one gap back is still in session
    assert out.snapshot.aggregates.n_events == 2
    assert out.rejected == ((ev("late", 10_000 - gap_s - 0.001), LATE_REASON),)


def test_late_event_is_not_remembered_and_stays_late() -> None:
    first = run([ev("new", 10_000), ev("late", 0)])
    assert first.state is not None
    again = apply_events(first.state, [ev("late", 0)], RULES)
    assert ids(again.late) == ["late"]
    assert again.state == first.state


def test_nothing_is_late_in_an_empty_session() -> None:
    out = run([ev("old", 0), ev("new", 10_000)])
    assert ids(out.accepted) == ["old", "new"]


def test_late_is_judged_against_events_earlier_in_the_same_call() -> None:
    out = run([ev("old", 0), ev("new", 10_000), ev("old2", 1)])
    assert ids(out.accepted) == ["old", "new"]
    assert ids(out.late) == ["old2"]


# ---------------------------------------------------------------------------------------------
# Seen-id bound


def test_past_max_seen_ids_new_events_overflow_but_duplicates_stay_duplicates() -> None:
    rules = WindowRules(max_events=4, session_gap_ms=RULES.session_gap_ms, max_seen_ids=3)
    out = run([ev("a", 0), ev("b", 1), ev("c", 2), ev("d", 3), ev("a", 0)], rules)
    assert ids(out.accepted) == ["a", "b", "c"]
    assert ids(out.overflow) == ["d"]
    assert ids(out.duplicates) == ["a"]
    assert out.rejected == ((ev("d", 3), OVERFLOW_REASON),)
    assert out.snapshot.aggregates.n_events == 3


# ---------------------------------------------------------------------------------------------
# Aggregates


def test_counts_times_and_distinct_products_and_categories() -> None:
    out = run(
        [
            ev("1", 30, "view", product_id="p1", category_id="c1"),
            ev("2", 10, "view", product_id="p1", category_code="shoes"),
            ev("3", 20, "search", query="red shoes"),
            ev("4", 40, "purchase", product_id="p2", category_id="c1"),
        ]
    )
    agg = out.snapshot.aggregates
    assert agg.n_events == 4
    assert (agg.count("view"), agg.count("search"), agg.count("purchase")) == (2, 1, 1)
    assert agg.count("cart") == 0
    assert (agg.first_event_ms, agg.last_event_ms) == (at(10), at(40))
    assert (agg.n_products, agg.n_categories) == (2, 2)


def test_prices_and_cart_value_floored_at_zero() -> None:
    out = run(
        [
            ev("1", 1, "view", price=10.0),
            ev("2", 2, "cart", price=19.99),
            ev("3", 3, "remove_from_cart", price=25.0),
            ev("4", 4, "search"),
        ]
    )
    agg = out.snapshot.aggregates
    assert agg.cart_value == 0.0  # 19.99 - 25.00 < 0
    assert agg.price_sum == 54.99
    assert agg.price_count == 3
    assert agg.max_price == 25.0
    more = apply_events(out.state or WindowState.empty(SID), [ev("5", 5, "cart", price=10)], RULES)
    assert more.snapshot.aggregates.cart_value == 4.99  # the floor is on the total, not a step


def test_price_cents_rounds_and_clamps() -> None:
    assert price_cents(None) is None
    assert price_cents(0.1 + 0.2) == 30
    assert price_cents(-5.0) == 0
    assert price_cents(1e30) == 10**11
    assert price_cents(float("nan")) is None


def test_user_id_is_the_newest_non_empty_by_event_time() -> None:
    out = run([ev("b", 20, user_id="u-late"), ev("c", 30), ev("a", 10, user_id="u-early")])
    assert out.snapshot.user_id == "u-late"
    assert run([ev("a", 1)]).snapshot.user_id == ""


def test_expected_window_matches_incremental_application() -> None:
    events = [ev(f"e{i}", (i * 7) % 11, "cart", price=i / 3) for i in range(9)]
    state = WindowState.empty(SID)
    for start in range(0, 9, 2):
        state = apply_events(state, events[start : start + 2], RULES).state or state
    assert expected_window(SID, events, RULES) == state.snapshot


# ---------------------------------------------------------------------------------------------
# Properties

EVENT_TYPES = ("view", "cart", "remove_from_cart", "purchase", "search")
SMALL_RULES = WindowRules(max_events=5, session_gap_ms=60_000, max_seen_ids=1_000)
_text = st.text(st.characters(codec="utf-8"), max_size=4)


@st.composite
def event_sets(
    draw: st.DrawFn, max_span_ms: int = 60_000, max_size: int = 20, min_size: int = 0
) -> list[Event]:
    """Distinct events of one session (content is a function of the id, as on redelivery)."""
    event_ids = draw(
        st.lists(_text.filter(bool), unique=True, min_size=min_size, max_size=max_size)
    )
    base = at(0)
    return [
        Event(
            event_id=eid,
            event_time_ms=base + draw(st.integers(0, max_span_ms)),
            event_type=draw(st.sampled_from(EVENT_TYPES)),
            user_session=SID,
            user_id=draw(st.sampled_from(["", "u1", "u2"]) | _text),
            product_id=draw(st.sampled_from(["", "p1", "p2", "p3"]) | _text),
            category_id=draw(st.sampled_from(["", "c1", "c2"])),
            category_code=draw(st.sampled_from(["", "shoes"]) | _text),
            price=draw(st.none() | st.floats(0, 1e7, allow_nan=False)),
        )
        for eid in event_ids
    ]


@given(event_sets(), st.randoms(use_true_random=False))
def test_any_arrival_order_gives_the_same_window(events: list[Event], rnd: random.Random) -> None:
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert expected_window(SID, shuffled, SMALL_RULES) == expected_window(SID, events, SMALL_RULES)


@given(event_sets(max_span_ms=300_000))
def test_applying_twice_equals_applying_once(events: list[Event]) -> None:
    once = run(events, SMALL_RULES)
    assert once.state is not None
    twice = apply_events(once.state, events, SMALL_RULES)
    assert twice.state == once.state
    assert twice.accepted == ()
    assert set(ids(twice.duplicates)) | set(ids(twice.late)) == set(ids(events))


@given(event_sets(max_span_ms=300_000, max_size=30))
def test_window_is_bounded_sorted_and_holds_the_newest(events: list[Event]) -> None:
    out = run(events, SMALL_RULES)
    window = list(out.snapshot.events)
    assert len(window) <= SMALL_RULES.max_events
    assert window == sorted(window, key=order_key)
    newest = sorted(out.accepted, key=order_key)[-SMALL_RULES.max_events :]
    assert window == newest
    assert out.snapshot.aggregates.n_events == len(out.accepted)


@given(event_sets(), st.lists(st.integers(1, 5), min_size=1, max_size=20))
def test_splitting_into_calls_does_not_change_the_result(
    events: list[Event], cuts: list[int]
) -> None:
    state = WindowState.empty(SID)
    rest = list(events)
    for size in [*cuts, len(rest)]:
        state = apply_events(state, rest[:size], SMALL_RULES).state or state
        rest = rest[size:]
    assert state.snapshot == expected_window(SID, events, SMALL_RULES)


@settings(max_examples=50)
@given(event_sets(max_span_ms=300_000), st.randoms(use_true_random=False))
def test_late_events_are_never_applied(events: list[Event], rnd: random.Random) -> None:
    rnd.shuffle(events)
    out = run(events, SMALL_RULES)
    accepted_times = [e.event_time_ms for e in out.accepted]
    for late in out.late:
        assert late.event_time_ms < max(accepted_times) - SMALL_RULES.session_gap_ms
    assert len(out.accepted) + len(out.late) == len(events)
