"""Reason codes: why did this session score high? Occlusion through the ``Scorer`` protocol.

Model-agnostic: each candidate reason is a group of window events or a behaviour fact; the
snapshot is re-scored with that group removed (or the fact neutralised), and the reason's
weight is how much the score drops. All variants of all sessions go to the scorer in ONE
call, so the cost is one extra batch per set of firing triggers (measured: README).

Candidates (stable codes):
- ``item_in_cart``: remove the cart / remove-from-cart events
- ``high_cart_value``: the cart events keep their place but lose their prices
- ``repeat_views_same_product``: remove the repeated views (2nd and later) of each product
- ``long_dwell``: collapse the session's duration (every event at the last event's time)
- ``recent_search``: remove the search events
- ``category:<prefix>``: remove the events of one category (the two most frequent)
- ``latest_event``: remove the newest event

Removing events also takes them out of the aggregates as far as the window can account for
them (counts, cart value, prices; distinct products/categories only when the whole session is
in the window). Faithfulness is checked, not assumed: ``tests/integration/test_reasons.py``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from stream_app.ingest.events import Event
from stream_app.sessions.windows import SessionAggregates, WindowSnapshot, price_cents

TOP_K = 3
MIN_WEIGHT = 1e-4


class ScoresSnapshots(Protocol):
    """The part of ``stream_app.scoring.Scorer`` occlusion needs."""

    def score(self, snapshots: Sequence[WindowSnapshot]) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    text: str
    weight: float  # score drop when the reason is removed

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "text": self.text, "weight": round(self.weight, 4)}


@dataclass(frozen=True, slots=True)
class Candidate:
    code: str
    text: str
    variant: WindowSnapshot  # the snapshot without this reason
    removed_events: int  # events taken out (0 for a neutralised fact)
    anonymised_events: int = 0  # events kept but put on an unknown product


def without_events(snapshot: WindowSnapshot, drop: Callable[[Event], bool]) -> WindowSnapshot:
    """The snapshot with the window events ``drop`` selects removed, aggregates adjusted."""
    kept = tuple(e for e in snapshot.events if not drop(e))
    removed = [e for e in snapshot.events if drop(e)]
    if not removed:
        return snapshot
    agg = snapshot.aggregates
    counts = Counter(dict(agg.counts))
    counts.subtract(Counter(e.event_type for e in removed))
    whole = agg.n_events == len(snapshot.events)
    return dataclasses.replace(
        snapshot,
        events=kept,
        aggregates=dataclasses.replace(
            agg,
            n_events=max(agg.n_events - len(removed), 0),
            counts=tuple((t, max(n, 0)) for t, n in counts.items()),
            cart_value=max(agg.cart_value - _cart_cents(removed) / 100, 0.0),
            price_sum=max(agg.price_sum - _price_cents(removed) / 100, 0.0),
            price_count=max(agg.price_count - sum(e.price is not None for e in removed), 0),
            **(_recount(kept, agg) if whole else {}),
        ),
    )


def with_events_neutralised(
    snapshot: WindowSnapshot, select: Callable[[Event], bool], neutral: Callable[[Event], Event]
) -> WindowSnapshot:
    """The snapshot with the events ``select`` picks replaced by ``neutral(event)``: same
    types, times and prices (so the counts stand), without what made them that event."""
    if not any(select(e) for e in snapshot.events):
        return snapshot
    events = tuple(neutral(e) if select(e) else e for e in snapshot.events)
    return dataclasses.replace(snapshot, events=events)


def anonymous_item(event: Event) -> Event:
    """``event`` on an unknown product: no id, title, category or brand (a fresh id keeps
    "views of the same product" from merging the occluded events)."""
    return dataclasses.replace(event, product_id=f"occluded-{event.event_id}", product_name="",
                               category_id="", category_code="", brand="")  # fmt: skip


def without_context(event: Event) -> Event:
    return dataclasses.replace(event, device="", channel="", country="")


def _cart_cents(events: Sequence[Event]) -> int:
    sign = {"cart": 1, "remove_from_cart": -1}
    return sum(sign.get(e.event_type, 0) * (price_cents(e.price) or 0) for e in events)


def _price_cents(events: Sequence[Event]) -> int:
    return sum(price_cents(e.price) or 0 for e in events)


def _recount(kept: Sequence[Event], agg: SessionAggregates) -> dict[str, Any]:
    """Aggregates that only the whole session can give, recounted over the kept events."""
    if not kept:
        return {
            "n_products": 0,
            "n_categories": 0,
            "max_price": 0.0,
            "first_event_ms": 0,
            "last_event_ms": 0,
        }
    prices = [e.price for e in kept if e.price is not None]
    return {
        "n_products": len({e.product_id for e in kept if e.product_id}),
        "n_categories": len({e.category_id or e.category_code for e in kept} - {""}),
        "max_price": max(prices, default=0.0),
        "first_event_ms": kept[0].event_time_ms,
        "last_event_ms": kept[-1].event_time_ms,
    }


def category_prefix(code: str) -> str:
    """``Home/Apparel/Men's/...`` -> ``Apparel/Men's``; ``electronics.smartphone`` -> same."""
    sep = "/" if "/" in code else "."
    parts = [p for p in code.split(sep) if p and p.lower() != "home"]
    return sep.join(parts[:2])


def candidates(snapshot: WindowSnapshot) -> list[Candidate]:
    """Every reason that applies to ``snapshot``, with its occluded variant."""
    events = snapshot.events
    found: list[Candidate] = []

    def add(code: str, text: str, drop: Callable[[Event], bool]) -> None:
        n = sum(1 for e in events if drop(e))
        if n:
            found.append(Candidate(code, text, without_events(snapshot, drop), n))

    carts = sum(e.event_type == "cart" for e in events)
    add(
        "item_in_cart",
        f"{carts} item(s) added to the cart",
        lambda e: e.event_type in ("cart", "remove_from_cart"),
    )
    _add_cart_value(snapshot, found)
    repeats = _repeat_views(events)
    if repeats:
        product, times = max(repeats.items(), key=lambda kv: kv[1])
        label = _product_label(events, product)
        add("repeat_views_same_product", f"viewed {label} {times} times", _is_repeat_view(events))
    _add_dwell(snapshot, found)
    searches = [e.query for e in events if e.event_type == "search" and e.query]
    add(
        "recent_search",
        f"searched for {searches[-1]!r}" if searches else "searched the shop",
        lambda e: e.event_type == "search",
    )
    for prefix in _top_prefixes(events, 2):
        # What the shopper looks at, not that they look: the events stay, their product
        # becomes unknown (removing them would also remove the browsing itself).
        in_category = _in_category(prefix)
        variant = with_events_neutralised(snapshot, in_category, anonymous_item)
        n = sum(1 for e in events if in_category(e))
        found.append(Candidate(f"category:{prefix}", f"browsing {prefix}", variant, 0, n))
    _add_context(snapshot, found)
    if events:
        newest = events[-1]
        add(
            "latest_event",
            f"just did: {newest.event_type.replace('_', ' ')}",
            lambda e: e is newest,
        )
    return found


def _add_context(snapshot: WindowSnapshot, found: list[Candidate]) -> None:
    """The session's context (device, traffic channel, country), when the shop sends it."""
    newest = snapshot.events[-1] if snapshot.events else None
    if newest is None or not (newest.channel or newest.device or newest.country):
        return
    parts = [f"via {newest.channel}" if newest.channel else "",
             f"on {newest.device}" if newest.device else "",
             f"from {newest.country}" if newest.country else ""]  # fmt: skip
    code = f"context:{(newest.channel or newest.device or newest.country).lower()}"
    variant = with_events_neutralised(snapshot, lambda e: True, without_context)
    found.append(Candidate(code, "arrived " + " ".join(p for p in parts if p), variant, 0))


def _add_cart_value(snapshot: WindowSnapshot, found: list[Candidate]) -> None:
    value = snapshot.aggregates.cart_value
    if value <= 0:
        return
    stripped = tuple(
        dataclasses.replace(e, price=None) if e.event_type in ("cart", "remove_from_cart") else e
        for e in snapshot.events
    )
    agg = dataclasses.replace(snapshot.aggregates, cart_value=0.0)
    variant = dataclasses.replace(snapshot, events=stripped, aggregates=agg)
    found.append(Candidate("high_cart_value", f"cart worth {value:,.2f}", variant, 0))


def _add_dwell(snapshot: WindowSnapshot, found: list[Candidate]) -> None:
    agg = snapshot.aggregates
    duration_s = max(agg.last_event_ms - agg.first_event_ms, 0) / 1000
    if duration_s < 60 or not snapshot.events:
        return
    last = snapshot.events[-1].event_time_ms
    events = tuple(dataclasses.replace(e, event_time_ms=last) for e in snapshot.events)
    variant = dataclasses.replace(
        snapshot, events=events, aggregates=dataclasses.replace(agg, first_event_ms=last)
    )
    found.append(Candidate("long_dwell", f"in the shop for {duration_s / 60:.0f} min", variant, 0))


def _in_category(prefix: str) -> Callable[[Event], bool]:
    return lambda e: bool(e.category_code) and category_prefix(e.category_code) == prefix


def _repeat_views(events: Sequence[Event]) -> dict[str, int]:
    views = Counter(e.product_id for e in events if e.event_type == "view" and e.product_id)
    return {product: n for product, n in views.items() if n >= 2}


def _is_repeat_view(events: Sequence[Event]) -> Callable[[Event], bool]:
    repeats: set[int] = set()
    seen: set[str] = set()
    for e in events:
        if e.event_type == "view" and e.product_id:
            if e.product_id in seen:
                repeats.add(id(e))
            seen.add(e.product_id)
    return lambda e: id(e) in repeats


def _product_label(events: Sequence[Event], product: str) -> str:
    name = next((e.product_name for e in events if e.product_id == product and e.product_name), "")
    return name[:60] if name else f"product {product}"


def _top_prefixes(events: Sequence[Event], k: int) -> list[str]:
    counts = Counter(category_prefix(e.category_code) for e in events if e.category_code)
    counts.pop("", None)
    return [prefix for prefix, _ in counts.most_common(k)]


class OcclusionExplainer:
    """Top reasons per snapshot, from one batched scorer call over all occluded variants."""

    def __init__(self, scorer: ScoresSnapshots, top_k: int = TOP_K) -> None:
        self._scorer = scorer
        self._top_k = top_k

    def explain(self, snapshots: Sequence[WindowSnapshot]) -> list[list[Reason]]:
        per_session = [candidates(s) for s in snapshots]
        batch = [*snapshots, *(c.variant for cands in per_session for c in cands)]
        if not batch:
            return []
        scores = np.asarray(self._scorer.score(batch), dtype=np.float64)
        base, offset = scores[: len(snapshots)], len(snapshots)
        explained = []
        for full, cands in zip(base, per_session, strict=True):
            drops = full - scores[offset : offset + len(cands)]
            offset += len(cands)
            ranked = sorted(zip(drops, cands, strict=True), key=lambda dc: -dc[0])
            explained.append(
                [Reason(c.code, c.text, float(d)) for d, c in ranked if d > MIN_WEIGHT][
                    : self._top_k
                ]
            )
        return explained
