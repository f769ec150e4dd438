"""Events: the one validated shape of a user event, and how raw Kafka bytes become one.

CONTRACT (owned by the events work; other modules rely on exactly this):
- ``Event`` below (frozen dataclass, UTC epoch-ms times, strings for ids).
- ``parse_event(raw: bytes, *, limits: EventLimits, now_ms: int) -> Event`` raises
  ``InvalidEvent(reason)`` with a stable reason code for anything invalid.
- ``event_to_json(event) -> bytes`` / ``event_from_dict(d)``: our canonical JSON form.
"""

from __future__ import annotations

from dataclasses import dataclass

EVENT_TYPES: tuple[str, ...] = ("view", "cart", "remove_from_cart", "purchase", "search")


@dataclass(frozen=True, slots=True)
class Event:
    """One valid user event. Times are UTC epoch milliseconds; ids are strings."""

    event_id: str
    event_time_ms: int
    event_type: str
    user_session: str
    user_id: str = ""
    product_id: str = ""
    category_id: str = ""
    category_code: str = ""
    brand: str = ""
    price: float | None = None
    query: str = ""
