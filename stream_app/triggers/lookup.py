"""Was a reserved trigger already published? Read the triggers topic back (crash recovery).

Only called when a crash left a trigger reserved in Redis but maybe unpublished (rare), so a
read of the topic from the reservation time is affordable. Reads from ``offsets_for_times``
(a minute before the reservation) where the broker supports it, else from the beginning.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence

import orjson
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

from stream_app.core.config import KafkaSettings
from stream_app.core.topics import drain, high_watermarks, security_config, wait_for_topics

log = logging.getLogger(__name__)

MARGIN_MS = 60_000  # producer clocks may differ from the worker that reserved the trigger


class PublishedLookup:
    def __init__(self, kafka: KafkaSettings, idle_s: float = 1.0, timeout_s: float = 30.0) -> None:
        self._kafka = kafka
        self._idle_s = idle_s
        self._timeout_s = timeout_s

    async def __call__(self, trigger_ids: Sequence[str], since_ms: int) -> set[str]:
        return await asyncio.to_thread(self.find, set(trigger_ids), since_ms)

    def find(self, wanted: set[str], since_ms: int) -> set[str]:
        kafka = self._kafka
        config = security_config(kafka)
        topic = kafka.triggers_topic
        parts = wait_for_topics(kafka.bootstrap_servers, [topic], config=config)[topic]
        consumer = Consumer(
            {"bootstrap.servers": kafka.bootstrap_servers, **config,
             "group.id": f"trigger-lookup-{uuid.uuid4().hex}", "enable.auto.commit": False}
        )  # fmt: skip
        try:
            start = self._start(consumer, topic, parts, since_ms - MARGIN_MS)
            ends = high_watermarks(consumer, topic, parts, self._timeout_s)
            # Read at least up to what the broker reports, where there is anything to read.
            floor = {tp.partition: 0 if tp.offset == OFFSET_END else ends[tp.partition]
                     for tp in start}  # fmt: skip
            consumer.assign(start)
            messages = drain(consumer, self._timeout_s, None, self._idle_s, floor)
        finally:
            consumer.close()
        found = set()
        for message in messages:
            try:
                trigger = orjson.loads(message.value() or b"{}").get("trigger_id")
            except (orjson.JSONDecodeError, AttributeError):
                continue
            if trigger in wanted:
                found.add(trigger)
        log.info("trigger lookup: %d of %d already on the topic", len(found), len(wanted))
        return found

    @staticmethod
    def _start(consumer: Consumer, topic: str, parts: int, since_ms: int) -> list[TopicPartition]:
        asked = [TopicPartition(topic, p, max(since_ms, 0)) for p in range(parts)]
        try:
            found = consumer.offsets_for_times(asked, timeout=10)
        except KafkaException as exc:
            log.info("offsets_for_times unsupported (%s): reading from the beginning", exc)
            return [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(parts)]
        # -1: no message at or after the time on that partition.
        return [TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END)
                for tp in found]  # fmt: skip
