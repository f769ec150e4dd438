"""What the benchmark watches while a stage runs: committed offsets and /metrics samples.

A consumer group's committed offsets are the one progress measure every stage shares (raw
loop, Faust agent, worker, naive worker): an offset is committed only once its event is fully
processed, so their slope is a sustained end-to-end rate, not a fetch rate.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[float, dict[str, float]]  # (monotonic seconds, values)


class GroupProgress:
    """Sum of a consumer group's committed offsets on one topic (0 before any commit)."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        partitions = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._partitions = [TopicPartition(topic, p) for p in sorted(partitions)]

    def committed(self) -> int | None:
        try:
            offsets = self._consumer.committed(self._partitions, timeout=5)
        except KafkaException:
            return None
        return sum(max(0, tp.offset) for tp in offsets)

    def close(self) -> None:
        self._consumer.close()


def scrape(port: int) -> dict[str, float]:
    """A worker's /metrics as ``{name{labels}: value}`` (histograms as _sum/_count/_bucket)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


@dataclass(eq=False)  # a Thread must stay hashable
class Sampler(threading.Thread):
    """Samples committed offsets (and optionally workers' /metrics) every ``interval_s``."""

    progress: GroupProgress
    metric_ports: list[int] = field(default_factory=list)
    interval_s: float = 0.5
    committed: list[tuple[float, int]] = field(default_factory=list)
    metrics: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        super().__init__(name="bench-sampler", daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            value = self.progress.committed()
            if value is not None:
                self.committed.append((now, value))
            if self.metric_ports:
                self.metrics.append((now, _sum_metrics(self.metric_ports)))
            self.stop.wait(self.interval_s)

    def latest(self) -> int:
        return self.committed[-1][1] if self.committed else 0


def _sum_metrics(ports: list[int]) -> dict[str, float]:
    total: dict[str, float] = {}
    for port in ports:
        try:
            values = scrape(port)
        except OSError:
            continue
        for name, value in values.items():
            total[name] = total.get(name, 0.0) + value
    return total


def slope(points: list[tuple[float, float]], low: float, high: float) -> float:
    """Rate (per second) between the first point >= ``low`` and the last point <= ``high``.

    Skips start-up (before ``low``) and the tail (after ``high``), where commit intervals
    and the last partial batch would distort a sustained rate.
    """
    inside = [(t, v) for t, v in points if low <= v <= high]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return 0.0
    (t0, v0), (t1, v1) = inside[0], inside[-1]
    return (v1 - v0) / (t1 - t0)
