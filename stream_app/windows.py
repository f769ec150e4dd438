"""Session windows: pure rules, no I/O, no clocks.

CONTRACT (other modules rely on these types; the window work fills in the logic):
- ``WindowRules``: the parameters (window length, session gap).
- ``SessionAggregates``: running behaviour aggregates over *every* distinct event the
  session ever accepted (not only the newest N kept in the window).
- ``WindowSnapshot``: what the scorer sees: the newest ``max_events`` events ordered by
  ``(event_time_ms, event_id)`` plus the aggregates.
- ``apply_events(state, events, rules) -> ApplyOutcome``: ordering, dedup by ``event_id``,
  late-event policy, trimming and aggregates. The Redis store's Lua script must implement
  exactly this function (a parity test checks it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stream_app.events import EVENT_TYPES, Event


@dataclass(frozen=True, slots=True)
class WindowRules:
    max_events: int = 50
    session_gap_ms: int = 30 * 60 * 1000
    max_seen_ids: int = 5_000


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
