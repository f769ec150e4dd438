"""Regenerate ``corpus.jsonl``: hostile raw messages, each with the reason code it must get.

Run ``python tests/data/hostile/build_corpus.py`` after changing a case; a unit test fails when
the committed corpus and this script disagree. Every case starts from one valid REES46-style
event and breaks exactly one thing, so the expected reason is unambiguous. Messages are judged
with ``now_ms = NOW_MS`` (2020-01-01T00:00:00Z) and the default ``EventLimits``. Cases too big
to commit (1 MiB values) are generated in ``tests/unit/test_hostile_input.py``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

NOW_MS = 1_577_836_800_000
CORPUS = Path(__file__).with_name("corpus.jsonl")
VALID: dict[str, Any] = {
    "event_time": "2019-10-01 00:00:00 UTC",
    "event_type": "view",
    "product_id": "44600062",
    "category_id": "2103807459595387724",
    "category_code": "",
    "brand": "shiseido",
    "price": 35.79,
    "user_id": "541312140",
    "user_session": "72d76fde-8bb3-4e00-8c23-a032dfed738c",
}
_DROP = object()


def with_fields(**changes: Any) -> bytes:
    """The valid event with some fields replaced (``_DROP`` removes one)."""
    event = {k: v for k, v in {**VALID, **changes}.items() if v is not _DROP}
    return json.dumps(event, ensure_ascii=False).encode("utf-8")


def with_text(old: str, new: str) -> bytes:
    """The valid event's JSON with a literal substring swapped (for non-JSON-able payloads)."""
    raw = with_fields().decode("utf-8")
    assert old in raw
    return raw.replace(old, new, 1).encode("utf-8")


def _encoding_cases() -> list[tuple[str, bytes, str]]:
    valid = with_fields()
    return [
        ("empty_message", b"", "not_json"),
        ("plain_text", b"hello world", "not_json"),
        ("truncated_object", valid[:-5], "not_json"),
        ("trailing_garbage", valid + b" extra", "not_json"),
        ("two_objects", valid + valid, "not_json"),
        ("single_quotes", valid.replace(b'"', b"'"), "not_json"),
        ("lone_surrogate_escape", with_text('"72d76fde', '"\\ud800'), "not_json"),
        ("invalid_utf8_byte", valid.replace(b"shiseido", b"shis\xffido"), "not_utf8"),
        ("overlong_utf8", valid.replace(b"shiseido", b"\xc0\xafshiseido"), "not_utf8"),
        ("utf8_encoded_surrogate", valid.replace(b"shiseido", b"\xed\xa0\x80"), "not_utf8"),
        ("utf16_le", valid.decode().encode("utf-16"), "not_utf8"),
        ("latin1_brand", with_fields(brand="Müller").replace("ü".encode(), b"\xfc"), "not_utf8"),
        ("top_level_array", b"[" + valid + b"]", "not_object"),
        ("top_level_string", b'"view"', "not_object"),
        ("top_level_number", b"42", "not_object"),
        ("top_level_null", b"null", "not_object"),
    ]


def _structure_cases() -> list[tuple[str, bytes, str]]:
    deep = b'{"extra":' + b"[" * 5000 + b"]" * 5000 + b"}"
    return [
        (
            "duplicate_event_type",
            with_text('"view"', '"view","event_type":"purchase"'),
            "duplicate_key",
        ),
        ("duplicate_same_value", with_text('"brand"', '"brand":"x","brand"'), "duplicate_key"),
        (
            "duplicate_with_escapes",
            with_text('"brand"', '"brand":"a\\"b","brand"'),
            "duplicate_key",
        ),
        (
            "duplicate_session",
            with_text('"user_session"', '"user_session":"a","user_session"'),
            "duplicate_key",
        ),
        (
            "duplicate_in_nested",
            with_text('"brand"', '"extra":{"a":1,"a":2},"brand"'),
            "duplicate_key",
        ),
        ("nesting_5000_deep", deep, "too_deep"),
        ("nested_unknown_field", with_fields(extra={"a": [1, {"b": 2}]}), "too_deep"),
        ("nested_session", with_fields(user_session={"id": "x"}), "bad_type:user_session"),
        ("array_product_id", with_fields(product_id=["1", "2"]), "bad_type:product_id"),
        ("object_price", with_fields(price={"amount": 1}), "bad_type:price"),
    ]


def _number_cases() -> list[tuple[str, bytes, str]]:
    return [
        ("nan_price", with_text("35.79", "NaN"), "nan_or_inf"),
        ("infinity_price", with_text("35.79", "Infinity"), "nan_or_inf"),
        ("minus_infinity_price", with_text("35.79", "-Infinity"), "nan_or_inf"),
        ("overflowing_price", with_text("35.79", "1e400"), "nan_or_inf"),
        ("nan_price_text", with_fields(price="NaN"), "nan_or_inf"),
        ("inf_price_text", with_fields(price="-inf"), "nan_or_inf"),
        ("overflow_price_text", with_fields(price="9e999"), "nan_or_inf"),
        ("negative_price", with_fields(price=-0.01), "bad_price"),
        ("absurd_price", with_fields(price=1e12), "bad_price"),
        ("price_text_not_number", with_fields(price="12 EUR"), "bad_price"),
        ("price_hex", with_fields(price="0x10"), "bad_price"),
        ("price_bool", with_fields(price=True), "bad_type:price"),
    ]


def _id_cases() -> list[tuple[str, bytes, str]]:
    return [
        ("nul_in_session", with_fields(user_session="abc\x00def"), "control_chars:user_session"),
        ("ansi_escape_product", with_fields(product_id="\x1b[31m1"), "control_chars:product_id"),
        ("bidi_override_user", with_fields(user_id="12\u202e34"), "control_chars:user_id"),
        ("newline_event_id", with_fields(event_id="a\nb"), "control_chars:event_id"),
        ("zero_width_category", with_fields(category_id="1\u200b2"), "control_chars:category_id"),
        ("long_session", with_fields(user_session="s" * 257), "id_too_long:user_session"),
        ("long_product", with_fields(product_id="9" * 10_000), "id_too_long:product_id"),
        ("long_event_id", with_fields(event_id="e" * 300), "id_too_long:event_id"),
        ("long_brand", with_fields(brand="b" * 1025), "text_too_long:brand"),
        ("long_query", with_fields(event_type="search", query="q" * 5000), "text_too_long:query"),
        ("missing_session", with_fields(user_session=_DROP), "missing:user_session"),
        ("null_session", with_fields(user_session=None), "missing:user_session"),
        ("empty_session", with_fields(user_session=""), "empty:user_session"),
        ("blank_session", with_fields(user_session="   "), "empty:user_session"),
        ("session_bool", with_fields(user_session=True), "bad_type:user_session"),
        ("session_float", with_fields(user_session=1.5), "bad_type:user_session"),
        ("missing_product_view", with_fields(product_id=_DROP), "missing:product_id"),
        (
            "empty_product_purchase",
            with_fields(event_type="purchase", product_id=""),
            "empty:product_id",
        ),
        ("product_float", with_fields(product_id=4.46e7), "bad_type:product_id"),
        (
            "product_beyond_64bit",
            with_text('"44600062"', "123456789012345678901234567890"),
            "bad_type:product_id",
        ),
        ("negative_user_id", with_fields(user_id=-5), "bad_value:user_id"),
        ("brand_number", with_fields(brand=5), "bad_type:brand"),
    ]


def _time_and_type_cases() -> list[tuple[str, bytes, str]]:
    return [
        ("missing_time", with_fields(event_time=_DROP), "missing:event_time"),
        ("empty_time", with_fields(event_time=""), "empty:event_time"),
        ("words_time", with_fields(event_time="yesterday"), "bad_time"),
        ("month_13", with_fields(event_time="2019-13-01 00:00:00 UTC"), "bad_time"),
        ("feb_30", with_fields(event_time="2019-02-30T00:00:00Z"), "bad_time"),
        ("non_ascii_digits", with_fields(event_time="٢٠١٩-10-01 00:00:00"), "bad_time"),
        ("huge_time_text", with_fields(event_time="2019-10-01" + " " * 100), "bad_time"),
        ("float_time", with_fields(event_time=1.5698e12), "bad_type:event_time"),
        ("bool_time", with_fields(event_time=True), "bad_type:event_time"),
        ("far_future_iso", with_fields(event_time="2999-01-01T00:00:00Z"), "time_in_future"),
        ("future_epoch_ms", with_fields(event_time=10**18), "time_in_future"),
        ("u64_max_epoch", with_fields(event_time=2**64 - 1), "time_in_future"),
        ("tomorrow_plus", with_fields(event_time=NOW_MS + 24 * 3600 * 1000 + 1), "time_in_future"),
        ("far_past_text", with_fields(event_time="1900-01-01 00:00:00 UTC"), "time_too_old"),
        ("epoch_zero", with_fields(event_time=0), "time_too_old"),
        ("negative_epoch", with_fields(event_time=-(2**63)), "time_too_old"),
        ("year_one", with_fields(event_time="0001-01-01T00:00:00+14:00"), "time_too_old"),
        ("unknown_type", with_fields(event_type="buy"), "unknown_event_type"),
        ("uppercase_type", with_fields(event_type="VIEW"), "unknown_event_type"),
        ("type_with_nul", with_fields(event_type="view\x00"), "unknown_event_type"),
        ("empty_type", with_fields(event_type=""), "empty:event_type"),
        ("missing_type", with_fields(event_type=_DROP), "missing:event_type"),
        ("numeric_type", with_fields(event_type=1), "bad_type:event_type"),
        ("search_without_query", with_fields(event_type="search"), "missing:query"),
        ("search_blank_query", with_fields(event_type="search", query=" \t "), "empty:query"),
        ("query_number", with_fields(event_type="search", query=7), "bad_type:query"),
    ]


def build() -> list[dict[str, str]]:
    cases = (
        _encoding_cases()
        + _structure_cases()
        + _number_cases()
        + _id_cases()
        + _time_and_type_cases()
    )
    return [
        {"name": name, "reason": reason, "raw_b64": base64.b64encode(raw).decode("ascii")}
        for name, raw, reason in cases
    ]


def render() -> str:
    return "".join(json.dumps(case, sort_keys=True) + "\n" for case in build())


if __name__ == "__main__":
    CORPUS.write_text(render(), encoding="utf-8")
    print(f"wrote {len(build())} cases to {CORPUS}")
