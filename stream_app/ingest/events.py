"""Events: the one validated shape of a user event, and how raw Kafka bytes become one.

CONTRACT (owned by the events work; other modules rely on exactly this):
- ``Event`` below (frozen dataclass, UTC epoch-ms times, strings for ids).
- ``parse_event(raw: bytes, *, limits: EventLimits, now_ms: int) -> Event`` raises
  ``InvalidEvent(reason)`` with a stable reason code for anything invalid.
- ``event_to_json(event) -> bytes`` / ``event_from_dict(d)``: our canonical JSON form.

Reason codes never contain input text: a ``<field>`` suffix is always one of ``FIELDS``, so
codes are safe as metrics labels. The codes are:

``too_large``, ``not_utf8``, ``not_json``, ``not_object``, ``duplicate_key``, ``too_deep``,
``nan_or_inf``, ``missing:<f>``, ``empty:<f>``, ``bad_type:<f>``, ``bad_value:<f>``,
``control_chars:<f>``, ``id_too_long:<f>``, ``text_too_long:<f>``, ``unknown_event_type``,
``bad_time``, ``time_in_future``, ``time_too_old``, ``bad_price``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson

from stream_app.core.errors import InvalidEvent

if TYPE_CHECKING:
    from stream_app.core.config import WindowSettings

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
    # Optional text a shop may send: the product's title and the session's context (what a
    # live site knows at the first hit: device class, traffic channel, country).
    product_name: str = ""
    device: str = ""
    channel: str = ""
    country: str = ""


@dataclass(frozen=True, slots=True)
class EventLimits:
    """Bounds that protect the worker from hostile or broken producers."""

    max_bytes: int = 64 * 1024
    max_future_skew_ms: int = 24 * 3600 * 1000
    max_age_ms: int = 20 * 365 * 24 * 3600 * 1000
    max_id_len: int = 256
    max_text_len: int = 1024
    max_price: float = 1e7

    @classmethod
    def from_settings(cls, window: WindowSettings, max_bytes: int) -> EventLimits:
        """Limits from the ``WINDOW_*`` time bounds and the broker's message size limit."""
        return cls(
            max_bytes=max_bytes,
            max_future_skew_ms=window.max_future_skew_s * 1000,
            max_age_ms=window.max_age_days * 24 * 3600 * 1000,
        )


DEFAULT_LIMITS = EventLimits()

ID_FIELDS: tuple[str, ...] = ("user_id", "product_id", "category_id")
TEXT_FIELDS: tuple[str, ...] = ("category_code", "brand", "query")
# Optional text fields added after the REES46 layout; appended so stored records stay decodable.
EXTRA_TEXT_FIELDS: tuple[str, ...] = ("product_name", "device", "channel", "country")
FIELDS: tuple[str, ...] = (
    "event_id",
    "event_time",
    "event_type",
    "user_session",
    *ID_FIELDS,
    *TEXT_FIELDS,
    "price",
    *EXTRA_TEXT_FIELDS,
)
_EVENT_TYPE_SET = frozenset(EVENT_TYPES)
_NEEDS_PRODUCT = frozenset(("view", "cart", "remove_from_cart", "purchase"))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_MAX_TIME_TEXT = 64
# Controls in free text: layout whitespace becomes a space, the rest (NUL, ESC, C1, bidi
# overrides that can disguise text in logs and dashboards) is dropped.
_TEXT_SPACE = re.compile("[\t\n\r\x0b\x0c\u0085\u2028\u2029]")
_TEXT_DROP = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\u202a-\u202e\u2066-\u2069]")
_NUMERIC = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class _NonFinite(ValueError):
    """Raised by the stdlib fallback parser on NaN/Infinity literals or overflowing floats."""


# ---------------------------------------------------------------------------------------------
# Decoding: bytes -> flat dict


def _reject_constant(name: str) -> Any:
    raise _NonFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NonFinite(text)
    return value


def _diagnose(raw: bytes, orjson_error: Exception) -> InvalidEvent:
    """Explain why orjson refused ``raw`` (the rare path, so it may be slow)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return InvalidEvent("not_utf8", str(exc)[:200])
    if "depth limit" in str(orjson_error):
        return InvalidEvent("too_deep", "nesting deeper than the JSON decoder allows")
    try:
        json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except _NonFinite as exc:
        return InvalidEvent("nan_or_inf", f"non-finite number {str(exc)[:40]!r}")
    except RecursionError:
        return InvalidEvent("too_deep", "nesting too deep")
    except ValueError:
        pass
    # orjson is stricter than the stdlib (e.g. lone surrogate escapes): still not our JSON.
    return InvalidEvent("not_json", str(orjson_error)[:200])


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise InvalidEvent("duplicate_key", "an object repeats a key")
    return result


def _check_shape(raw: bytes, obj: dict[str, Any]) -> None:
    """Reject repeated keys (orjson silently keeps the last one) and nested values.

    Duplicates, cheaply: without backslashes and nesting, every JSON string contributes exactly
    two quote bytes, so the quote count of ``raw`` must equal 2 x (keys + string values) of the
    decoded object. Only when that cannot be shown do we pay for a stdlib re-parse (~4x the
    cost of orjson). One pass over the values serves both checks.
    """
    n_strings = len(obj)
    nested_key: str | None = None
    for key, value in obj.items():
        cls = value.__class__
        if cls is str:
            n_strings += 1
        elif (cls is dict or cls is list) and nested_key is None:
            nested_key = key
    if nested_key is None and b"\\" not in raw and raw.count(b'"') == 2 * n_strings:
        return
    try:
        json.loads(raw.decode("utf-8"), object_pairs_hook=_pairs_without_duplicates)
    except RecursionError as exc:
        raise InvalidEvent("too_deep", "nesting too deep") from exc
    except ValueError as exc:  # e.g. an integer literal beyond the stdlib's digit limit
        raise InvalidEvent("not_json", str(exc)[:200]) from exc
    if nested_key is not None:
        # The event is flat: nesting in a known field is a type error, elsewhere too deep.
        if nested_key in FIELDS:
            raise InvalidEvent(f"bad_type:{nested_key}", "nested value")
        raise InvalidEvent("too_deep", "nested value in an unknown field")


def _decode(raw: bytes, max_bytes: int) -> dict[str, Any]:
    if len(raw) > max_bytes:
        raise InvalidEvent("too_large", f"{len(raw)} bytes > {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _diagnose(raw, exc) from None
    if obj.__class__ is not dict:
        raise InvalidEvent("not_object", f"top-level JSON {type(obj).__name__}")
    _check_shape(raw, obj)
    return obj


# ---------------------------------------------------------------------------------------------
# Times


@lru_cache(maxsize=8192)
def _text_time_ms(text: str) -> int:
    """Parse a textual time to UTC epoch ms (cached: REES46 logs repeat each second many times)."""
    if text.endswith(" UTC"):  # REES46: "2019-10-01 00:00:00 UTC"
        text = text[:-4]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidEvent("bad_time", "unrecognised time text") from exc
    if moment.tzinfo is None:  # naive ISO text is defined as UTC
        moment = moment.replace(tzinfo=UTC)
    # Aware subtraction is exact timedelta arithmetic (no float, no overflow for years 1-9999).
    return (moment - _EPOCH) // _MS


def time_to_ms(value: object) -> int:
    """Turn an ``event_time`` JSON value (ISO-8601, REES46 text, epoch ms int) into epoch ms."""
    if value.__class__ is int:
        return value
    if value.__class__ is str:
        text: str = value
        if not text:
            raise InvalidEvent("empty:event_time")
        if len(text) > _MAX_TIME_TEXT or not text.isascii():
            raise InvalidEvent("bad_time", "time text too long or not ASCII")
        return _text_time_ms(text)
    if value is None:
        raise InvalidEvent("missing:event_time")
    raise InvalidEvent("bad_type:event_time", type(value).__name__)


def _check_time_window(time_ms: int, limits: EventLimits, now_ms: int) -> None:
    if time_ms > now_ms + limits.max_future_skew_ms:
        raise InvalidEvent("time_in_future", f"{time_ms} vs now {now_ms}")
    if time_ms < now_ms - limits.max_age_ms:
        raise InvalidEvent("time_too_old", f"{time_ms} vs now {now_ms}")


# ---------------------------------------------------------------------------------------------
# Field validators


def _id(obj: dict[str, Any], field: str, limits: EventLimits) -> str:
    """An optional id: JSON string or non-negative int, printable, bounded; absent -> ""."""
    value = obj.get(field)
    if value is None:
        return ""
    if value.__class__ is int:
        if value < 0:
            raise InvalidEvent(f"bad_value:{field}", "negative id")
        value = str(value)
    elif value.__class__ is not str:
        raise InvalidEvent(f"bad_type:{field}", type(value).__name__)
    if len(value) > limits.max_id_len:
        raise InvalidEvent(f"id_too_long:{field}", f"{len(value)} > {limits.max_id_len}")
    # isprintable() is False for controls, format chars (bidi, zero-width) and line separators.
    if not value.isprintable():
        raise InvalidEvent(f"control_chars:{field}", "non-printable character in id")
    return value


def _required_id(obj: dict[str, Any], field: str, limits: EventLimits) -> str:
    value = _id(obj, field, limits)
    if not value:
        raise InvalidEvent(f"missing:{field}" if obj.get(field) is None else f"empty:{field}")
    if value.isspace():
        raise InvalidEvent(f"empty:{field}", "whitespace only")
    return value


def _text(obj: dict[str, Any], field: str, limits: EventLimits) -> str:
    """Optional free text: controls normalised (see ``_TEXT_SPACE``/``_TEXT_DROP``), bounded."""
    value = obj.get(field)
    if value is None:
        return ""
    if value.__class__ is not str:
        raise InvalidEvent(f"bad_type:{field}", type(value).__name__)
    if len(value) > limits.max_text_len:
        raise InvalidEvent(f"text_too_long:{field}", f"{len(value)} > {limits.max_text_len}")
    if not value.isprintable():
        value = _TEXT_DROP.sub("", _TEXT_SPACE.sub(" ", value))
    return value


def _price(value: object, limits: EventLimits) -> float | None:
    """Price: JSON number or numeric string, finite, 0 <= price <= max_price; null/"" -> None."""
    if value is None:
        return None
    if isinstance(value, float | int) and not isinstance(value, bool):
        price = float(value)
    elif isinstance(value, str):
        parsed = _price_text(value)
        if parsed is None:
            return None
        price = parsed
    else:
        raise InvalidEvent("bad_type:price", type(value).__name__)
    if price != price or price in (float("inf"), float("-inf")):
        raise InvalidEvent("nan_or_inf", "price is not finite")
    if price < 0 or price > limits.max_price:
        raise InvalidEvent("bad_price", f"{price} outside [0, {limits.max_price}]")
    return price + 0.0  # -0.0 -> 0.0, so equal prices serialise (and hash) identically


def _price_text(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    if len(text) > 64:
        raise InvalidEvent("bad_price", "price text too long")
    if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        raise InvalidEvent("nan_or_inf", "price is not finite")
    if not _NUMERIC.fullmatch(text):
        raise InvalidEvent("bad_price", "price text is not a number")
    return float(text)


def _event_type(obj: dict[str, Any]) -> str:
    value = obj.get("event_type")
    if value is None:
        raise InvalidEvent("missing:event_type")
    if value.__class__ is not str:
        raise InvalidEvent("bad_type:event_type", type(value).__name__)
    if value not in _EVENT_TYPE_SET:
        raise InvalidEvent("empty:event_type" if not value else "unknown_event_type")
    return value


# ---------------------------------------------------------------------------------------------
# Public API


def event_id_for(
    event_time_ms: int,
    event_type: str,
    user_session: str,
    user_id: str = "",
    product_id: str = "",
    category_id: str = "",
    category_code: str = "",
    brand: str = "",
    price: float | None = None,
    query: str = "",
    *extra_text: str,
) -> str:
    """A stable id derived from an event's content (blake2b-128 over a canonical tuple, hex).

    Used when a producer sends no ``event_id``: replaying the same recorded message yields the
    same id, so the window store deduplicates replays. ``extra_text`` (the
    ``EXTRA_TEXT_FIELDS`` values) joins the hashed tuple only when one of them is non-empty,
    so ids of events without them are the same as before they existed. Consequence (intended):
    two *exact*
    duplicate rows in a log (same time, type, session, user, product, price...) are the same
    event and count once; producers that need them counted twice must send distinct ids.
    """
    fields: list[object] = [
        event_time_ms,
        event_type,
        user_session,
        user_id,
        product_id,
        category_id,
        category_code,
        brand,
        price,
        query,
    ]
    if any(extra_text):
        fields.extend(extra_text)
    canonical = orjson.dumps(fields)
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


def parse_event(raw: bytes, *, limits: EventLimits = DEFAULT_LIMITS, now_ms: int) -> Event:
    """Validate one raw message; raise ``InvalidEvent(reason, detail)`` if it is not an event.

    ``now_ms`` (the worker's clock, injected) bounds ``event_time`` to
    ``[now - max_age_ms, now + max_future_skew_ms]``. Unknown scalar fields are ignored so
    producers can add fields; any nested value is rejected.
    """
    obj = _decode(raw, limits.max_bytes)
    event_type = _event_type(obj)
    time_ms = time_to_ms(obj.get("event_time"))
    _check_time_window(time_ms, limits, now_ms)
    session = _required_id(obj, "user_session", limits)
    if event_type in _NEEDS_PRODUCT:
        product_id = _required_id(obj, "product_id", limits)
    else:
        product_id = _id(obj, "product_id", limits)
    query = _text(obj, "query", limits)
    if event_type == "search" and not query.strip():
        raise InvalidEvent("empty:query" if "query" in obj else "missing:query")
    # Same order as Event's fields after event_id (and as event_id_for's parameters).
    parts = (
        time_ms,
        event_type,
        session,
        _id(obj, "user_id", limits),
        product_id,
        _id(obj, "category_id", limits),
        _text(obj, "category_code", limits),
        _text(obj, "brand", limits),
        _price(obj.get("price"), limits),
        query,
        _text(obj, "product_name", limits),
        _text(obj, "device", limits),
        _text(obj, "channel", limits),
        _text(obj, "country", limits),
    )
    event_id = _id(obj, "event_id", limits) or event_id_for(*parts)
    return Event(event_id, *parts)


def event_to_dict(event: Event) -> dict[str, Any]:
    """Canonical dict form: fixed key order, ``event_time`` as epoch ms, ``event_id`` included."""
    return {
        "event_id": event.event_id,
        "event_time": event.event_time_ms,
        "event_type": event.event_type,
        "user_session": event.user_session,
        "user_id": event.user_id,
        "product_id": event.product_id,
        "category_id": event.category_id,
        "category_code": event.category_code,
        "brand": event.brand,
        "price": event.price,
        "query": event.query,
        "product_name": event.product_name,
        "device": event.device,
        "channel": event.channel,
        "country": event.country,
    }


def event_to_json(event: Event) -> bytes:
    """Canonical JSON bytes; ``parse_event(event_to_json(e)) == e`` for every parsed event."""
    return orjson.dumps(event_to_dict(event))


def event_from_dict(d: dict[str, Any]) -> Event:
    """Rebuild an ``Event`` from our own canonical dict (trusted input, e.g. the store).

    Raises ``InvalidEvent("missing:<field>")`` / ``InvalidEvent("bad_type:<field>")``, so a
    corrupt stored record surfaces as a permanent error rather than a ``KeyError``.
    """
    try:
        price = d.get("price")
        event = Event(
            event_id=_exact(d["event_id"], str, "event_id"),
            event_time_ms=_exact(d["event_time"], int, "event_time"),
            event_type=_exact(d["event_type"], str, "event_type"),
            user_session=_exact(d["user_session"], str, "user_session"),
            user_id=_exact(d.get("user_id", ""), str, "user_id"),
            product_id=_exact(d.get("product_id", ""), str, "product_id"),
            category_id=_exact(d.get("category_id", ""), str, "category_id"),
            category_code=_exact(d.get("category_code", ""), str, "category_code"),
            brand=_exact(d.get("brand", ""), str, "brand"),
            price=None if price is None else float(_exact(price, (int, float), "price")),
            query=_exact(d.get("query", ""), str, "query"),
            **{f: _exact(d.get(f, ""), str, f) for f in EXTRA_TEXT_FIELDS},
        )
    except KeyError as exc:
        raise InvalidEvent(f"missing:{exc.args[0]}", "canonical event dict") from exc
    return event


def _exact(value: Any, kind: type | tuple[type, ...], field: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InvalidEvent(f"bad_type:{field}", type(value).__name__)
    return value
