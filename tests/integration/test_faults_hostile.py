"""Hostile input through a real worker: every bad message is dead-lettered with its own reason,
the valid events around it are all scored, memory stays bounded, and the worker never stops."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import orjson
import pytest

from stream_app.core.config import Settings
from stream_app.core.errors import InvalidEvent
from stream_app.core.topics import read_all
from stream_app.ingest.dlq import parse_dead_letter
from stream_app.ingest.events import EventLimits, parse_event
from stream_app.local.stack import LocalStack
from stream_app.sessions.windows import LATE_REASON, WindowRules
from tests.integration.fault_tools import (
    Message,
    TrackedProducer,
    assert_complete,
    expected_windows,
    health_status,
    rss_kib,
)
from tests.integration.helpers import (
    load_messages,
    stack_settings,
    worker_env,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

CORPUS = Path(__file__).resolve().parents[1] / "data" / "hostile" / "corpus.jsonl"
MIB = 1024 * 1024
PARTITIONS = 4
# Growth allowed over the run: the 1 MiB messages pass through once and must not stay.
RSS_GROWTH_LIMIT_KIB = 32 * 1024


def _oversized_and_deep() -> dict[str, bytes]:
    """Messages too big to commit to the corpus, plus nesting far beyond any sane depth."""
    base = {"event_time": "2019-10-01 00:00:00 UTC", "event_type": "view", "product_id": "1",
            "user_session": "s-hostile"}  # fmt: skip
    return {
        "1mib_brand": orjson.dumps({**base, "brand": "x" * MIB}),
        "1mib_binary": b"\xff" * MIB,
        "1mib_brackets": b"[" * MIB,
        "deep_objects_8k": b'{"a":' * 8_000 + b"1" + b"}" * 8_000,  # 48 kB: under the size cap
        "deep_arrays_30k": b"[" * 30_000 + b"]" * 30_000,
    }


def _hostile_cases(now_ms: int) -> dict[str, tuple[bytes, str]]:
    """name -> (raw, reason the worker must give), judged with the worker's own limits."""
    defaults = Settings()
    limits = EventLimits.from_settings(defaults.window, defaults.kafka.max_message_bytes)
    raws = {case["name"]: base64.b64decode(case["raw_b64"])
            for case in map(json.loads, CORPUS.read_text().splitlines())}  # fmt: skip
    raws |= _oversized_and_deep()
    cases = {}
    for name, raw in raws.items():
        try:
            parse_event(raw, limits=limits, now_ms=now_ms)
        except InvalidEvent as exc:
            cases[name] = (raw, exc.reason)
    return cases


def _late_session(now_ms: int) -> list[Message]:
    """Three events; the third is older than the second by more than the session gap."""
    hour = 3_600_000

    def event(at_ms: int, product: str) -> Message:
        body = {"event_time": at_ms, "event_type": "view", "product_id": product,
                "user_session": "late-session"}  # fmt: skip
        return b"late-session", orjson.dumps(body)

    return [event(now_ms - 3 * hour, "1"), event(now_ms - hour, "2"), event(now_ms - 2 * hour, "3")]


def _interleave(valid: list[Message], hostile: list[Message]) -> list[Message]:
    step = max(1, len(valid) // (len(hostile) + 1))
    mixed: list[Message] = []
    for i, bad in enumerate(hostile):
        mixed.extend(valid[i * step : (i + 1) * step])
        mixed.append(bad)
    mixed.extend(valid[len(hostile) * step :])
    return mixed


def test_hostile_corpus_is_dead_lettered_by_reason_while_valid_events_are_all_scored(
    kafka_bootstrap: str,
    redis_url: str,
    unique_name: str,
    model_dir: Path,
    rees46_path: Path,
    tmp_path: Path,
) -> None:
    now_ms = int(time.time() * 1000)
    cases = _hostile_cases(now_ms)
    assert len(cases) >= 85, "the corpus lost cases"
    assert {cases[n][1] for n in ("deep_objects_8k", "deep_arrays_30k")} == {"too_deep"}
    assert {cases[n][1] for n in ("1mib_brand", "1mib_binary", "1mib_brackets")} == {"too_large"}
    valid = load_messages(rees46_path, limit=600)
    # Valid events first, so the model's buffers have grown to their working size before the
    # RSS baseline; then the hostile messages among the rest.
    warm_up, rest = valid[:250], valid[250:]
    duplicates = valid[:60]  # the same bytes again: same event ids
    late = _late_session(now_ms)
    hostile: list[Message] = [(f"hostile:{name}".encode(), raw) for name, (raw, _) in cases.items()]
    messages = _interleave(rest, hostile) + late + duplicates
    expected = expected_windows(warm_up + messages, WindowRules())
    assert expected["late-session"].aggregates.n_events == 2

    settings = stack_settings(kafka_bootstrap, redis_url, unique_name, PARTITIONS)
    env = worker_env(settings, model_dir)
    with LocalStack(settings, worker_env=env, work_dir=tmp_path) as stack:
        stack.wait_healthy()
        worker = stack.processes[0]
        assert worker.proc is not None
        producer = TrackedProducer(kafka_bootstrap, settings.kafka.events_topic)
        producer.send(warm_up)
        assert_complete(stack, expected_windows(warm_up, WindowRules()))
        rss_before = rss_kib(worker.proc.pid)

        producer.send(messages)
        assert_complete(stack, expected)
        letters = read_all(kafka_bootstrap, settings.kafka.dlq_topic, 60, expected=len(cases) + 1)
        rss_after = rss_kib(worker.proc.pid)
        print(f"worker RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MiB, "
              f"{len(cases)} hostile cases")  # fmt: skip

        records = [parse_dead_letter(m.value() or b"") for m in letters]
        got = {r["key"]: r["reason"] for r in records}
        want = {f"hostile:{name}".encode(): reason for name, (_, reason) in cases.items()}
        assert {k: v for k, v in got.items() if k in want} == want
        assert got.get(b"late-session") == LATE_REASON
        assert len(records) == len(cases) + 1, "duplicates must not be dead-lettered"
        assert worker.running
        assert health_status(worker)[0] == 200
        assert rss_after - rss_before < RSS_GROWTH_LIMIT_KIB, (rss_before, rss_after)
