"""The replay report: JSON fields, timeline, SLO check, table and plot."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from stream_app.replay.producer import Delivered
from stream_app.replay.report import (
    ReplayResult,
    print_table,
    report_dict,
    slo_met,
    timeline,
    write_plot,
)
from stream_app.replay.tracker import ScoreTracker
from stream_app.scoring.scores import ScoreRecord

START_MS = 1_764_000_000_000


def _event(session: str, i: int) -> bytes:
    fields = {"event_time": START_MS + i, "event_type": "cart", "product_id": "p",
              "user_session": session, "event_id": f"{session}-{i}"}  # fmt: skip
    return orjson.dumps(fields)


def _score(session: str, n: int) -> ScoreRecord:
    return ScoreRecord(session, "u", 0.7, "m", n, n, "", 0, START_MS, START_MS, START_MS)


def measured_run(latency_ms: int = 100, score_all: bool = True) -> ReplayResult:
    """Two seconds of traffic: 10 sessions x 2 events, plus one malformed message."""
    tracker = ScoreTracker(start_ms=START_MS)
    offset = 0
    for second in range(2):
        for s in range(5):
            session = f"s{second}-{s}"
            for i in range(2):
                produced = START_MS + second * 1000 + s * 10 + i
                tracker.record_sent(Delivered(None, _event(session, i), produced, 0, offset))
                offset += 1
            if score_all or s:
                tracker.record_score(_score(session, 2), produced + latency_ms)
    tracker.record_sent(Delivered(None, b"{", START_MS + 1999, 0, offset))
    return ReplayResult(
        summary=tracker.summary(),
        started_ms=START_MS,
        produce_done_ms=START_MS + 2000,
        finished_ms=START_MS + 2500,
        first_sent_ms=tracker.first_sent_ms,
        last_score_ms=tracker.last_score_ms,
        done=tracker.done(),
        sent_per_s=dict(tracker.sent_per_s),
        scores_per_s=dict(tracker.scores_per_s),
        latencies=list(tracker.latencies),
        lag_samples=[(START_MS + 500, 3), (START_MS + 1500, 0)],
    )


def test_report_json_fields() -> None:
    data = report_dict(measured_run())
    expected = {
        "events_sent": 21,
        "events_valid": 20,
        "events_invalid": 1,
        "dlq": 0,
        "dlq_expected": 1,
        "sessions": 10,
        "sessions_scored": 10,
        "all_scored": True,
        "duration_s": 2.5,
        "throughput_in_eps": 10.5,  # 21 events over the 2 s of producing
        "consumer_lag": [[START_MS + 500, 3], [START_MS + 1500, 0]],
    }
    assert {k: data[k] for k in expected} == expected
    # second event of each session: latency 100; first one: 101 (sent 1 ms earlier)
    assert data["latency_ms_p50"] == pytest.approx(100.5)
    assert data["latency_ms_max"] == 101
    # 10 scores between the first send and the last score (1.041 + 0.1 s later)
    assert data["throughput_out_sps"] == pytest.approx(10 / 1.142, abs=0.1)
    orjson.dumps(data)  # serialisable as is


def test_empty_run_has_null_percentiles() -> None:
    tracker = ScoreTracker(start_ms=START_MS)
    result = ReplayResult(tracker.summary(), START_MS, START_MS, START_MS, None, None, True)
    data = report_dict(result)
    assert data["latency_ms_p99"] is None
    assert data["throughput_in_eps"] == 0.0
    assert not slo_met(result, 1000)


def test_timeline_per_second() -> None:
    rows = timeline(measured_run())
    assert [(r["t_s"], r["sent"], r["scores"]) for r in rows] == [(0, 10, 5), (1, 11, 5)]
    assert rows[0]["latency_ms_p99"] == pytest.approx(101, abs=0.01)


def test_slo_check() -> None:
    assert slo_met(measured_run(latency_ms=100), 150)
    assert not slo_met(measured_run(latency_ms=200), 150)
    unscored = measured_run(latency_ms=10, score_all=False)
    assert not unscored.done
    assert not slo_met(unscored, 150)  # fast but incomplete is a miss


def test_table_prints(capsys: pytest.CaptureFixture[str]) -> None:
    print_table(measured_run())
    out = capsys.readouterr().out
    assert "sessions_scored" in out
    assert "consumer_lag_max" in out


def test_plot_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "plots" / "replay.png"
    write_plot(measured_run(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nan_never_reaches_json() -> None:
    data = report_dict(measured_run())
    for row in data["timeline"]:
        assert all(not (isinstance(v, float) and math.isnan(v)) for v in row.values())


def test_timeline_fills_quiet_seconds() -> None:
    tracker = ScoreTracker(start_ms=START_MS)
    tracker.record_sent(Delivered(None, _event("s", 0), START_MS, 0, 0))
    tracker.record_score(_score("s", 1), START_MS + 3500)
    result = ReplayResult(
        tracker.summary(), START_MS, START_MS + 1, START_MS + 4000, START_MS, START_MS + 3500,
        True, sent_per_s=dict(tracker.sent_per_s), scores_per_s=dict(tracker.scores_per_s),
        latencies=list(tracker.latencies),
    )  # fmt: skip
    rows = timeline(result)
    assert [(r["t_s"], r["sent"], r["scores"]) for r in rows] == [
        (0, 1, 0), (1, 0, 0), (2, 0, 0), (3, 0, 1),
    ]  # fmt: skip
    assert rows[1]["latency_ms_p50"] is None
    assert rows[3]["latency_ms_p50"] == 3500
