"""parse_event / event_to_json / event_id_for: the event schema and its properties."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_app.core.errors import InvalidEvent
from stream_app.ingest.events import (
    EVENT_TYPES,
    EXTRA_TEXT_FIELDS,
    FIELDS,
    Event,
    EventLimits,
    event_from_dict,
    event_id_for,
    event_to_json,
    parse_event,
    time_to_ms,
)

NOW_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z
LIMITS = EventLimits()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The CI box is shared: generation speed and per-example timing are not what we test here.
SLOW_OK = [HealthCheck.too_slow]
ROW: dict[str, Any] = {
    "event_time": "2019-10-01 00:00:01 UTC",
    "event_type": "view",
    "product_id": 17200506,
    "category_id": 2053013559792632471,
    "category_code": "furniture.living_room.sofa",
    "brand": "",
    "price": "543.10",
    "user_id": 519107250,
    "user_session": "566511c2-e2e3-422b-b695-cf8e6e792ca8",
}


def parse(obj: dict[str, Any] | bytes, limits: EventLimits = LIMITS) -> Event:
    raw = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return parse_event(raw, limits=limits, now_ms=NOW_MS)


def reason(obj: dict[str, Any] | bytes, limits: EventLimits = LIMITS) -> str:
    with pytest.raises(InvalidEvent) as caught:
        parse(obj, limits)
    return caught.value.reason


# --- the happy path -------------------------------------------------------------------------


def test_rees46_row_becomes_an_event_with_string_ids() -> None:
    event = parse(ROW)
    assert event.event_time_ms == 1_569_888_001_000
    assert event.event_type == "view"
    assert (event.product_id, event.user_id) == ("17200506", "519107250")
    assert event.category_id == "2053013559792632471"  # 19 digits, exact (never via float)
    assert event.category_code == "furniture.living_room.sofa"
    assert event.brand == ""
    assert event.price == 543.10
    assert event.query == ""
    assert len(event.event_id) == 32


def test_ids_as_ints_or_strings_are_the_same_event() -> None:
    as_text = {k: str(v) for k, v in ROW.items()}
    assert parse(as_text) == parse(ROW)


def test_optional_fields_may_be_absent_or_null() -> None:
    minimal = {k: ROW[k] for k in ("event_time", "event_type", "product_id", "user_session")}
    nulls = {**minimal, "user_id": None, "brand": None, "price": None, "category_id": None}
    event = parse(minimal)
    assert parse(nulls) == event
    assert (event.user_id, event.brand, event.category_id, event.price) == ("", "", "", None)


@pytest.mark.parametrize(("price", "expected"), [(0, 0.0), (12, 12.0), ("7.5", 7.5), ("", None)])
def test_price_forms(price: object, expected: float | None) -> None:
    event = parse({**ROW, "price": price})
    assert event.price == expected
    assert event.price is None or type(event.price) is float


def test_search_needs_no_product_but_a_query() -> None:
    event = parse({"event_time": 1_569_888_000_000, "event_type": "search",
                   "user_session": "s1", "query": "red shoes"})  # fmt: skip
    assert (event.event_type, event.query, event.product_id) == ("search", "red shoes", "")


def test_every_event_type_parses() -> None:
    for event_type in EVENT_TYPES:
        assert parse({**ROW, "event_type": event_type, "query": "q"}).event_type == event_type


def test_unknown_scalar_fields_are_ignored() -> None:
    assert parse({**ROW, "client": "ios", "v": 3, "flag": True}) == parse(ROW)


def test_control_characters_in_text_are_normalised_not_fatal() -> None:
    event = parse({**ROW, "brand": "a\tb\x1b[31m\u202ec", "category_code": "x\r\ny"})
    assert event.brand == "a b[31mc"
    assert event.category_code == "x  y"


def test_escaped_quotes_without_duplicates_are_fine() -> None:
    event = parse({**ROW, "brand": 'say "hi" \\ ok'})
    assert event.brand == 'say "hi" \\ ok'


def test_duplicate_keys_with_identical_values_still_rejected() -> None:
    raw = orjson.dumps(ROW)[:-1] + b',"brand":""}'
    assert reason(raw) == "duplicate_key"


# --- time -----------------------------------------------------------------------------------

SAME_INSTANT = [
    "2019-10-01 00:00:00 UTC",
    "2019-10-01T00:00:00Z",
    "2019-10-01T00:00:00+00:00",
    "2019-10-01T02:00:00+02:00",
    "2019-09-30T19:00:00-05:00",
    "2019-10-01T00:00:00",  # naive ISO is UTC by definition
    "2019-10-01 00:00:00",
    "2019-10-01T00:00:00.000Z",
    "2019-10-01T00:00:00.000999Z",  # sub-millisecond part is floored
    1_569_888_000_000,
]


@pytest.mark.parametrize("value", SAME_INSTANT)
def test_time_formats_agree(value: object) -> None:
    assert time_to_ms(value) == 1_569_888_000_000


@settings(deadline=None)
@given(
    st.datetimes(
        min_value=datetime(2000, 1, 2),
        max_value=datetime(2030, 1, 1),
        timezones=st.just(UTC),
    ),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_time_formats_agree_property(moment: datetime, offset_min: int) -> None:
    expected = (moment - EPOCH) // timedelta(milliseconds=1)
    shifted = moment.astimezone(timezone(timedelta(minutes=offset_min)))
    assert time_to_ms(moment.isoformat()) == expected
    assert time_to_ms(moment.isoformat().replace("+00:00", "Z")) == expected
    assert time_to_ms(moment.replace(tzinfo=None).isoformat()) == expected
    assert time_to_ms(shifted.isoformat()) == expected
    assert time_to_ms(expected) == expected
    whole = moment.replace(microsecond=0)
    rees46 = whole.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert time_to_ms(rees46) == (whole - EPOCH) // timedelta(milliseconds=1)


def test_time_window_bounds_are_inclusive() -> None:
    limits = EventLimits(max_future_skew_ms=1000, max_age_ms=5000)
    assert parse({**ROW, "event_time": NOW_MS + 1000}, limits).event_time_ms == NOW_MS + 1000
    assert parse({**ROW, "event_time": NOW_MS - 5000}, limits).event_time_ms == NOW_MS - 5000
    assert reason({**ROW, "event_time": NOW_MS + 1001}, limits) == "time_in_future"
    assert reason({**ROW, "event_time": NOW_MS - 5001}, limits) == "time_too_old"


# --- ids ------------------------------------------------------------------------------------


def test_derived_event_id_is_stable_and_content_based() -> None:
    first, again = parse(ROW), parse(dict(reversed(list(ROW.items()))))
    assert first.event_id == again.event_id  # key order does not matter
    assert first.event_id == event_id_for(
        first.event_time_ms, "view", first.user_session, "519107250", "17200506",
        "2053013559792632471", "furniture.living_room.sofa", "", 543.10, "",
    )  # fmt: skip
    for field, value in [("price", 543.11), ("user_session", "other"), ("event_type", "cart")]:
        assert parse({**ROW, field: value}).event_id != first.event_id


def test_optional_text_fields_are_kept_and_only_then_change_the_derived_id() -> None:
    context = {"product_name": "Waterproof Backpack", "device": "desktop",
               "channel": "Organic Search", "country": "United States"}  # fmt: skip
    plain, rich = parse(ROW), parse({**ROW, **context})
    assert (rich.product_name, rich.device, rich.channel, rich.country) == tuple(context.values())
    assert rich.event_id != plain.event_id
    assert parse({**ROW, **dict.fromkeys(context, "")}).event_id == plain.event_id
    assert reason({**ROW, "device": ["desktop"]}) == "bad_type:device"


def test_explicit_event_id_wins_and_empty_one_is_derived() -> None:
    assert parse({**ROW, "event_id": "evt-1"}).event_id == "evt-1"
    assert parse({**ROW, "event_id": 99}).event_id == "99"
    assert parse({**ROW, "event_id": ""}).event_id == parse(ROW).event_id


def test_limits_apply_to_ids_and_text() -> None:
    limits = EventLimits(max_id_len=8, max_text_len=4, max_price=100.0)
    short = {**ROW, "product_id": "1", "category_id": "2", "user_id": "3", "user_session": "s",
             "category_code": "", "price": 1}  # fmt: skip
    assert parse(short, limits)
    assert reason({**short, "user_session": "123456789"}, limits) == "id_too_long:user_session"
    assert reason({**short, "brand": "abcde"}, limits) == "text_too_long:brand"
    assert reason({**short, "price": 100.5}, limits) == "bad_price"


# --- canonical JSON -------------------------------------------------------------------------


def test_event_to_json_is_canonical() -> None:
    event = parse(ROW)
    data = orjson.loads(event_to_json(event))
    assert list(data) == [
        "event_id", "event_time", "event_type", "user_session", "user_id",
        "product_id", "category_id", "category_code", "brand", "price", "query",
        "product_name", "device", "channel", "country",
    ]  # fmt: skip
    assert data["event_time"] == 1_569_888_001_000


def test_event_from_dict_rejects_broken_records() -> None:
    data = orjson.loads(event_to_json(parse(ROW)))
    del data["user_session"]
    with pytest.raises(InvalidEvent, match="missing:user_session"):
        event_from_dict(data)
    with pytest.raises(InvalidEvent, match="bad_type:event_time"):
        event_from_dict({**orjson.loads(event_to_json(parse(ROW))), "event_time": "x"})


_PRINTABLE = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"))
_IDS = st.one_of(st.text(_PRINTABLE, min_size=1, max_size=40), st.integers(0, 2**63 - 1))
_TEXT = st.text(st.characters(codec="utf-8"), max_size=60)
_PRICES = st.one_of(
    st.none(),
    st.floats(min_value=0, max_value=1e7, allow_nan=False),
    st.integers(min_value=0, max_value=10_000_000),
    st.decimals(min_value=0, max_value=10**6, places=2).map(str),
)
_TIMES = st.one_of(
    st.integers(min_value=NOW_MS - LIMITS.max_age_ms, max_value=NOW_MS),
    st.datetimes(
        min_value=datetime(2001, 1, 1),
        max_value=datetime(2019, 12, 31),
        timezones=st.just(UTC),
    ).map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S UTC")),
)


@st.composite
def valid_messages(draw: st.DrawFn) -> dict[str, Any]:
    event_type = draw(st.sampled_from(EVENT_TYPES))
    message: dict[str, Any] = {
        "event_time": draw(_TIMES),
        "event_type": event_type,
        "user_session": draw(_IDS),
        "product_id": draw(_IDS),
        "price": draw(_PRICES),
        "query": draw(st.text(_PRINTABLE, min_size=1, max_size=5)) + draw(_TEXT),
    }
    for field in ("user_id", "category_id"):
        if draw(st.booleans()):
            message[field] = draw(_IDS)
    for field in ("category_code", "brand"):
        message[field] = draw(_TEXT)
    for field in EXTRA_TEXT_FIELDS:
        if draw(st.booleans()):
            message[field] = draw(_TEXT)
    if draw(st.booleans()):
        message["event_id"] = draw(_IDS)
    return message


@settings(max_examples=400, deadline=None)
@given(valid_messages())
def test_round_trip(message: dict[str, Any]) -> None:
    event = parse(message)
    assert parse(event_to_json(event)) == event
    assert event_from_dict(orjson.loads(event_to_json(event))) == event
    assert parse(message).event_id == event.event_id  # a replay is the same event


# --- robustness: nothing but InvalidEvent, ever ---------------------------------------------


_PLAIN_REASONS = {
    "too_large", "not_utf8", "not_json", "not_object", "duplicate_key", "too_deep",
    "nan_or_inf", "unknown_event_type", "bad_time", "time_in_future", "time_too_old",
    "bad_price",
}  # fmt: skip
_FIELD_REASONS = {"missing", "empty", "bad_type", "bad_value", "control_chars", "id_too_long",
                  "text_too_long"}  # fmt: skip
KNOWN_REASONS = _PLAIN_REASONS | {f"{kind}:{f}" for kind in _FIELD_REASONS for f in FIELDS}


def _parses_or_invalid(raw: bytes) -> None:
    """Either a valid (round-trippable) event or InvalidEvent with a known code, nothing else."""
    rejected: InvalidEvent | None = None
    try:
        event = parse(raw)
    except InvalidEvent as exc:
        rejected = exc
    if rejected is not None:
        assert rejected.reason in KNOWN_REASONS
    else:
        assert parse(event_to_json(event)) == event


@settings(max_examples=3000, deadline=None, suppress_health_check=SLOW_OK)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise_anything_else(raw: bytes) -> None:
    _parses_or_invalid(raw)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
_FIELD_NAMES = st.sampled_from([*ROW, "event_id", "query", "extra"])


@settings(max_examples=500, deadline=None, suppress_health_check=SLOW_OK)
@given(st.dictionaries(_FIELD_NAMES, _JSON, max_size=3))
def test_random_field_values_never_raise_anything_else(changes: dict[str, Any]) -> None:
    # A valid row with a few fields replaced, so every validator is reached, not just the first.
    _parses_or_invalid(json.dumps({**ROW, **changes}).encode())  # stdlib may emit NaN literals


@settings(max_examples=1500, deadline=None, suppress_health_check=SLOW_OK)
@given(st.integers(0, 400), st.binary(min_size=1, max_size=8), st.booleans())
def test_mutated_messages_never_raise_anything_else(pos: int, junk: bytes, insert: bool) -> None:
    raw = orjson.dumps({**ROW, "brand": 'a"b\\c', "query": "\u00e9\u4e2d"})
    pos = min(pos, len(raw))
    tail = raw[pos:] if insert else raw[pos + len(junk) :]
    _parses_or_invalid(raw[:pos] + junk + tail)


def test_limits_from_settings() -> None:
    from stream_app.core.config import WindowSettings

    window = WindowSettings(max_future_skew_s=60, max_age_days=2)
    limits = EventLimits.from_settings(window, max_bytes=4096)
    assert limits == EventLimits(max_bytes=4096, max_future_skew_ms=60_000, max_age_ms=172_800_000)
    assert EventLimits.from_settings(WindowSettings(), 64 * 1024) == EventLimits(
        max_age_ms=365 * 20 * 24 * 3600 * 1000
    )
