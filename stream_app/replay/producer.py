"""A batched, keyed confluent-kafka producer that stamps each record with its send time.

The worker reads a score's ``ingest_ms`` from the Kafka record timestamp, so the timestamp we
set here is the start of the end-to-end latency clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import KafkaError, Message, Producer

from stream_app.core.config import KafkaSettings
from stream_app.core.topics import LIBRDKAFKA_LOGGER, security_config

log = logging.getLogger(__name__)

# The worker consumes with aiokafka, which needs an extra library (not installed by default)
# to read lz4, snappy or zstd batches, and crashes on them; gzip it reads out of the box.
Compression = Literal["none", "gzip", "lz4"]


@dataclass(frozen=True, slots=True)
class Delivered:
    """A message the broker acknowledged: where it landed and what we sent."""

    key: bytes | None
    value: bytes
    timestamp_ms: int
    partition: int
    offset: int


def kafka_client_config(settings: KafkaSettings) -> dict[str, Any]:
    """librdkafka connection + security settings (security.protocol, SASL, TLS files)."""
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "logger": LIBRDKAFKA_LOGGER,
        **security_config(settings),
    }


def producer_config(
    settings: KafkaSettings, *, compression: Compression = "none", idempotent: bool = True
) -> dict[str, Any]:
    return {
        **kafka_client_config(settings),
        "linger.ms": 5,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 200_000,
        "compression.type": compression,
        "acks": "all",
        "enable.idempotence": idempotent,
        "message.max.bytes": max(settings.max_message_bytes * 2, 1_000_000),
        # Brokers close idle connections; that is not worth a log line in a load report.
        "log.connection.close": False,
    }


class EventProducer:
    """Wraps ``confluent_kafka.Producer``: backpressure by polling, delivery counting, and a
    clean fall-back to a plain producer when the broker refuses idempotence."""

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        on_delivery: Callable[[Delivered], None],
        *,
        compression: Compression = "none",
        idempotent: bool = True,
    ) -> None:
        self.topic = topic
        self.delivered = 0
        self.failed = 0
        self.errors: dict[str, int] = {}
        self._settings = settings
        self._compression = compression
        self._on_delivery = on_delivery
        self._fatal: KafkaError | None = None
        self.idempotent = idempotent
        self._producer = self._build()

    def _build(self) -> Producer:
        config = producer_config(
            self._settings, compression=self._compression, idempotent=self.idempotent
        )
        return Producer({**config, "error_cb": self._error})

    def _error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error
        log.warning("kafka producer: %s", error)

    def warm_up(self, timeout_s: float = 1.0) -> None:
        """Connect, and give an idempotent producer time to get (or be refused) a producer id."""
        self._producer.list_topics(timeout=timeout_s * 5)
        deadline = time.monotonic() + timeout_s if self.idempotent else 0.0
        while time.monotonic() < deadline and self._fatal is None:
            self._producer.poll(0.05)
        self._fall_back_if_fatal()

    def _fall_back_if_fatal(self) -> None:
        if self._fatal is None:
            return
        if not self.idempotent:
            raise RuntimeError(f"kafka producer failed: {self._fatal}")
        log.warning("broker refused the idempotent producer (%s); using a plain one", self._fatal)
        self._producer.flush(5)
        self.idempotent, self._fatal = False, None
        self._producer = self._build()

    def send(self, key: bytes | None, value: bytes, timestamp_ms: int) -> None:
        """Queue one record; when the local queue is full, serve callbacks until it drains."""
        self._fall_back_if_fatal()
        while True:
            try:
                self._producer.produce(
                    self.topic, value, key, timestamp=timestamp_ms, on_delivery=self._delivery
                )
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def _delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.failed += 1
            self.errors[error.name()] = self.errors.get(error.name(), 0) + 1
            return
        self.delivered += 1
        timestamp_ms = message.timestamp()[1]
        partition, offset = message.partition(), message.offset()
        key, value = message.key(), message.value()
        assert value is not None
        assert partition is not None
        assert offset is not None
        self._on_delivery(Delivered(key, value, timestamp_ms, partition, offset))

    def poll(self, timeout_s: float = 0.0) -> None:
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding deliveries; returns how many are still queued."""
        return int(self._producer.flush(timeout_s))

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued and release the client now, not whenever it is collected
        (a lingering client keeps reconnecting to a broker that the caller may stop next)."""
        self._producer.flush(timeout_s)
        del self._producer
