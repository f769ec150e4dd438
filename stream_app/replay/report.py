"""What a replay measured: the result record, its JSON form, a table, a plot, the SLO check."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_app.replay.tracker import Latencies, TrackerSummary


@dataclass(frozen=True, slots=True)
class ReplayResult:
    summary: TrackerSummary
    started_ms: int
    produce_done_ms: int
    finished_ms: int
    first_sent_ms: int | None
    last_score_ms: int | None
    done: bool  # every valid event reflected in a score before the drain timeout
    events_failed: int = 0  # messages the broker never acknowledged
    delivery_errors: dict[str, int] = field(default_factory=dict)
    idempotent: bool = True
    sent_per_s: dict[int, int] = field(default_factory=dict)  # epoch second -> count
    scores_per_s: dict[int, int] = field(default_factory=dict)
    latencies: Sequence[tuple[int, int]] = ()  # (received_ms, latency_ms) per covered event
    lag_samples: Sequence[tuple[int, int]] = ()  # (epoch ms, worker consumer-group lag)
    times: str = ""  # the event-time rule (timing.TimeMode): compress, shift, send or keep
    pace: str = ""  # speed=20, speed=max or rate=500


def _rate(count: int, start_ms: int | None, end_ms: int | None) -> float:
    if start_ms is None or end_ms is None or count == 0:
        return 0.0
    return count / max((end_ms - start_ms) / 1000, 1e-3)


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


def report_dict(result: ReplayResult) -> dict[str, Any]:
    """The ``--report-json`` content (NaN percentiles of an empty run become null)."""
    s = result.summary
    return {
        "times": result.times,
        "pace": result.pace,
        "events_sent": s.events_sent,
        "events_failed": result.events_failed,
        "events_valid": s.events_valid,
        "events_invalid": s.events_invalid,
        "duplicates": s.duplicates,
        "late": s.late,
        "overflow": s.overflow,
        "dlq": s.dlq,
        "dlq_expected": s.dlq_expected,
        "dlq_unexpected": s.dlq_unexpected,
        "dlq_other": s.dlq_other,
        "dlq_reasons": s.dlq_reasons,
        "invalid_reasons": s.invalid_reasons,
        "sessions": s.sessions,
        "sessions_scored": s.sessions_scored,
        "sessions_purchased": s.sessions_purchased,
        "scores_received": s.scores_received,
        "scores_stale": s.scores_stale,
        "all_scored": result.done,
        "latency_events": s.latency.count,
        "latency_ms_p50": _finite(s.latency.p50),
        "latency_ms_p90": _finite(s.latency.p90),
        "latency_ms_p99": _finite(s.latency.p99),
        "latency_ms_max": _finite(s.latency.max),
        "scored_ms_p50": _finite(s.latency_to_scored.p50),
        "scored_ms_p99": _finite(s.latency_to_scored.p99),
        "throughput_in_eps": round(
            _rate(s.events_sent, result.started_ms, result.produce_done_ms), 1
        ),
        "throughput_out_sps": round(
            _rate(s.scores_received, result.first_sent_ms, result.last_score_ms), 1
        ),
        "duration_s": round((result.finished_ms - result.started_ms) / 1000, 3),
        "idempotent_producer": result.idempotent,
        "consumer_lag": [[t, lag] for t, lag in result.lag_samples],
        "timeline": timeline(result),
    }


def timeline(result: ReplayResult) -> list[dict[str, Any]]:
    """Per second since the start: events sent, scores received, latency percentiles."""
    by_second: dict[int, list[int]] = defaultdict(list)
    for received_ms, latency_ms in result.latencies:
        by_second[received_ms // 1000].append(latency_ms)
    seconds = set(result.sent_per_s) | set(result.scores_per_s) | set(by_second)
    origin = result.started_ms // 1000
    rows = []
    # Every second from the first to the last, quiet ones included (as zeros, not gaps).
    for second in range(min(seconds, default=0), max(seconds, default=-1) + 1):
        lat = Latencies.of(by_second.get(second, []))
        rows.append(
            {
                "t_s": second - origin,
                "sent": result.sent_per_s.get(second, 0),
                "scores": result.scores_per_s.get(second, 0),
                "latency_ms_p50": _finite(lat.p50),
                "latency_ms_p90": _finite(lat.p90),
                "latency_ms_p99": _finite(lat.p99),
            }
        )
    return rows


def slo_met(result: ReplayResult, p99_ms: float) -> bool:
    """p99 within the objective, and every valid event actually scored (no latency = missed)."""
    p99 = result.summary.latency.p99
    return result.done and not math.isnan(p99) and p99 <= p99_ms


def print_table(result: ReplayResult) -> None:
    from rich.console import Console
    from rich.table import Table

    data = report_dict(result)
    table = Table(title="intent-stream replay", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in data.items():
        if key not in ("timeline", "consumer_lag"):
            table.add_row(key, _cell(value))
    if result.lag_samples:
        table.add_row("consumer_lag_max", str(max(lag for _, lag in result.lag_samples)))
    Console().print(table)


def _cell(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
    return "-" if value is None else str(value)


def write_plot(result: ReplayResult, path: Path) -> None:
    """PNG: latency percentiles, throughput in/out and (if sampled) worker lag over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = timeline(result)
    t = [row["t_s"] for row in rows]
    n_plots = 3 if result.lag_samples else 2
    fig, axes = plt.subplots(n_plots, 1, figsize=(9, 3 * n_plots), sharex=True)
    _plot_latency(axes[0], t, rows)
    axes[1].plot(t, [row["sent"] for row in rows], label="events in /s")
    axes[1].plot(t, [row["scores"] for row in rows], label="scores out /s")
    axes[1].set_ylabel("per second")
    axes[1].set_ylim(bottom=0)
    axes[1].legend()
    if result.lag_samples:
        origin = result.started_ms / 1000
        lag_t = [ms / 1000 - origin for ms, _ in result.lag_samples]
        axes[2].plot(lag_t, [lag for _, lag in result.lag_samples], label="worker lag (msgs)")
        axes[2].set_ylabel("consumer lag")
        axes[2].legend()
    axes[-1].set_xlabel("seconds since start")
    fig.suptitle("intent-stream replay")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_latency(axis: Any, t: list[int], rows: list[dict[str, Any]]) -> None:
    for name in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99"):
        points = [(x, row[name]) for x, row in zip(t, rows, strict=True) if row[name] is not None]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=name[11:])
    axis.set_ylabel("end-to-end latency (ms)")
    axis.legend()
