"""Session windows: pure rules, no I/O, no clocks.

CONTRACT (other modules rely on these types):
- ``WindowRules``: the parameters (window length, session gap, seen-id bound).
- ``SessionAggregates``: running behaviour aggregates over *every* distinct event the
  session ever accepted (not only the newest N kept in the window).
- ``WindowSnapshot``: what the scorer sees: the newest ``max_events`` events ordered by
  ``(event_time_ms, event_id)`` plus the aggregates.
- ``apply_events(state, events, rules) -> ApplyOutcome``: ordering, dedup by ``event_id``,
  late-event policy, trimming and aggregates. The Redis store's Lua script (``window.lua``)
  implements exactly this function; an integration test checks parity.

Rules, applied to the events of one call in the order given, each against the state left by
the previous one:

1. ``event_id`` already seen in the session -> *duplicate*: nothing changes.
2. ``event_time_ms < last_event_ms - session_gap_ms`` -> *late*: nothing changes (the
   session had already ended when the event happened; the worker dead-letters it as
   ``late_event``).
3. The session already remembers ``max_seen_ids`` ids -> *overflow*: nothing changes. Past
   the bound we can no longer tell a new event from a redelivered one, so rather than risk
   double counting, the session stops growing (the worker dead-letters these as
   ``session_overflow``). With the default bound (5000) only bots get there.
4. Otherwise *accepted*: the id is remembered, the event is inserted in place and the
   window trimmed to the newest ``max_events``; the aggregates count it even when it is
   older than every kept event.

Money is kept in integer cents (``price_cents``) so that Python and Lua agree exactly;
``SessionAggregates`` shows it as floats derived from those integers. Every aggregate
depends only on the *set* of accepted events, so with no late or overflowing event the
final snapshot is the same for any arrival order.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stream_app.ingest.events import EVENT_TYPES, Event

if TYPE_CHECKING:
    from stream_app.core.config import WindowSettings

# Prices are clamped to [0, MAX_PRICE_CENTS] before they enter any sum: a bound on what a
# hostile producer can do to the sums (Redis HINCRBY is int64), far above any real price.
MAX_PRICE_CENTS = 10**11

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
LATE = "late"
OVERFLOW = "overflow"

# Dead-letter reasons for events that were not applied (see ``ApplyOutcome.rejected``).
LATE_REASON = "late_event"
OVERFLOW_REASON = "session_overflow"


@dataclass(frozen=True, slots=True)
class WindowRules:
    max_events: int = 50
    session_gap_ms: int = 30 * 60 * 1000
    max_seen_ids: int = 5_000

    @classmethod
    def from_settings(cls, window: WindowSettings) -> WindowRules:
        """The rules the ``WINDOW_*`` settings describe."""
        return cls(window.max_events, window.session_gap_s * 1000, window.max_seen_ids)


@dataclass(frozen=True, slots=True)
class SessionAggregates:
    n_events: int = 0
    counts: tuple[tuple[str, int], ...] = tuple((t, 0) for t in EVENT_TYPES)
    first_event_ms: int = 0
    last_event_ms: int = 0
    n_products: int = 0
    n_categories: int = 0
    cart_value: float = 0.0  # sum(cart prices) - sum(remove_from_cart prices), floored at 0
    price_sum: float = 0.0
    price_count: int = 0
    max_price: float = 0.0

    def count(self, event_type: str) -> int:
        return dict(self.counts).get(event_type, 0)


@dataclass(frozen=True, slots=True)
class WindowSnapshot:
    session_id: str
    user_id: str
    events: tuple[Event, ...] = ()
    aggregates: SessionAggregates = field(default_factory=SessionAggregates)


# ---------------------------------------------------------------------------------------------
# Per-event derived values, shared with the Redis store so both sides feed the same numbers.


def price_cents(price: float | None) -> int | None:
    """The price in integer cents, clamped to ``[0, MAX_PRICE_CENTS]``; None stays None.

    Non-finite prices (which the parser already rejects) count as no price rather than raise.
    """
    if price is None or not math.isfinite(price):
        return None
    return min(max(round(price * 100), 0), MAX_PRICE_CENTS)


def category_of(event: Event) -> str:
    """What counts as the event's category: its id, else its code ("" = none)."""
    return event.category_id or event.category_code


def order_key(event: Event) -> tuple[int, str]:
    """Window order. Python compares code points; Redis compares UTF-8 bytes: same order."""
    return (event.event_time_ms, event.event_id)


# ---------------------------------------------------------------------------------------------
# Running tallies: the exact (integer) form of the aggregates.


@dataclass(frozen=True, slots=True)
class Tallies:
    """Integer running totals; ``to_aggregates`` derives the public floats from them."""

    n_events: int = 0
    counts: Mapping[str, int] = field(default_factory=dict)
    first_event_ms: int = 0
    last_event_ms: int = 0
    cart_cents: int = 0  # signed; floored at 0 only when shown, so order does not matter
    price_cents_sum: int = 0
    price_count: int = 0
    max_price_cents: int = 0

    def to_aggregates(self, n_products: int, n_categories: int) -> SessionAggregates:
        known = tuple((t, self.counts.get(t, 0)) for t in EVENT_TYPES)
        extra = tuple(sorted((t, n) for t, n in self.counts.items() if t not in EVENT_TYPES))
        return SessionAggregates(
            n_events=self.n_events,
            counts=known + extra,
            first_event_ms=self.first_event_ms,
            last_event_ms=self.last_event_ms,
            n_products=n_products,
            n_categories=n_categories,
            cart_value=max(self.cart_cents, 0) / 100,
            price_sum=self.price_cents_sum / 100,
            price_count=self.price_count,
            max_price=self.max_price_cents / 100,
        )


@dataclass(frozen=True, slots=True)
class WindowState:
    """Everything the rules need about one session: the snapshot plus what it hides."""

    snapshot: WindowSnapshot
    seen_ids: frozenset[str] = frozenset()
    tallies: Tallies = field(default_factory=Tallies)
    products: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    # (event_time_ms, event_id) of the newest event that carried a user id.
    user_key: tuple[int, str] | None = None

    @classmethod
    def empty(cls, session_id: str) -> WindowState:
        return cls(snapshot=WindowSnapshot(session_id=session_id, user_id=""))

    @property
    def is_empty(self) -> bool:
        return self.tallies.n_events == 0


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    """What one apply did: the new snapshot and how each input event was classified.

    ``state`` is the full new state when the rules ran in this process (``apply_events``,
    the in-memory store); it is None when the state lives elsewhere (Redis).
    """

    snapshot: WindowSnapshot
    accepted: tuple[Event, ...] = ()
    duplicates: tuple[Event, ...] = ()
    late: tuple[Event, ...] = ()
    overflow: tuple[Event, ...] = ()
    state: WindowState | None = None

    @property
    def rejected(self) -> tuple[tuple[Event, str], ...]:
        """Events that were not applied and must go to the DLQ, with their reason code."""
        return tuple((e, LATE_REASON) for e in self.late) + tuple(
            (e, OVERFLOW_REASON) for e in self.overflow
        )


# ---------------------------------------------------------------------------------------------
# The rules.


def classify(
    event: Event, seen: AbstractSet[str], n_events: int, last_event_ms: int, rules: WindowRules
) -> str:
    """Which rule applies to ``event`` given the session so far (see the module docstring)."""
    if event.event_id in seen:
        return DUPLICATE
    if n_events and event.event_time_ms < last_event_ms - rules.session_gap_ms:
        return LATE
    if len(seen) >= rules.max_seen_ids:
        return OVERFLOW
    return ACCEPTED


class _Builder:
    """Mutable working copy of a ``WindowState`` for one ``apply_events`` call."""

    def __init__(self, state: WindowState) -> None:
        tallies = state.tallies
        self.session_id = state.snapshot.session_id
        self.user_id = state.snapshot.user_id
        self.user_key = state.user_key
        self.window = list(state.snapshot.events)
        self.seen = set(state.seen_ids)
        self.products = set(state.products)
        self.categories = set(state.categories)
        self.counts = dict(tallies.counts)
        self.n_events = tallies.n_events
        self.first_ms = tallies.first_event_ms
        self.last_ms = tallies.last_event_ms
        self.cart = tallies.cart_cents
        self.price_sum = tallies.price_cents_sum
        self.price_count = tallies.price_count
        self.max_price = tallies.max_price_cents

    def add(self, event: Event, max_events: int) -> None:
        self.seen.add(event.event_id)
        bisect.insort(self.window, event, key=order_key)
        del self.window[: max(len(self.window) - max_events, 0)]
        self._count(event)
        self._price(event)
        if event.product_id:
            self.products.add(event.product_id)
        if category := category_of(event):
            self.categories.add(category)
        if event.user_id and (self.user_key is None or order_key(event) > self.user_key):
            self.user_key = order_key(event)
            self.user_id = event.user_id

    def _count(self, event: Event) -> None:
        t = event.event_time_ms
        self.first_ms = t if self.n_events == 0 else min(self.first_ms, t)
        self.last_ms = t if self.n_events == 0 else max(self.last_ms, t)
        self.n_events += 1
        self.counts[event.event_type] = self.counts.get(event.event_type, 0) + 1

    def _price(self, event: Event) -> None:
        cents = price_cents(event.price)
        if cents is None:
            return
        self.price_sum += cents
        self.price_count += 1
        self.max_price = max(self.max_price, cents)
        if event.event_type == "cart":
            self.cart += cents
        elif event.event_type == "remove_from_cart":
            self.cart -= cents

    def build(self) -> WindowState:
        tallies = Tallies(
            self.n_events,
            self.counts,
            self.first_ms,
            self.last_ms,
            self.cart,
            self.price_sum,
            self.price_count,
            self.max_price,
        )
        aggregates = tallies.to_aggregates(len(self.products), len(self.categories))
        snapshot = WindowSnapshot(self.session_id, self.user_id, tuple(self.window), aggregates)
        return WindowState(
            snapshot,
            frozenset(self.seen),
            tallies,
            frozenset(self.products),
            frozenset(self.categories),
            self.user_key,
        )


def apply_events(state: WindowState, events: Iterable[Event], rules: WindowRules) -> ApplyOutcome:
    """Apply ``events`` (in the order given) to ``state``; see the module docstring."""
    work = _Builder(state)
    verdicts: dict[str, list[Event]] = {ACCEPTED: [], DUPLICATE: [], LATE: [], OVERFLOW: []}
    for event in events:
        verdict = classify(event, work.seen, work.n_events, work.last_ms, rules)
        verdicts[verdict].append(event)
        if verdict == ACCEPTED:
            work.add(event, rules.max_events)
    new_state = work.build()
    return ApplyOutcome(
        snapshot=new_state.snapshot,
        accepted=tuple(verdicts[ACCEPTED]),
        duplicates=tuple(verdicts[DUPLICATE]),
        late=tuple(verdicts[LATE]),
        overflow=tuple(verdicts[OVERFLOW]),
        state=new_state,
    )


def expected_window(session_id: str, events: Iterable[Event], rules: WindowRules) -> WindowSnapshot:
    """The snapshot a session should have after all its events, applied in the order given.

    With no late events (all within one session gap of each other) the order does not matter.
    """
    return apply_events(WindowState.empty(session_id), events, rules).snapshot
