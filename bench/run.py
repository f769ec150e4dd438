"""``python bench/run.py --report-json PATH``: the whole performance benchmark in one run.

One embedded broker + Redis; one backlog of N events (a REES46 log looped) preloaded into an
events topic; then, each with its own consumer group over that same backlog:

1. our worker (ONNX Runtime, default settings)        -> events/s, ingest, scored sessions/s
2. the naive worker (bench/naive_worker.py)            -> events/s
3. the model alone at the worker's batch and windows   -> sequences/s
4. a raw confluent-kafka consume -> produce loop       -> events/s (Kafka ceiling in Python)
5. a consume-only Faust agent with the worker's settings -> events/s (framework ceiling)
+ two worker processes (ingest scaling), end-to-end latency at half load (worker and naive),
  and the machine's matmul GFLOP/s against the model's FLOPs per scored session;
+ fair scaling: one worker vs two workers, ``MODEL_THREADS=1`` each, on the same backlog;
+ end-to-end latency against offered live load (fractions of the live capacity), for the
  size-only batch policy (``SCORE_LATENCY_BUDGET_MS=0``) and the deadline policy, plotted.

``--quick`` runs every stage on a small backlog with short caps (a smoke run, minutes).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

if __package__ in (None, ""):  # run as `python bench/run.py`: import from the repository root
    # instead of bench/, where a module could shadow a library's (tests/unit/test_bench_imports.py)
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from bench import model as model_bench
from bench.data import default_log, looped_messages, preload
from bench.plot import latency_vs_load
from bench.probes import GroupProgress, scrape
from bench.report import markdown, targets
from bench.stages import Drain, Proc, drain, worker_proc
from stream_app.core.config import (
    BatchSettings,
    KafkaSettings,
    ModelSettings,
    ScoreSettings,
    Settings,
)
from stream_app.core.topics import ensure_topics, read_all
from stream_app.local.stack import LocalStack
from stream_app.replay.report import report_dict
from stream_app.replay.runner import ReplayConfig, run_replay
from stream_app.replay.timing import RawMessage, TimingConfig
from stream_app.scoring.scores import ScoreRecord
from stream_app.serving.deadline import RELEASE_REASONS
from stream_app.sessions.windows import WindowRules, WindowSnapshot, expected_window

log = logging.getLogger("bench")
PARTITIONS = 8
INGEST_WINDOW_S = 4.0
RELEASES = "intent_score_batch_releases_total"
# Offered live load, as fractions of the live capacity (the worker's scored sessions/s).
SWEEP_FRACTIONS = (0.25, 0.5, 0.8, 1.0)
HALF, EIGHTY = 0.5, 0.8


class Bench:
    def __init__(self, args: argparse.Namespace, stack: LocalStack, work: Path) -> None:
        self.args = args
        self.stack = stack
        self.work = work
        self.bootstrap = stack.bootstrap_servers
        self.run_id = uuid.uuid4().hex[:6]
        self.messages: list[RawMessage] = []
        self.results: dict[str, Any] = {}
        self.topic = f"bench-{self.run_id}-events"

    # ---------------------------------------------------------------- set-up
    def topics(self, *names: str) -> None:
        ensure_topics(self.bootstrap, dict.fromkeys(names, PARTITIONS), 1)

    def prepare(self) -> None:
        started = time.monotonic()
        self.messages = looped_messages(self.args.log, self.args.events)
        self.topics(self.topic)
        preload(self.bootstrap, self.topic, self.messages)
        log.info("preloaded %d events in %.1f s", len(self.messages), time.monotonic() - started)

    def env(self, stage: str, events_topic: str | None = None, **extra: str) -> dict[str, str]:
        prefix = f"b{self.run_id}{stage}"[:32]
        names = {k: f"{prefix}-{k}" for k in ("scores", "dlq")}
        self.topics(*names.values())
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "REDIS_URL": self.stack.redis_url,
            "KAFKA_EVENTS_TOPIC": events_topic or self.topic,
            "KAFKA_SCORES_TOPIC": names["scores"],
            "KAFKA_DLQ_TOPIC": names["dlq"],
            "KAFKA_PARTITIONS": str(PARTITIONS),
            "REDIS_KEY_PREFIX": prefix,
            "WORKER_APP_ID": f"{prefix}-group",
            "WORKER_DATA_DIR": str(self.work / prefix),
            "WORKER_LOG_LEVEL": "WARNING",
            "MODEL_DIR": str(self.args.model_dir),
            **extra,
        }

    def progress(self, env: dict[str, str]) -> GroupProgress:
        return GroupProgress(self.bootstrap, env["WORKER_APP_ID"], env["KAFKA_EVENTS_TOPIC"])

    def proc(self, args: list[str], env: dict[str, str], name: str) -> Proc:
        return Proc(args, {**os.environ, **env}, self.work / f"{name}.log").start()

    # ---------------------------------------------------------------- stages
    def raw_kafka(self) -> float:
        env = self.env("raw")
        group, out = env["WORKER_APP_ID"], env["KAFKA_SCORES_TOPIC"]
        count = str(len(self.messages))
        args = ["-m", "bench.raw_kafka", self.bootstrap, self.topic, out, group, count]
        proc = self.proc(args, env, "raw")
        try:
            assert proc.popen is not None
            proc.popen.wait(self.args.cap_s)
        finally:
            proc.stop()
        line = proc.wait_for_line("RESULT events_per_s=", timeout_s=1)
        return float(line.split("=", 1)[1])

    def faust_consume(self) -> float:
        env = self.env("faust")
        proc = self.proc(["-m", "bench.faust_consume"], env, "faust")
        try:
            result = drain(self.progress(env), len(self.messages), self.args.cap_s, alive=[proc])
        finally:
            proc.stop()
        return _capped_rate(result)

    def workers(
        self,
        stage: str,
        count: int,
        cwd: Path | None = None,
        extra: dict[str, str] | None = None,
        cap_s: float | None = None,
    ) -> tuple[Drain, Path]:
        env = self.env(stage, **{**self.args.worker_env, **(extra or {})})
        procs = [
            worker_proc(env, self.work / f"{stage}-{i}.log", cwd=cwd).start() for i in range(count)
        ]
        try:
            for proc in procs:
                proc.wait_healthy()
            ports = [p.web_port for p in procs]
            cap = cap_s or self.args.cap_s
            result = drain(self.progress(env), len(self.messages), cap, ports, procs)
        finally:
            for proc in procs:
                proc.stop()
        return result, Path(env["KAFKA_SCORES_TOPIC"])

    def naive(self) -> float:
        env = self.env("naive")
        proc = self.proc(["-m", "bench.naive_worker"], env, "naive")
        try:
            proc.wait_for_line("naive worker ready")
            result = drain(self.progress(env), len(self.messages), self.args.naive_cap_s)
        finally:
            proc.stop()
        return _capped_rate(result)

    def scored_windows(self, scores_topic: str, limit: int) -> list[WindowSnapshot]:
        """The windows the worker scored, rebuilt from its score records and the log."""
        from stream_app.ingest.events import parse_event

        records = [
            ScoreRecord.from_json(m.value() or b"")
            for m in read_all(self.bootstrap, scores_topic, idle_s=2.0)[:limit]
        ]
        wanted = {r.session_id for r in records}
        events: dict[str, list[Any]] = {}
        for _, value in self.messages:
            event = parse_event(value, now_ms=int(time.time() * 1000))
            if event.user_session in wanted:
                events.setdefault(event.user_session, []).append(event)
        rules = WindowRules()
        return [
            expected_window(r.session_id, events[r.session_id][: r.session_events], rules)
            for r in records
        ]

    def latency(
        self,
        stage: str,
        rate: float,
        naive: bool,
        extra: dict[str, str] | None = None,
        seconds: float | None = None,
    ) -> dict[str, Any]:
        """Replay at ``rate`` events/s through a fresh topic into a fresh worker; the report
        (for our worker with ``batches``: its inference batches during the replay)."""
        events_topic = f"b{self.run_id}{stage}-events"
        self.topics(events_topic)
        settings = {} if naive else {**self.args.worker_env, **(extra or {})}
        env = self.env(stage, events_topic=events_topic, **settings)
        if naive:
            proc = self.proc(["-m", "bench.naive_worker"], env, stage)
            proc.wait_for_line("naive worker ready")
        else:
            proc = worker_proc(env, self.work / f"{stage}.log").start()
            proc.wait_healthy()
        try:
            self.warm_up(env)
            before = {} if naive else scrape(proc.web_port)
            report = report_dict(run_replay(self._replay_config(env, rate, seconds)))
            if not naive:
                report["batches"] = batch_figures(before, scrape(proc.web_port))
            return report
        finally:
            proc.stop()

    def warm_up(self, env: dict[str, str]) -> None:
        """One event per partition, then wait for its scores: the group has joined, partitions
        are assigned and the model has run, so the measured latencies hold none of that."""
        producer = Producer({"bootstrap.servers": self.bootstrap, "acks": "all"})
        now_ms = int(time.time() * 1000)
        for partition in range(PARTITIONS):
            session = f"warm-up-{self.run_id}-{partition}"
            value = orjson.dumps(
                {
                    "event_time": now_ms,
                    "event_type": "view",
                    "product_id": "1",
                    "user_session": session,
                }
            )
            producer.produce(env["KAFKA_EVENTS_TOPIC"], value, session.encode(), partition)
        producer.flush(30)
        scores = read_all(self.bootstrap, env["KAFKA_SCORES_TOPIC"], 120, expected=PARTITIONS)
        if len(scores) < PARTITIONS:
            raise RuntimeError(f"warm-up: {len(scores)} of {PARTITIONS} scores arrived")

    def _replay_config(
        self, env: dict[str, str], rate: float, seconds: float | None = None
    ) -> ReplayConfig:
        kafka = KafkaSettings(
            bootstrap_servers=self.bootstrap,
            events_topic=env["KAFKA_EVENTS_TOPIC"],
            scores_topic=env["KAFKA_SCORES_TOPIC"],
            dlq_topic=env["KAFKA_DLQ_TOPIC"],
        )
        timing = TimingConfig(
            speed=None,
            rate=rate,
            duration_s=seconds or self.args.latency_s,
            times="send",
            run_tag="#lat",
        )
        return ReplayConfig(
            source=lambda: self.messages,
            kafka=kafka,
            timing=timing,
            drain_timeout_s=30.0,
            progress_bar=False,
            lag_group=env["WORKER_APP_ID"],
        )


def _capped_rate(result: Drain) -> float:
    """Rate over whatever the stage finished (it may not drain the backlog within its cap)."""
    points = [(t, float(v)) for t, v in result.committed if v > 0]
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return 0.0
    return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])


def worker_figures(result: Drain) -> dict[str, Any]:
    """Ingest (window updates), scores and coalescing from the workers' summed /metrics."""
    ingest = [
        (t, sum(v for k, v in values.items() if k.startswith("intent_events_in_total{")))
        for t, values in result.metrics
    ]
    scores = result.series("intent_scores_total")
    committed = [(t, float(v)) for t, v in result.committed]
    half = (result.committed[0][0] + result.committed[-1][0]) / 2 if result.committed else 0.0
    last = result.metrics[-1][1] if result.metrics else {}
    batches = last.get("intent_score_batch_size_count", 0.0)

    def per_batch(name: str, scale: float = 1.0) -> float:
        return round(scale * last.get(name, 0.0) / batches, 1) if batches else 0.0

    return {
        "events_per_s": round(result.events_per_s() or _capped_rate(result), 1),
        "second_half_events_per_s": round(_series_rate(committed, since=half), 1),
        "ingest_events_per_s": round(_peak_rate(ingest, INGEST_WINDOW_S), 1),
        "scored_per_s": round(_series_rate(scores), 1),
        "second_half_scored_per_s": round(_series_rate(scores, since=half), 1),
        "mean_score_batch": per_batch("intent_score_batch_size_sum"),
        "mean_inference_ms": per_batch("intent_inference_seconds_sum", 1000.0),
        "coalesced_total": int(last.get("intent_coalesced_total", 0)),
        "scores_total": int(last.get("intent_scores_total", 0)),
        "ingested_total": int(ingest[-1][1]) if ingest else 0,
        "max_pending_sessions": int(
            max((v for _, v in result.series("intent_pending_sessions")), default=0)
        ),
        "max_pending_messages": int(
            max((v for _, v in result.series("intent_pending_messages")), default=0)
        ),
        "committed_total": result.committed[-1][1] if result.committed else 0,
        "release_reasons": release_reasons(last),
    }


def release_reasons(values: dict[str, float]) -> dict[str, int]:
    return {r: int(values.get(f"{RELEASES}{{reason={r}}}", 0)) for r in RELEASE_REASONS}


def batch_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """A worker's inference batches between two /metrics scrapes."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    batches = delta("intent_score_batch_size_count")
    reasons_before, reasons_after = release_reasons(before), release_reasons(after)
    return {
        "count": int(batches),
        "release_reasons": {r: reasons_after[r] - reasons_before[r] for r in RELEASE_REASONS},
        "mean_size": round(delta("intent_score_batch_size_sum") / batches, 2) if batches else 0,
        "mean_padded_len": (
            round(delta("intent_score_batch_padded_len_sum") / batches, 2) if batches else 0
        ),
        "mean_inference_ms": (
            round(1000 * delta("intent_inference_seconds_sum") / batches, 1) if batches else 0
        ),
    }


def _peak_rate(points: list[tuple[float, float]], window_s: float) -> float:
    """The highest rate over any ``window_s`` stretch: what ingest does while it has room
    (once the pending queue is full, it only runs as fast as scoring frees room)."""
    best = 0.0
    for i, (t0, v0) in enumerate(points):
        later = [(t, v) for t, v in points[i + 1 :] if t - t0 >= window_s]
        if later:
            t1, v1 = later[0]
            best = max(best, (v1 - v0) / (t1 - t0))
    return best


def _series_rate(
    points: list[tuple[float, float]], until: float = float("inf"), since: float = 0.0
) -> float:
    moving = [(t, v) for t, v in points if v > 0 and since <= t <= until]
    if len(moving) < 2 or moving[-1][0] <= moving[0][0]:
        return 0.0
    return (moving[-1][1] - moving[0][1]) / (moving[-1][0] - moving[0][0])


# ---------------------------------------------------------------------------------------------


def run_all(bench: Bench) -> dict[str, Any]:
    args, results = bench.args, bench.results
    bench.prepare()
    results["raw_kafka_events_per_s"] = round(bench.raw_kafka(), 1)
    log.info("raw kafka: %s ev/s", results["raw_kafka_events_per_s"])
    results["faust_consume_events_per_s"] = round(bench.faust_consume(), 1)
    log.info("faust consume-only: %s ev/s", results["faust_consume_events_per_s"])
    one, scores_topic = bench.workers("w1", 1, cap_s=args.worker_cap_s)
    results["worker"] = worker_figures(one)
    log.info("worker: %s", results["worker"])
    if args.baseline_src is not None:
        before, _ = bench.workers("w0", 1, cwd=args.baseline_src)
        results["worker_before"] = worker_figures(before)
        log.info("worker before: %s", results["worker_before"])
    results["variants"] = {}
    for index, (name, extra) in enumerate(args.variants.items()):
        variant, _ = bench.workers(f"v{index}", 1, extra=extra)
        results["variants"][name] = {"env": extra, **worker_figures(variant)}
        log.info("worker variant %s: %s", name, results["variants"][name])
    two, _ = bench.workers("w2", 2)
    results["two_workers"] = worker_figures(two)
    log.info("two workers: %s", results["two_workers"])
    scaling_part(bench)
    results["naive_events_per_s"] = round(bench.naive(), 1)
    log.info("naive: %s ev/s", results["naive_events_per_s"])
    model_part(bench, str(scores_topic))
    sweep_part(bench)
    latency_part(bench)
    return results


def scaling_part(bench: Bench) -> None:
    """One worker vs two, each with one model thread, on the same backlog (fair on 2 cores:
    each process gets one core for its model instead of two processes fighting over two)."""
    single = {"MODEL_THREADS": "1"}
    one, _ = bench.workers("f1", 1, extra=single)
    two, _ = bench.workers("f2", 2, extra=single)
    bench.results["scaling"] = {
        "env": single,
        "one_worker": worker_figures(one),
        "two_workers": worker_figures(two),
    }
    log.info("scaling (MODEL_THREADS=1): %s", bench.results["scaling"])


REFERENCE_BUDGET_MS = "100"


def sweep_part(bench: Bench) -> None:
    """p50/p99 against offered live load, the size-only policy vs the deadline policy, each
    point a fresh worker on a fresh topic (same run, same machine)."""
    args, results = bench.args, bench.results
    live = max(1.0, results["worker"]["scored_per_s"])
    budget = bench.args.worker_env.get(
        "SCORE_LATENCY_BUDGET_MS", str(ScoreSettings().latency_budget_ms)
    )
    # The deadline policy is always compared, at REFERENCE_BUDGET_MS when the default is 0.
    budgets = dict.fromkeys([budget, REFERENCE_BUDGET_MS, *(str(b) for b in args.sweep_budget)])
    policies = {"size-only": "0", **{f"deadline {b} ms": b for b in budgets if b != "0"}}
    sweep: list[dict[str, Any]] = []
    for fraction in args.sweep:
        for index, (policy, policy_budget) in enumerate(policies.items()):
            rate = max(1.0, live * fraction)
            stage = f"p{index}{round(fraction * 100)}"
            extra = {"SCORE_LATENCY_BUDGET_MS": policy_budget}
            report = bench.latency(stage, rate, naive=False, extra=extra, seconds=args.sweep_s)
            point = {
                "policy": policy,
                "budget_ms": int(policy_budget),
                "fraction": fraction,
                "rate": round(rate, 1),
                "p50_ms": report["latency_ms_p50"],
                "p90_ms": report["latency_ms_p90"],
                "p99_ms": report["latency_ms_p99"],
                "all_scored": report["all_scored"],
                "batches": report["batches"],
                "report": report,
            }
            sweep.append(point)
            log.info("sweep %s at %.2f live capacity: p99 %s", policy, fraction, point["p99_ms"])
    results["sweep"] = sweep
    plot = latency_vs_load(
        [p for p in sweep if p["p99_ms"] is not None],
        args.report_json.with_name(args.report_json.stem + "-latency-vs-load.png"),
        f"live capacity {live:.0f} sessions/s; {os.cpu_count()} CPUs; {args.sweep_s:.0f} s/point",
    )
    results["sweep_plot"] = plot.name
    deadline = {p["fraction"]: p for p in sweep if p["budget_ms"] == int(budget)}
    results["worker_half_live_capacity"] = deadline[HALF]["report"]
    results["worker_80pct_live_capacity"] = deadline[EIGHTY]["report"]
    reasons = dict.fromkeys(RELEASE_REASONS, 0)
    for fraction in (HALF, EIGHTY):
        for reason, count in deadline[fraction]["batches"]["release_reasons"].items():
            reasons[reason] += count
    results["batch_release_reasons"] = reasons


def model_part(bench: Bench, scores_topic: str) -> None:
    results = bench.results
    windows = bench.scored_windows(scores_topic, bench.args.model_windows)
    batch_size = max(1, round(results["worker"]["mean_score_batch"]))
    threads = (
        ModelSettings().threads
        if "MODEL_THREADS" not in bench.args.worker_env
        else int(bench.args.worker_env["MODEL_THREADS"])
    )
    only = model_bench.model_only(bench.args.model_dir, windows, batch_size, threads)
    results["model_only"] = model_bench.as_dict(only)
    results["peak_gflop_per_s"] = {
        n: round(model_bench.matmul_gflops(n), 1) for n in (1, os.cpu_count() or 1)
    }
    results["flops_per_sequence"] = {
        "mean_item_tokens": round(only.mean_item_tokens, 1),
        "gflop_per_new_item_text": round(
            model_bench.flops_per_sequence(round(only.mean_item_tokens)) / 1e9, 4
        ),
        "encoder_gflop_cold_pass": round(only.encoder_gflop_cold, 2),
    }
    log.info("model only: %s", results["model_only"])


def latency_part(bench: Bench) -> None:
    results = bench.results
    worker_rate = max(1.0, results["worker"]["events_per_s"] / 2)
    results["worker_half_load"] = bench.latency("lw", worker_rate, naive=False)
    log.info("worker half load p99: %s", results["worker_half_load"]["latency_ms_p99"])
    # Live traffic at its recorded pace coalesces little (a session's events are minutes
    # apart), so live capacity is about the scored sessions/s, not the backlog's events/s:
    # half and 80 % of it are points of the sweep (sweep_part).
    for name in bench.args.latency_variant:
        variant = results["variants"][name]
        rate = max(1.0, variant["events_per_s"] / 2)
        report = bench.latency(f"lv{name}"[:8], rate, naive=False, extra=variant["env"])
        variant["half_load"] = report
        log.info("variant %s half load p99: %s", name, report["latency_ms_p99"])
    naive_rate = max(1.0, results["naive_events_per_s"] / 2)
    # The same offered load for both: p99 at the naive worker's half load.
    results["worker_at_naive_half_load"] = bench.latency("ls", naive_rate, naive=False)
    log.info(
        "p99 at the naive half load: %s", results["worker_at_naive_half_load"]["latency_ms_p99"]
    )
    results["naive_half_load"] = bench.latency("ln", naive_rate, naive=True)
    log.info("naive half load p99: %s", results["naive_half_load"]["latency_ms_p99"])


def flat_keys(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The headline keys the issue asks for, next to the detailed results."""
    worker, two, scaling = results["worker"], results["two_workers"], results["scaling"]
    half, eighty = results["worker_half_live_capacity"], results["worker_80pct_live_capacity"]
    return {
        "worker_events_per_s": worker["events_per_s"],
        "naive_events_per_s": results["naive_events_per_s"],
        "model_only_seq_per_s": results["model_only"]["seq_per_s"],
        "worker_scored_per_s": worker["scored_per_s"],
        "raw_kafka_events_per_s": results["raw_kafka_events_per_s"],
        "faust_consume_events_per_s": results["faust_consume_events_per_s"],
        "worker_ingest_events_per_s": worker["ingest_events_per_s"],
        "two_worker_ingest_events_per_s": two["ingest_events_per_s"],
        "p99_ms_half_load": results["worker_half_load"]["latency_ms_p99"],
        "naive_p99_ms": results["naive_half_load"]["latency_ms_p99"],
        "p99_ms_half_live_capacity": half["latency_ms_p99"],
        "p50_ms_half_live_capacity": half["latency_ms_p50"],
        "p99_ms_80pct_live_capacity": eighty["latency_ms_p99"],
        "batch_release_reasons": results["batch_release_reasons"],
        "scale_one_worker_events_per_s": scaling["one_worker"]["events_per_s"],
        "scale_two_workers_events_per_s": scaling["two_workers"]["events_per_s"],
        "settings": settings_used(args),
    }


def settings_used(args: argparse.Namespace) -> dict[str, Any]:
    batch = BatchSettings()
    return {
        "events": args.events,
        "log": str(args.log),
        "model_dir": str(args.model_dir),
        "partitions": PARTITIONS,
        "batch_max_size": batch.max_size,
        "batch_max_wait_ms": batch.max_wait_ms,
        "max_score_batch": batch.max_score_batch,
        "max_pending_sessions": batch.max_pending_sessions,
        "score_latency_budget_ms": ScoreSettings().latency_budget_ms,
        "sweep_fractions": list(args.sweep),
        "quick": args.quick,
        "model_backend": ModelSettings().backend,
        "worker_env": dict(args.worker_env),
        "variants": args.variants,
        "naive": "plain confluent-kafka loop, torch batch 1, Redis per event",
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_avg_start": args.load_start,
        "load_avg_end": list(os.getloadavg()),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report-json", type=Path, required=True)
    parser.add_argument("--markdown", type=Path, help="default: the JSON path with .md")
    parser.add_argument("--log", type=Path, default=default_log())
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--model-dir", type=Path, help="default: $MODEL_DIR or the bundled model")
    parser.add_argument("--cap-s", type=float, default=40.0, help="time cap per drain stage")
    parser.add_argument(
        "--worker-cap-s", type=float, default=90.0, help="our worker's stage: past the fill phase"
    )
    parser.add_argument("--naive-cap-s", type=float, default=45.0)
    parser.add_argument("--latency-s", type=float, default=30.0, help="half-load replay length")
    parser.add_argument("--model-windows", type=int, default=768)
    parser.add_argument(
        "--worker-env", action="append", default=[], help="KEY=VALUE for our worker (repeatable)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:KEY=VALUE[,KEY=VALUE]: one more single-worker stage with these settings",
    )
    parser.add_argument(
        "--latency-variant",
        action="append",
        default=[],
        help="a --variant NAME whose latency at half its own load is measured too",
    )
    parser.add_argument(
        "--sweep",
        type=float,
        action="append",
        help=f"a fraction of live capacity for the latency sweep (repeatable; default "
        f"{', '.join(map(str, SWEEP_FRACTIONS))}; {HALF} and {EIGHTY} are always run)",
    )
    parser.add_argument("--sweep-s", type=float, default=20.0, help="replay length per point")
    parser.add_argument(
        "--sweep-budget",
        type=int,
        action="append",
        default=[],
        help="one more SCORE_LATENCY_BUDGET_MS line in the sweep (repeatable): for choosing it",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 20,000 events, short caps and replays, two sweep points (minutes)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the stage logs")
    parser.add_argument(
        "--baseline-src", type=Path, help="a source tree to run as 'worker before' too"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.cap_s, args.worker_cap_s, args.naive_cap_s = 20_000, 15.0, 30.0, 15.0
        args.latency_s, args.sweep_s, args.model_windows = 8.0, 8.0, 128
    args.sweep = sorted({*(args.sweep or ([] if args.quick else SWEEP_FRACTIONS)), HALF, EIGHTY})
    args.worker_env = dict(item.split("=", 1) for item in args.worker_env)
    args.variants = {
        name: dict(item.split("=", 1) for item in spec.split(","))
        for name, _, spec in (text.partition(":") for text in args.variant)
    }
    args.markdown = args.markdown or args.report_json.with_suffix(".md")
    args.load_start = list(os.getloadavg())
    if args.model_dir is None:
        from stream_app.scoring import resolve_model_dir

        args.model_dir = resolve_model_dir(ModelSettings())
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="intent-bench-"))
    settings = Settings(kafka=KafkaSettings(partitions=PARTITIONS))
    started = time.monotonic()
    try:
        with LocalStack(settings, workers=0, work_dir=work) as stack:
            results = run_all(Bench(args, stack, work))
    finally:
        log.info("logs kept in %s", work) if args.keep_logs else shutil.rmtree(work, True)
    report = {**flat_keys(results, args), "details": results}
    report["duration_s"] = round(time.monotonic() - started, 1)
    report["targets"] = targets(report)
    args.report_json.parent.mkdir(parents=True, exist_ok=True)
    args.report_json.write_bytes(
        orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    args.markdown.write_text(markdown(report))
    print(args.markdown.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
