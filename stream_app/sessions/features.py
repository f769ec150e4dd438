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

The item-sequence model (``stream_app/scoring/inputs.py``) reads, per window event,
``item_text(event)`` (what the item encoder embeds), ``EVENT_TYPE_IDS`` and
``event_numerics``, and per window ``last_product_features`` and ``context_values`` on top of
``behaviour_features``.
"""

from __future__ import annotations

import math

import numpy as np

from stream_app.ingest.events import Event
from stream_app.sessions.windows import WindowSnapshot

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


# ---------------------------------------------------------------------------- item sequence

# 0 is padding; ids are part of the trained model (never renumber, only append).
EVENT_TYPE_IDS: dict[str, int] = {
    "view": 1, "cart": 2, "remove_from_cart": 3, "purchase": 4, "search": 5,
}  # fmt: skip
N_EVENT_TYPES = 6
EVENT_NUMERIC_NAMES: tuple[str, ...] = (
    "log_since_prev_s",
    "log_price_vs_median",
    "log_product_repeat",
    "log_position_from_end",
)
LAST_PRODUCT_FEATURE_NAMES: tuple[str, ...] = (
    "last_product_log_views",
    "last_product_carted",
    "last_product_removed",
    "last_product_log_dwell_s",
    "last_product_price_vs_median",
    "last_product_is_new",
    "last_is_remove",
    "last_is_search",
    "log_window_carted_products",
    "hour_sin",
    "hour_cos",
)
CONTEXT_FIELDS: tuple[str, ...] = ("device", "channel", "country")


def item_text(event: Event) -> str:
    """What the item encoder reads for one event (the same function in training and serving).

    The product's title when the shop sends one, else its category words and brand; for a
    search, the query. Lower-cased and whitespace-normalised so trivial variants share one
    cache entry and one embedding.
    """
    if event.event_type == "search" and event.query.strip():
        text = event.query
    elif event.product_name.strip():
        text = event.product_name
    else:
        category = event.category_code.replace(".", " ").replace("/", " ")
        text = f"{category.replace('_', ' ').replace('-', ' ')} {event.brand}"
    return " ".join(text.lower().split())


def _median_price(events: tuple[Event, ...]) -> float:
    prices = [e.price for e in events if e.price is not None and e.price > 0]
    return float(np.median(prices)) if prices else 0.0


def _price_vs(price: float | None, median: float) -> float:
    if price is None or price <= 0 or median <= 0:
        return 0.0
    return math.log(price / median)


def event_numerics(events: tuple[Event, ...]) -> np.ndarray:
    """float32 [len(events), len(EVENT_NUMERIC_NAMES)] for the given window events."""
    median = _median_price(events)
    seen: dict[str, int] = {}
    rows = []
    for index, event in enumerate(events):
        gap_s = (event.event_time_ms - events[index - 1].event_time_ms) / 1000 if index else 0.0
        repeat = seen.get(event.product_id, 0) if event.product_id else 0
        if event.product_id:
            seen[event.product_id] = repeat + 1
        rows.append(
            (
                _log1p(gap_s),
                _price_vs(event.price, median),
                _log1p(repeat),
                _log1p(len(events) - 1 - index),
            )
        )
    return np.asarray(rows, dtype=np.float32).reshape(len(events), len(EVENT_NUMERIC_NAMES))


def last_product_event(events: tuple[Event, ...]) -> Event | None:
    return next((e for e in reversed(events) if e.product_id), None)


def _last_product_values(events: tuple[Event, ...]) -> list[float]:
    last = last_product_event(events)
    if last is None:
        return [0.0] * 6
    same = [e for e in events if e.product_id == last.product_id]
    views = sum(1 for e in same if e.event_type == "view")
    dwell_s = (events[-1].event_time_ms - same[0].event_time_ms) / 1000
    return [
        _log1p(views),
        1.0 if any(e.event_type == "cart" for e in same) else 0.0,
        1.0 if any(e.event_type == "remove_from_cart" for e in same) else 0.0,
        _log1p(dwell_s),
        _price_vs(last.price, _median_price(events)),
        1.0 if len(same) == 1 else 0.0,
    ]


def last_product_features(snapshot: WindowSnapshot) -> np.ndarray:
    """float32 vector aligned with ``LAST_PRODUCT_FEATURE_NAMES`` (window events only)."""
    events = snapshot.events
    last = events[-1] if events else None
    carted = {e.product_id for e in events if e.event_type == "cart" and e.product_id}
    hour = (last.event_time_ms % 86_400_000) / 3_600_000 if last else 0.0
    values = [
        *_last_product_values(events),
        1.0 if last is not None and last.event_type == "remove_from_cart" else 0.0,
        1.0 if last is not None and last.event_type == "search" else 0.0,
        _log1p(len(carted)),
        math.sin(2 * math.pi * hour / 24),
        math.cos(2 * math.pi * hour / 24),
    ]
    return np.asarray(values, dtype=np.float32)


def context_values(snapshot: WindowSnapshot) -> tuple[str, ...]:
    """(device, channel, country) of the session: the newest non-empty value of each."""
    return tuple(
        next((getattr(e, name).strip().lower() for e in reversed(snapshot.events)
              if getattr(e, name).strip()), "")
        for name in CONTEXT_FIELDS
    )  # fmt: skip
