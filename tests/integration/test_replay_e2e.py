"""``intent-stream replay`` against the real stack: a real worker process scores a small log.

The report's counts are checked against what the log itself implies (parsed here with the
worker's own rules): every valid event covered by a score, every malformed line dead-lettered,
the duplicate recognised, one score stream per session.
"""

from __future__ import annotations

import argparse
import csv
import gzip
from pathlib import Path

import orjson
import pytest

from stream_app.cli import build_parser
from stream_app.ingest.sources import iter_messages
from stream_app.local.stack import LocalStack
from stream_app.replay.runner import main_replay
from stream_app.sessions.windows import WindowRules
from tests.integration.helpers import (
    expected_session_events,
    latest_scores,
    load_messages,
    stack_settings,
    valid_events,
    worker_env,
)
from tests.shared_data import SHARED_GA_MERCH

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


def ga_merch_slice(path: Path, days: int = 4, every: int = 12) -> Path:
    """Complete ga_merch sessions that start in the log's first ``days`` days: every
    ``every``-th session plus the first ten buying ones, in the log's own order (session
    start, then hit), so later sessions' events interleave backwards in time."""
    with gzip.open(SHARED_GA_MERCH, "rt", newline="") as handle:
        reader = csv.DictReader(handle)
        fields = list(reader.fieldnames or ())
        rows = [row for row in reader if row["event_time"] < f"2016-08-0{1 + days}"]
    sessions = list(dict.fromkeys(row["user_session"] for row in rows))
    buyers = list(dict.fromkeys(r["user_session"] for r in rows if r["event_type"] == "purchase"))
    keep = set(sessions[::every]) | set(buyers[:10])
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(row for row in rows if row["user_session"] in keep)
    return path


@pytest.mark.skipif(not SHARED_GA_MERCH.exists(), reason="needs ../shared/data/ga_merch")
def test_days_of_ga_merch_at_max_speed_arrive_live_and_scored(
    kafka_bootstrap: str,
    redis_url: str,
    unique_name: str,
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issue's case: shifted times of a days-long log run days ahead at max speed and
    were dead-lettered as time_in_future. With the default --times compress: none are."""
    settings = stack_settings(kafka_bootstrap, redis_url, unique_name)
    env = worker_env(settings, model_dir)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    log = ga_merch_slice(tmp_path / "ga_merch_slice.csv")
    messages = list(iter_messages(log))
    by_session = valid_events(messages)
    times = [e.event_time_ms for events in by_session.values() for e in events]
    assert max(times) - min(times) > 3 * 86_400_000  # shift would put it days ahead
    buyers = {s for s, events in by_session.items() if any(e.event_type == "purchase"
              for e in events)}  # fmt: skip
    assert len(buyers) >= 10
    report = tmp_path / "report.json"

    with LocalStack(settings, worker_env=env) as stack:
        stack.wait_healthy()
        args = replay_args(log, kafka_bootstrap, report)
        args.run_tag = "none"  # keep the recorded session ids, to find the buyers' scores
        assert main_replay(args) == 0
        latest = latest_scores(kafka_bootstrap, settings.kafka.scores_topic)

    data = orjson.loads(report.read_bytes())
    assert (data["times"], data["pace"]) == ("compress", "speed=max")
    assert data["events_sent"] == len(messages)
    assert data["events_invalid"] == data["late"] == 0
    assert data["dlq"] == data["dlq_expected"] == data["dlq_unexpected"] == 0
    assert "time_in_future" not in data["dlq_reasons"]
    assert "late_event" not in data["dlq_reasons"]
    assert data["all_scored"] is True
    assert data["sessions"] == data["sessions_scored"] == len(by_session)
    # After the purchase: each buying session's final score is marked, and no other is.
    assert {s for s, record in latest.items() if record.purchased} == buyers
    assert all(latest[s].score == 1.0 for s in buyers)
