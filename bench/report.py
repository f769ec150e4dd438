"""The benchmark's targets (ratios, met or missed) and its markdown table."""

from __future__ import annotations

from typing import Any

Target = dict[str, Any]


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


def _target(name: str, value: float | None, goal: float, higher_is_better: bool = True) -> Target:
    met = value is not None and (value >= goal if higher_is_better else value <= goal)
    return {"target": name, "value": value, "goal": goal, "met": met}


def targets(report: dict[str, Any]) -> list[Target]:
    """Each of the issue's targets as (value, goal, met), all from this one run."""
    details = report["details"]
    naive_p99 = report["naive_p99_ms"]
    return [
        _target(
            "worker events/s vs naive (x)",
            _ratio(report["worker_events_per_s"], report["naive_events_per_s"]),
            10.0,
        ),
        _target(
            "worker p99 at half load vs naive p99 at half load (x, lower is better)",
            _ratio(report["p99_ms_half_load"], naive_p99),
            1.0,
            higher_is_better=False,
        ),
        _target(
            "scored sessions/s in the worker vs model alone",
            _ratio(report["worker_scored_per_s"], report["model_only_seq_per_s"]),
            0.8,
        ),
        _target(
            "worker ingest vs Faust consume-only",
            _ratio(report["worker_ingest_events_per_s"], report["faust_consume_events_per_s"]),
            0.8,
        ),
        _target(
            "worker ingest vs raw confluent-kafka loop (stretch)",
            _ratio(report["worker_ingest_events_per_s"], report["raw_kafka_events_per_s"]),
            0.25,
        ),
        _target(
            "two workers' ingest vs one worker's",
            _ratio(report["two_worker_ingest_events_per_s"], report["worker_ingest_events_per_s"]),
            1.6,
        ),
        _target(
            "worker p99 vs naive p99 at the same rate (the naive's half load; x, lower is better)",
            _ratio(details["worker_at_naive_half_load"]["latency_ms_p99"], naive_p99),
            1.0,
            higher_is_better=False,
        ),
        _target("p99 ms at half load", report["p99_ms_half_load"], 100.0, higher_is_better=False),
        _target(
            "half-load replay fully scored (1 = yes)",
            float(details["worker_half_load"]["all_scored"]),
            1.0,
        ),
        _target(
            "p99 ms at half live capacity",
            report["p99_ms_half_live_capacity"],
            150.0,
            higher_is_better=False,
        ),
        _target(
            "p99 ms at 80 % of live capacity",
            report["p99_ms_80pct_live_capacity"],
            500.0,
            higher_is_better=False,
        ),
        _target(
            "two workers vs one, MODEL_THREADS=1 each, committed events/s (x)",
            _ratio(
                report["scale_two_workers_events_per_s"], report["scale_one_worker_events_per_s"]
            ),
            1.6,
        ),
    ]


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def sweep_table(sweep: list[dict[str, Any]]) -> list[str]:
    """Latency against offered live load, both batch policies side by side."""
    if not sweep:
        return []
    lines = [
        "| policy | load (x live capacity) | events/s | p50 ms | p99 ms | batches | mean size "
        "| releases size/deadline/idle | all scored |",
        "|---|---:|---:|---:|---:|---:|---:|---|:-:|",
    ]
    for p in sorted(sweep, key=lambda p: (p["fraction"], p["budget_ms"])):
        b = p["batches"]
        reasons = "/".join(str(v) for v in b["release_reasons"].values())
        lines.append(
            f"| {p['policy']} | {p['fraction']:.2f} | {p['rate']:.1f} | {_fmt(p['p50_ms'])} "
            f"| {_fmt(p['p99_ms'])} | {b['count']} | {b['mean_size']} | {reasons} "
            f"| {'yes' if p['all_scored'] else 'no'} |"
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    details = report["details"]
    worker = details["worker"]
    rows = [
        ("(1) our worker, sustained events/s (committed)", report["worker_events_per_s"]),
        ("(1) our worker, ingest events/s (window updates)", report["worker_ingest_events_per_s"]),
        ("(1) our worker, scored sessions/s", report["worker_scored_per_s"]),
        ("(1) second half of the stage, events/s", worker.get("second_half_events_per_s")),
        ("(1) second half of the stage, scored sessions/s", worker.get("second_half_scored_per_s")),
        ("(1) mean sessions per inference batch", worker["mean_score_batch"]),
        ("(1) p99 ms at half load", report["p99_ms_half_load"]),
        ("(1) p50 ms at half load", details["worker_half_load"]["latency_ms_p50"]),
        (
            "(1) p99 ms at half live capacity (half the scored sessions/s)",
            details["worker_half_live_capacity"]["latency_ms_p99"],
        ),
        (
            "(1) p50 ms at half live capacity",
            details["worker_half_live_capacity"]["latency_ms_p50"],
        ),
        (
            "(1) p99 ms at the naive's half load (same rate as (2)'s latency)",
            details["worker_at_naive_half_load"]["latency_ms_p99"],
        ),
        ("(2) naive worker events/s", report["naive_events_per_s"]),
        ("(2) naive p99 ms at half load", report["naive_p99_ms"]),
        ("(2) naive p50 ms at half load", details["naive_half_load"]["latency_ms_p50"]),
        ("(3) model alone, sequences/s", report["model_only_seq_per_s"]),
        ("(4) raw confluent-kafka consume->produce events/s", report["raw_kafka_events_per_s"]),
        ("(5) Faust consume-only events/s", report["faust_consume_events_per_s"]),
        ("two workers, ingest events/s", report["two_worker_ingest_events_per_s"]),
        ("two workers, sustained events/s", details["two_workers"]["events_per_s"]),
        ("p99 ms at half live capacity (default policy)", report["p99_ms_half_live_capacity"]),
        ("p50 ms at half live capacity (default policy)", report["p50_ms_half_live_capacity"]),
        ("p99 ms at 80 % of live capacity (default policy)", report["p99_ms_80pct_live_capacity"]),
        ("batch release reasons in those two stages", report["batch_release_reasons"]),
        ("(1) batch release reasons on the backlog", worker.get("release_reasons")),
        ("one worker, MODEL_THREADS=1, events/s", report["scale_one_worker_events_per_s"]),
        ("two workers, MODEL_THREADS=1 each, events/s", report["scale_two_workers_events_per_s"]),
    ]
    if "worker_before" in details:
        before = details["worker_before"]
        rows.append(("worker before the perf changes, events/s", before["events_per_s"]))
        rows.append(("worker before, ingest events/s", before["ingest_events_per_s"]))
        rows.append(("worker before, scored sessions/s", before["scored_per_s"]))
    for name, variant in details.get("variants", {}).items():
        rows.append((f"worker [{name}] events/s", variant["events_per_s"]))
        rows.append((f"worker [{name}] ingest events/s", variant["ingest_events_per_s"]))
        rows.append((f"worker [{name}] scored sessions/s", variant["scored_per_s"]))
        if "half_load" in variant:
            half = variant["half_load"]
            rows.append((f"worker [{name}] p99 ms at half its load", half["latency_ms_p99"]))
            rows.append((f"worker [{name}] p50 ms at half its load", half["latency_ms_p50"]))
    lines = ["| measure | value |", "|---|---:|"]
    lines += [f"| {name} | {_fmt(value)} |" for name, value in rows]
    lines += ["", "| target | value | goal | met |", "|---|---:|---:|:-:|"]
    for t in report["targets"]:
        mark = "yes" if t["met"] else "**no**"
        lines.append(f"| {t['target']} | {_fmt(t['value'])} | {_fmt(t['goal'])} | {mark} |")
    lines += ["", *sweep_table(details.get("sweep", []))]
    model = details["model_only"]
    flops = details["flops_per_sequence"]
    lines += [
        "",
        f"Model alone: batch {model['batch_size']}, warm item cache {model['seq_per_s']} "
        f"sessions/s, cold {model['cold_seq_per_s']} ({model['distinct_item_texts']} distinct "
        f"item texts, {flops['gflop_per_new_item_text']} GFLOP per new text at "
        f"{flops['mean_item_tokens']} tokens); matmul peak GFLOP/s by threads: "
        f"{details['peak_gflop_per_s']}.",
        f"Settings: {report['settings']}",
        f"Duration: {report.get('duration_s')} s",
    ]
    return "\n".join(lines) + "\n"
