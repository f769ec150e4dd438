"""Hostile raw messages: each one is rejected with its own, specific reason code."""

from __future__ import annotations

import base64
import importlib.util
import json
from pathlib import Path

import pytest

from stream_app.core.errors import InvalidEvent
from stream_app.ingest.dlq import dead_letter_record, parse_dead_letter
from stream_app.ingest.events import EventLimits, parse_event

CORPUS_DIR = Path(__file__).resolve().parents[1] / "data" / "hostile"
# The corpus generator lives next to its data (not a package): load it by path.
_SPEC = importlib.util.spec_from_file_location("build_corpus", CORPUS_DIR / "build_corpus.py")
assert _SPEC is not None
assert _SPEC.loader is not None
build_corpus = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(build_corpus)

NOW_MS = build_corpus.NOW_MS
CASES = [json.loads(line) for line in (CORPUS_DIR / "corpus.jsonl").read_text().splitlines()]
LIMITS = EventLimits()
MIB = 1024 * 1024


def _reason(raw: bytes) -> str:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw, limits=LIMITS, now_ms=NOW_MS)
    return caught.value.reason


def test_corpus_matches_its_generator() -> None:
    assert (CORPUS_DIR / "corpus.jsonl").read_text(encoding="utf-8") == build_corpus.render()


def test_corpus_names_are_unique_and_cover_every_reason_family() -> None:
    names = [case["name"] for case in CASES]
    assert len(names) == len(set(names))
    families = {case["reason"].split(":")[0] for case in CASES}
    assert families >= {
        "not_json", "not_utf8", "not_object", "duplicate_key", "too_deep", "nan_or_inf",
        "bad_price", "bad_type", "bad_value", "control_chars", "id_too_long", "text_too_long",
        "missing", "empty", "bad_time", "time_in_future", "time_too_old", "unknown_event_type",
    }  # fmt: skip


def test_the_base_event_of_the_corpus_is_valid() -> None:
    event = parse_event(build_corpus.with_fields(), limits=LIMITS, now_ms=NOW_MS)
    assert event.user_session == build_corpus.VALID["user_session"]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_corpus_case_gets_its_reason(case: dict[str, str]) -> None:
    assert _reason(base64.b64decode(case["raw_b64"])) == case["reason"]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_corpus_case_survives_the_dead_letter_round_trip(case: dict[str, str]) -> None:
    raw = base64.b64decode(case["raw_b64"])
    record = dead_letter_record(raw, case["reason"], "", "user-events", 0, 7, None, NOW_MS)
    assert parse_dead_letter(record)["raw"] == raw


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (build_corpus.with_fields(brand="x" * MIB), "too_large"),
        (build_corpus.with_fields(user_session="s" * MIB), "too_large"),
        (b"\xff" * MIB, "too_large"),  # rejected on size before any decoding
        (b"[" * MIB, "too_large"),
    ],
    ids=["1mib_brand", "1mib_session", "1mib_binary", "1mib_brackets"],
)
def test_one_mebibyte_messages_are_too_large(raw: bytes, reason: str) -> None:
    assert _reason(raw) == reason


def test_size_limit_is_inclusive() -> None:
    raw = build_corpus.with_fields()
    assert parse_event(raw, limits=EventLimits(max_bytes=len(raw)), now_ms=NOW_MS)
    with pytest.raises(InvalidEvent, match="too_large"):
        parse_event(raw, limits=EventLimits(max_bytes=len(raw) - 1), now_ms=NOW_MS)


def test_deep_nesting_just_under_the_size_limit_is_too_deep() -> None:
    depth = (LIMITS.max_bytes - 16) // 2
    raw = b'{"x":' + b"[" * depth + b"]" * depth + b"}"
    assert len(raw) <= LIMITS.max_bytes
    assert _reason(raw) == "too_deep"


def test_reason_codes_never_echo_input() -> None:
    """Reasons are metrics labels: an attacker-chosen field or value must not appear in them."""
    raw = build_corpus.with_fields(event_type="evil-label", evil={"nested": 1})
    assert _reason(raw) == "too_deep"
    assert _reason(build_corpus.with_fields(event_type="evil-label")) == "unknown_event_type"
