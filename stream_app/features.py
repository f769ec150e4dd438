"""THE session → model encoding, shared by training and the live scorer (no train/serve skew).

A ``WindowSnapshot`` becomes two model inputs:

- ``session_text(snapshot)``: a compact text of the most recent events, **newest first**, so
  that when the tokenizer truncates at ``max_tokens`` it drops the *oldest* events. Each event
  reads ``"<type> <category words> <brand> <price bucket> <query>"``; events are joined by
  ``" | "``. Example: ``"cart electronics smartphone samsung $200-500 | view electronics ..."``.
- ``behaviour_features(snapshot)``: a float32 vector, one value per ``FEATURE_NAMES`` entry.
  Counts come from the aggregates (every event the session accepted); "last event" values
  come from the window. Only event times are used, never the wall clock, so replaying a log
  and scoring it live give identical inputs.
"""

from __future__ import annotations

import math

import numpy as np

from stream_app.events import Event
from stream_app.windows import WindowSnapshot

DEFAULT_TEXT_EVENTS = 8

# Upper bounds (exclusive) of the price buckets; coarse on purpose so the text stays short
# and the tokenizer sees a handful of recurring tokens rather than raw prices.
_PRICE_EDGES: tuple[tuple[float, str], ...] = (
    (10.0, "$0-10"),
    (50.0, "$10-50"),
    (100.0, "$50-100"),
    (200.0, "$100-200"),
    (500.0, "$200-500"),
    (1000.0, "$500-1000"),
)
_PRICE_TOP = "$1000+"

FEATURE_NAMES: tuple[str, ...] = (
    "log_n_events",
    "log_n_view",
    "log_n_cart",
    "log_n_remove_from_cart",
    "log_n_search",
    "log_n_products",
    "log_n_categories",
    "log_cart_value",
    "log_mean_price",
    "log_max_price",
    "log_last_price",
    "log_duration_s",
    "log_events_per_minute",
    "log_since_prev_event_s",
    "has_cart",
    "cart_per_view",
    "last_is_cart",
    "last_product_repeats",
    "window_price_std_log",
)


def price_bucket(price: float | None) -> str:
    """Coarse price band label ("" when the price is unknown)."""
    if price is None or not math.isfinite(price) or price < 0:
        return ""
    for upper, label in _PRICE_EDGES:
        if price < upper:
            return label
    return _PRICE_TOP


def event_text(event: Event) -> str:
    """One event as a few words: type, category words, brand, price band, query."""
    event_type = event.event_type.replace("_", " ")
    category = event.category_code.replace(".", " ").replace("_", " ")
    parts = (event_type, category, event.brand, price_bucket(event.price), event.query)
    return " ".join(part.strip() for part in parts if part and part.strip())


def session_text(snapshot: WindowSnapshot, max_events: int = DEFAULT_TEXT_EVENTS) -> str:
    """Newest-first text of the last ``max_events`` window events (see module docstring)."""
    newest = snapshot.events[-max_events:] if max_events > 0 else ()
    return " | ".join(event_text(event) for event in reversed(newest))


def _log1p(value: float) -> float:
    return math.log1p(max(value, 0.0))


def _count_features(snapshot: WindowSnapshot) -> list[float]:
    agg = snapshot.aggregates
    return [
        _log1p(agg.n_events),
        _log1p(agg.count("view")),
        _log1p(agg.count("cart")),
        _log1p(agg.count("remove_from_cart")),
        _log1p(agg.count("search")),
        _log1p(agg.n_products),
        _log1p(agg.n_categories),
        _log1p(agg.cart_value),
    ]


def _price_features(snapshot: WindowSnapshot) -> list[float]:
    agg = snapshot.aggregates
    mean_price = agg.price_sum / agg.price_count if agg.price_count else 0.0
    last_price = next((e.price for e in reversed(snapshot.events) if e.price is not None), 0.0)
    return [_log1p(mean_price), _log1p(agg.max_price), _log1p(last_price or 0.0)]


def _timing_features(snapshot: WindowSnapshot) -> list[float]:
    agg = snapshot.aggregates
    duration_s = max(agg.last_event_ms - agg.first_event_ms, 0) / 1000.0
    # +1 minute in the denominator keeps one-event sessions finite and comparable.
    per_minute = agg.n_events / (duration_s / 60.0 + 1.0)
    times = [e.event_time_ms for e in snapshot.events]
    since_prev_s = (times[-1] - times[-2]) / 1000.0 if len(times) >= 2 else 0.0
    return [_log1p(duration_s), _log1p(per_minute), _log1p(since_prev_s)]


def _intent_features(snapshot: WindowSnapshot) -> list[float]:
    agg = snapshot.aggregates
    carts = agg.count("cart")
    last = snapshot.events[-1] if snapshot.events else None
    repeats = (
        sum(1 for e in snapshot.events if last.product_id and e.product_id == last.product_id)
        if last
        else 0
    )
    prices = [e.price for e in snapshot.events if e.price is not None]
    spread = float(np.std(np.log1p(np.maximum(prices, 0.0)))) if len(prices) >= 2 else 0.0
    return [
        1.0 if carts > 0 else 0.0,
        carts / (agg.count("view") + 1.0),
        1.0 if last is not None and last.event_type == "cart" else 0.0,
        _log1p(max(repeats - 1, 0)),
        spread,
    ]


def behaviour_features(snapshot: WindowSnapshot) -> np.ndarray:
    """float32 vector aligned with ``FEATURE_NAMES`` (deterministic; event times only)."""
    values = (
        _count_features(snapshot)
        + _price_features(snapshot)
        + _timing_features(snapshot)
        + _intent_features(snapshot)
    )
    return np.asarray(values, dtype=np.float32)


def behaviour_matrix(snapshots: list[WindowSnapshot]) -> np.ndarray:
    """Stack ``behaviour_features`` for a batch: float32 [B, len(FEATURE_NAMES)]."""
    if not snapshots:
        return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32)
    return np.stack([behaviour_features(s) for s in snapshots])
