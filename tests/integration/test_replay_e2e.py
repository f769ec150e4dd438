"""``intent-stream replay`` against the real stack: a real worker process scores a small log.

The report's counts are checked against what the log itself implies (parsed here with the
worker's own rules): every valid event covered by a score, every malformed line dead-lettered,
the duplicate recognised, one score stream per session.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
import pytest

from stream_app.cli import build_parser
from stream_app.replay.runner import main_replay
from stream_app.stack import LocalStack
from stream_app.windows import WindowRules
from tests.integration.helpers import (
    expected_session_events,
    load_messages,
    stack_settings,
    worker_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MALFORMED = [b"not json at all", b'{"event_type": "view"}', b"[1, 2, 3]"]
N_EVENTS = 150


def write_log(path: Path, rees46: Path) -> tuple[Path, list[tuple[bytes | None, bytes]]]:
    """REES46 events as JSONL, one of them repeated (a duplicate), and malformed lines."""
    events = load_messages(rees46, limit=N_EVENTS)
    values = [value for _, value in events]
    lines = [*values[:50], *MALFORMED, *values[50:], values[10]]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, [(None, line) for line in lines]


def replay_args(log: Path, bootstrap: str, report: Path) -> argparse.Namespace:
    argv = ["replay", str(log), "--bootstrap-servers", bootstrap, "--speed", "max",
            "--report-json", str(report), "--no-progress", "--drain-timeout", "60",
            "--slo-p99-ms", "60000"]  # fmt: skip
    return build_parser().parse_args(argv)


def test_replay_report_counts_match_the_log(
    kafka_bootstrap: str,
    redis_url: str,
    unique_name: str,
    model_dir: Path,
    rees46_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = stack_settings(kafka_bootstrap, redis_url, unique_name)
    env = worker_env(settings, model_dir)
    for name, value in env.items():  # the replay reads the worker's topics and group
        monkeypatch.setenv(name, value)
    log, messages = write_log(tmp_path / "log.jsonl", rees46_path)
    expected, invalid = expected_session_events(messages, WindowRules())
    report = tmp_path / "report.json"

    with LocalStack(settings, worker_env=env) as stack:
        stack.wait_healthy()
        assert main_replay(replay_args(log, kafka_bootstrap, report)) == 0

    data = orjson.loads(report.read_bytes())
    assert data["events_sent"] == len(messages)
    assert data["events_failed"] == 0
    assert data["events_invalid"] == invalid == len(MALFORMED)
    assert data["duplicates"] == 1
    assert data["events_valid"] == len(messages) - invalid - 1  # distinct valid events
    assert data["dlq"] == data["dlq_expected"] == invalid
    assert data["sessions"] == data["sessions_scored"] == len(expected)
    assert data["all_scored"] is True
    # Every distinct valid event got a latency: it was reflected in a score.
    assert data["latency_events"] == sum(expected.values())
    assert 0 < data["latency_ms_p50"] <= data["latency_ms_p99"] <= data["latency_ms_max"]
    assert data["scores_received"] >= len(expected)
