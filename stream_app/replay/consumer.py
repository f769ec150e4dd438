"""Kafka plumbing of a replay: topics, the score/DLQ consumer and the worker-lag sampler.

The consumer uses ``assign()`` rather than a group subscription: a group join takes many
seconds on the embedded broker and would delay the first measurements.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from stream_app.core.config import KafkaSettings
from stream_app.core.topics import ensure_topics, security_config
from stream_app.replay.producer import kafka_client_config

log = logging.getLogger(__name__)


def prepare_topics(settings: KafkaSettings) -> set[str]:
    """Create the events, scores and DLQ topics if missing; returns the ones created now."""
    names = (settings.events_topic, settings.scores_topic, settings.dlq_topic)
    existing = set(AdminClient(kafka_client_config(settings)).list_topics(timeout=10).topics)
    ensure_topics(
        settings.bootstrap_servers,
        dict.fromkeys(names, settings.partitions),
        settings.replication_factor,
        config=security_config(settings),
    )
    return set(names) - existing


def _start_offsets(consumer: Consumer, topic: str, fresh: bool) -> list[TopicPartition]:
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    partitions = sorted(metadata.partitions)
    if fresh:
        return [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
    ends = [
        consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions
    ]
    return [TopicPartition(topic, p, high) for p, (_, high) in zip(partitions, ends, strict=True)]


def open_results_consumer(settings: KafkaSettings, fresh: set[str]) -> Consumer:
    """Consumer assigned to scores + DLQ at their current ends (no group membership)."""
    consumer = Consumer(
        {
            **kafka_client_config(settings),
            "group.id": f"intent-stream-replay-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": 10,  # low: receive times are the latency measurements
        }
    )
    assignment = []
    for topic in (settings.scores_topic, settings.dlq_topic):
        assignment += _start_offsets(consumer, topic, topic in fresh)
    consumer.assign(assignment)
    return consumer


class LagSampler(threading.Thread):
    """Samples the worker group's lag on the events topic (sum of end - committed offsets)
    once a second, on its own thread: the round trips must not delay the score consumer,
    whose receive times are the latency measurements."""

    def __init__(self, settings: KafkaSettings, group: str, interval_s: float = 1.0) -> None:
        super().__init__(name="replay-lag", daemon=True)
        config = {**kafka_client_config(settings), "group.id": group, "enable.auto.commit": False}
        self._consumer = Consumer(config)
        topic = settings.events_topic
        partitions = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._partitions = [TopicPartition(topic, p) for p in sorted(partitions)]
        self._interval_s = interval_s
        self.samples: list[tuple[int, int]] = []  # (epoch ms, lag)
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.wait(self._interval_s):
                lag = self.sample()
                if lag is not None:
                    self.samples.append((time.time_ns() // 1_000_000, lag))
        finally:
            self._consumer.close()

    def sample(self) -> int | None:
        try:
            committed = self._consumer.committed(self._partitions, timeout=2)
            lag = 0
            for tp in committed:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=2, cached=False)
                # max(): the embedded broker's high watermark can trail the committed offset
                lag += max(0, high - (tp.offset if tp.offset >= 0 else low))
            return lag
        except KafkaException as exc:
            log.debug("lag sample failed: %s", exc)
            return None
