"""Soak test: one real worker fed at half its capacity for a long time (default 10 minutes).

    python -m bench.soak                     # probe capacity, then 600 s at 50 % of it
    python -m bench.soak --duration 150      # shorter
    python -m bench.soak --rate 80           # skip the probe, feed 80 events/s

Starts the embedded broker and Redis and one ``intent-stream worker`` process (LocalStack),
measures the worker's capacity with a burst (events committed per second), then feeds a
paced stream of fresh sessions at ``--load`` x capacity. Every ``--sample-s`` seconds it
records the worker's RSS (/proc), the consumer lag (produced - committed offsets) and the
error counters from ``/metrics``. It passes when RSS grew < 10 %, the lag stayed bounded and
drained at the end, and no error counter moved. Prints a summary and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from stream_app.core.config import KafkaSettings, Settings
from stream_app.ingest.sources import iter_messages
from stream_app.local.stack import LocalStack, WorkerProcess

REPO = Path(__file__).resolve().parents[1]
SHARED_LOG = REPO.parent / "shared/data/rees46_multicategory/2019-Oct_head_users_a.csv"
BUNDLED_LOG = REPO / "stream_app/demo_data/rees46_2019-Oct_sample.csv"
PARTITIONS = 4
APP_ID = "soak"
ERROR_COUNTERS = ("intent_scoring_failures_total", "intent_store_retries_total", "intent_dlq_total")
RSS_GROWTH_LIMIT_PCT = 10.0


@dataclass
class Sample:
    t_s: float
    rss_mib: float
    produced: int
    committed: int
    lag: int
    errors: float
    scores: float


@dataclass
class Result:
    duration_s: float
    rate_eps: float
    capacity_eps: float | None
    produced: int
    samples: list[Sample] = field(default_factory=list)
    drained_s: float | None = None
    host: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        rss = [s.rss_mib for s in self.samples]
        lags = [s.lag for s in self.samples]
        head, tail = statistics.median(rss[:3]), statistics.median(rss[-3:])
        growth = 100.0 * (tail - head) / head
        errors = self.samples[-1].errors - self.samples[0].errors
        lag_bound = self.rate_eps * 30  # at most ~30 s of input waiting
        return {
            "rss_start_mib": round(head, 1),
            "rss_end_mib": round(tail, 1),
            "rss_max_mib": round(max(rss), 1),
            "rss_growth_pct": round(growth, 2),
            "lag_max": max(lags),
            "lag_p95": sorted(lags)[int(0.95 * (len(lags) - 1))],
            "lag_bound": int(lag_bound),
            "drained_s": self.drained_s,
            "errors": errors,
            "scores": self.samples[-1].scores - self.samples[0].scores,
            "passed": growth < RSS_GROWTH_LIMIT_PCT
            and max(lags) <= lag_bound
            and self.drained_s is not None
            and errors == 0,
        }


# --------------------------------------------------------------------------- input


def fresh_sessions(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """The recorded log, forever; every pass renames its sessions so nothing is a duplicate."""
    recorded = [orjson.loads(value) for _, value in iter_messages(path)]
    cycle = 0
    while True:
        for event in recorded:
            session = f"{event['user_session']}#soak{cycle}"
            body = {**event, "user_session": session}
            body.pop("event_id", None)
            yield session.encode(), orjson.dumps(body)
        cycle += 1


class Feeder:
    def __init__(self, bootstrap: str, topic: str, source: Iterator[tuple[bytes, bytes]]) -> None:
        self.topic = topic
        self.source = source
        self.ends: dict[int, int] = {}
        self.produced = 0
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})

    def _delivered(self, error: Any, message: Any) -> None:
        if error is None:
            partition = message.partition()
            self.ends[partition] = max(self.ends.get(partition, 0), message.offset() + 1)

    def send(self, count: int) -> None:
        for _ in range(count):
            key, value = next(self.source)
            self._producer.produce(self.topic, value=value, key=key, on_delivery=self._delivered)
            self.produced += 1
        self._producer.poll(0)

    def flush(self) -> None:
        self._producer.flush(30)


# --------------------------------------------------------------------------- probes


class Probe:
    def __init__(self, bootstrap: str, topic: str, worker: WorkerProcess) -> None:
        self.topic = topic
        self.worker = worker
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": APP_ID, "enable.auto.commit": False}
        )

    def committed(self) -> int:
        wanted = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]
        return sum(max(0, tp.offset) for tp in self._consumer.committed(wanted, timeout=10))

    def rss_mib(self) -> float:
        assert self.worker.proc is not None
        status = Path(f"/proc/{self.worker.proc.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def metrics(self) -> dict[str, float]:
        import urllib.request

        url = f"http://127.0.0.1:{self.worker.web_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        totals: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name = line.split("{", 1)[0].split(" ", 1)[0]
                totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return totals

    def sample(self, started: float, feeder: Feeder) -> Sample:
        if not self.worker.running:
            raise SystemExit(f"worker exited during the soak:\n{self.worker.log_tail()}")
        committed = self.committed()
        produced = sum(feeder.ends.values())
        metrics = self.metrics()
        return Sample(
            t_s=round(time.monotonic() - started, 1),
            rss_mib=round(self.rss_mib(), 1),
            produced=produced,
            committed=committed,
            lag=max(0, produced - committed),
            errors=sum(metrics.get(name, 0.0) for name in ERROR_COUNTERS),
            scores=metrics.get("intent_scores_total", 0.0),
        )

    def close(self) -> None:
        self._consumer.close()


def wait_committed(probe: Probe, feeder: Feeder, timeout_s: float) -> float | None:
    """Seconds until every produced event is committed, or None after ``timeout_s``."""
    feeder.flush()
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if probe.committed() >= sum(feeder.ends.values()):
            return round(time.monotonic() - started, 1)
        time.sleep(0.5)
    return None


def measure_capacity(probe: Probe, feeder: Feeder, burst: int) -> float:
    """Events per second the worker commits when it has a backlog of ``burst`` events."""
    base = probe.committed()
    feeder.send(burst)
    feeder.flush()
    started = time.monotonic()
    drained = wait_committed(probe, feeder, timeout_s=300)
    elapsed = drained if drained is not None else time.monotonic() - started
    return (probe.committed() - base) / max(elapsed, 1e-3)


# --------------------------------------------------------------------------- run


def soak(
    probe: Probe, feeder: Feeder, rate: float, duration_s: float, every_s: float
) -> list[Sample]:
    samples = []
    started = time.monotonic()
    next_sample = started
    sent = 0
    while (now := time.monotonic()) - started < duration_s:
        due = int((now - started) * rate) - sent
        if due > 0:
            feeder.send(due)
            sent += due
        if now >= next_sample:
            samples.append(probe.sample(started, feeder))
            print(_row(samples[-1]), flush=True)
            next_sample += every_s
        time.sleep(0.02)
    samples.append(probe.sample(started, feeder))
    return samples


def _row(s: Sample) -> str:
    return (f"t={s.t_s:7.1f}s  rss={s.rss_mib:7.1f} MiB  produced={s.produced:8d}  "
            f"lag={s.lag:6d}  errors={s.errors:.0f}  scores={s.scores:.0f}")  # fmt: skip


def run(args: argparse.Namespace) -> Result:
    kafka = KafkaSettings(partitions=PARTITIONS)
    settings = Settings(kafka=kafka)
    env = {
        "WORKER_APP_ID": APP_ID,
        "KAFKA_PARTITIONS": str(PARTITIONS),
        "WORKER_LOG_LEVEL": "WARNING",
    }
    if args.model_dir:
        env["MODEL_DIR"] = str(args.model_dir)
    with LocalStack(settings, worker_env=env) as stack:
        stack.wait_healthy()
        worker = stack.processes[0]
        feeder = Feeder(stack.bootstrap_servers, kafka.events_topic, fresh_sessions(args.data))
        probe = Probe(stack.bootstrap_servers, kafka.events_topic, worker)
        try:
            capacity = None
            rate = args.rate
            if rate is None:
                capacity = measure_capacity(probe, feeder, args.burst)
                rate = max(1.0, capacity * args.load)
                print(
                    f"capacity ~{capacity:.0f} events/s -> soak at {rate:.0f} events/s", flush=True
                )
            result = Result(duration_s=args.duration, rate_eps=round(rate, 1),
                            capacity_eps=None if capacity is None else round(capacity, 1),
                            produced=0, host=_host())  # fmt: skip
            result.samples = soak(probe, feeder, rate, args.duration, args.sample_s)
            result.drained_s = wait_committed(probe, feeder, timeout_s=120)
            result.produced = feeder.produced
            return result
        finally:
            probe.close()


def _host() -> dict[str, Any]:
    load1, load5, _ = os.getloadavg()
    return {"cpus": os.cpu_count(), "loadavg_1m": round(load1, 2), "loadavg_5m": round(load5, 2)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="soak seconds (600)")
    parser.add_argument("--rate", type=float, default=None, help="events/s; default: probe")
    parser.add_argument("--load", type=float, default=0.5, help="fraction of capacity (0.5)")
    parser.add_argument("--burst", type=int, default=3000, help="events in the capacity probe")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples")
    parser.add_argument(
        "--data", type=Path, default=SHARED_LOG if SHARED_LOG.exists() else BUNDLED_LOG
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="MODEL_DIR for the worker")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/soak.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    summary = result.summary()
    report = {"summary": summary, **asdict(result)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    for key, value in summary.items():
        print(f"{key:>16}: {value}")
    print(f"written to {args.out}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
