"""Dead-letter records: faithful, bounded, and readable back."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_app.ingest.dlq import DLQ_SCHEMA, dead_letter_record, parse_dead_letter

NOW_MS = 1_577_836_800_000
MIB = 1024 * 1024


def record(raw: bytes, key: bytes | None = b"s1", **kwargs: int) -> bytes:
    return dead_letter_record(raw, "not_json", "bad", "user-events", 3, 1234, key, NOW_MS, **kwargs)


def test_text_message_is_stored_as_text() -> None:
    data = orjson.loads(record(b'{"oops": '))
    assert data["schema"] == DLQ_SCHEMA
    assert (data["raw"], data["raw_encoding"], data["raw_truncated"]) == (
        '{"oops": ',
        "utf-8",
        False,
    )
    assert (data["topic"], data["partition"], data["offset"]) == ("user-events", 3, 1234)
    assert (data["reason"], data["detail"], data["failed_at_ms"]) == ("not_json", "bad", NOW_MS)
    assert (data["key"], data["key_encoding"]) == ("s1", "utf-8")
    assert data["raw_size"] == 9
    assert data["raw_sha256"] == hashlib.sha256(b'{"oops": ').hexdigest()


def test_binary_message_is_stored_as_base64() -> None:
    raw = b"\xff\x00\xfe binary"
    data = orjson.loads(record(raw, key=b"\x80"))
    assert data["raw_encoding"] == "base64"
    assert base64.b64decode(data["raw"]) == raw
    assert data["key_encoding"] == "base64"


@pytest.mark.parametrize("key", [None, b"", b"session-1", b"\xc3\x28"])
def test_round_trip_through_parse_dead_letter(key: bytes | None) -> None:
    raw = "caf\u00e9 \x00 \u202e".encode()
    parsed = parse_dead_letter(record(raw, key=key))
    assert parsed["raw"] == raw
    assert parsed["key"] == key
    assert parsed["raw_truncated"] is False


@pytest.mark.parametrize(
    "raw",
    [b"x" * (3 * MIB), b"\xff" * (3 * MIB), b"\x01" * (3 * MIB), "\u4e2d".encode() * MIB],
    ids=["ascii", "binary", "control_chars_escape_6x", "multibyte"],
)
@pytest.mark.parametrize("cap", [64 * 1024, MIB])
def test_oversized_message_is_truncated_but_fully_described(raw: bytes, cap: int) -> None:
    out = record(raw, max_record_bytes=cap)
    assert len(out) <= cap
    parsed = parse_dead_letter(out)
    assert parsed["raw_truncated"] is True
    assert raw.startswith(parsed["raw"])
    assert len(parsed["raw"]) > cap // 8  # a useful prefix, not an empty one
    assert parsed["raw_size"] == len(raw)
    assert parsed["raw_sha256"] == hashlib.sha256(raw).hexdigest()


def test_long_detail_and_key_are_capped() -> None:
    out = dead_letter_record(b"x", "r" * 500, "d" * 10_000, "t", 0, 0, b"k" * 5000, NOW_MS)
    parsed = parse_dead_letter(out)
    assert len(parsed["reason"]) == 128
    assert len(parsed["detail"]) == 1024
    assert parsed["key_truncated"] is True
    assert parsed["key"] != b"k" * 5000
    assert (b"k" * 5000).startswith(parsed["key"])


def test_a_cap_too_small_for_the_envelope_is_refused() -> None:
    with pytest.raises(ValueError, match="no room"):
        record(b"x", max_record_bytes=300)


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[]", b'{"schema": "other"}',
     orjson.dumps({"schema": DLQ_SCHEMA, "raw": "!!", "raw_encoding": "base64"}),
     orjson.dumps({"schema": DLQ_SCHEMA, "raw": "x", "raw_encoding": "rot13"}),
     orjson.dumps({"schema": DLQ_SCHEMA})],
)  # fmt: skip
def test_parse_dead_letter_refuses_foreign_data(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"dead-letter|not a"):
        parse_dead_letter(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=6000) | st.text(max_size=3000).map(lambda t: t.encode("utf-8", "replace")),
    st.integers(min_value=4096, max_value=8192),
    st.none() | st.binary(max_size=2000),
)
def test_any_message_fits_and_reads_back_as_a_prefix(
    raw: bytes, cap: int, key: bytes | None
) -> None:
    out = dead_letter_record(raw, "not_json", "", "user-events", 0, 0, key, NOW_MS,
                             max_record_bytes=cap)  # fmt: skip
    assert len(out) <= cap
    parsed = parse_dead_letter(out)
    assert raw.startswith(parsed["raw"])
    assert parsed["raw_truncated"] == (parsed["raw"] != raw)
    assert parsed["raw_size"] == len(raw)
