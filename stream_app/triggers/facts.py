"""Window facts: the few behaviour facts a trigger rule may test, computed from a snapshot.

They travel in every score record (``facts``), so the triggers worker needs neither Redis
windows nor the model to evaluate a rule's conditions. Pure and deterministic (event times
only). ``top_category`` is the most frequent non-empty ``category_code`` in the window (ties:
the most recent).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from stream_app.sessions.windows import WindowSnapshot


@dataclass(frozen=True, slots=True)
class WindowFacts:
    n_events: int = 0  # distinct events the session accepted
    n_views: int = 0
    n_cart: int = 0
    has_purchase: bool = False
    cart_value: float = 0.0  # cart - removed, in the log's currency
    top_category: str = ""
    max_product_views: int = 0  # views of the most viewed product in the window
    duration_s: float = 0.0  # first to last event of the session

    @property
    def has_cart(self) -> bool:
        return self.n_cart > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> WindowFacts:
        """Facts from a score record's ``facts``; missing or malformed fields fall back."""
        if not isinstance(data, dict):
            return cls()
        defaults = cls()
        values: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            default = getattr(defaults, name)
            value = data.get(name, default)
            if isinstance(default, float) and type(value) in (int, float):
                value = float(value)
            values[name] = value if type(value) is type(default) else default
        return cls(**values)


def window_facts(snapshot: WindowSnapshot) -> WindowFacts:
    agg = snapshot.aggregates
    views = Counter(
        e.product_id for e in snapshot.events if e.event_type == "view" and e.product_id
    )
    return WindowFacts(
        n_events=agg.n_events,
        n_views=agg.count("view"),
        n_cart=agg.count("cart"),
        has_purchase=agg.count("purchase") > 0,
        cart_value=round(agg.cart_value, 2),
        top_category=_top_category(snapshot),
        max_product_views=max(views.values(), default=0),
        duration_s=max(agg.last_event_ms - agg.first_event_ms, 0) / 1000,
    )


def _top_category(snapshot: WindowSnapshot) -> str:
    counts: Counter[str] = Counter()
    latest: dict[str, int] = {}
    for position, event in enumerate(snapshot.events):
        if event.category_code:
            counts[event.category_code] += 1
            latest[event.category_code] = position
    if not counts:
        return ""
    return max(counts, key=lambda code: (counts[code], latest[code]))
