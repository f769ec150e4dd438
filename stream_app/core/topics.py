"""Topic administration and a read-everything helper (confluent-kafka).

``ensure_topics`` is idempotent: topics that already exist are left as they are (a smaller
partition count than asked for is logged, never changed: repartitioning a keyed topic moves
sessions between partitions). ``read_all`` counts messages by *reading* them, because the
embedded Tansu broker's reported high watermarks can lag behind what it has stored; it uses
the watermarks only as a floor (what the broker already admitted to must be read before an
idle pause may end the read).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from stream_app.core.config import KafkaSettings
from stream_app.core.errors import TransientError

log = logging.getLogger(__name__)

ClientConfig = dict[str, Any]


class TopicsNotReady(TransientError):
    """Topics did not appear (with leaders for every partition) in time."""


def security_config(settings: KafkaSettings) -> ClientConfig:
    """librdkafka security settings (``security.protocol``, SASL, TLS files) from settings."""
    config: ClientConfig = {"security.protocol": settings.security_protocol.lower()}
    if settings.security_protocol.startswith("SASL"):
        config |= {
            "sasl.mechanism": settings.sasl_mechanism,
            "sasl.username": settings.sasl_username,
            "sasl.password": settings.sasl_password.get_secret_value(),
        }
    tls_files = {
        "ssl.ca.location": settings.ssl_cafile,
        "ssl.certificate.location": settings.ssl_certfile,
        "ssl.key.location": settings.ssl_keyfile,
    }
    config |= {key: str(path) for key, path in tls_files.items() if path is not None}
    return config


# librdkafka's own log lines (connection failures...) go through Python logging, once per
# problem, instead of hundreds of raw "FAIL" lines on stderr.
LIBRDKAFKA_LOGGER = logging.getLogger("librdkafka")


def client_config(
    bootstrap: str, extra: Mapping[str, str | int | float | bool] | None
) -> ClientConfig:
    return {"bootstrap.servers": bootstrap, "logger": LIBRDKAFKA_LOGGER, **(extra or {})}


def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    replication_factor: int = 1,
    *,
    config: Mapping[str, str | int | float | bool] | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create the missing ``topics`` (name -> partitions) and wait until all are visible."""
    admin = AdminClient(client_config(bootstrap, config))
    existing = admin.list_topics(timeout=timeout_s).topics
    for name, partitions in topics.items():
        if name in existing and len(existing[name].partitions) < partitions:
            log.warning(
                "topic %s has %d partitions, fewer than the %d configured; not changing it",
                name, len(existing[name].partitions), partitions,
            )  # fmt: skip
    missing = [
        NewTopic(name, num_partitions=partitions, replication_factor=replication_factor)
        for name, partitions in topics.items()
        if name not in existing
    ]
    if missing:
        _create(admin, missing, timeout_s)
    wait_for_topics(bootstrap, topics, config=config, timeout_s=timeout_s)


def _create(admin: AdminClient, new_topics: list[NewTopic], timeout_s: float) -> None:
    futures = admin.create_topics(
        new_topics, operation_timeout=timeout_s, request_timeout=timeout_s
    )
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            log.info("created topic %s", name)
        except KafkaException as exc:
            # Another worker (or the topic-init job) may have won the race: that is fine.
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def wait_for_topics(
    bootstrap: str,
    topics: Iterable[str],
    *,
    config: Mapping[str, str | int | float | bool] | None = None,
    timeout_s: float = 30.0,
) -> dict[str, int]:
    """Poll metadata until every topic exists with a leader per partition; name -> partitions."""
    names = set(topics)
    admin = AdminClient(client_config(bootstrap, config))
    deadline = time.monotonic() + timeout_s
    while True:
        ready = _ready_topics(admin.list_topics(timeout=timeout_s), names)
        if len(ready) == len(names):
            return ready
        if time.monotonic() >= deadline:
            raise TopicsNotReady(
                f"topics not ready after {timeout_s:.0f} s: {names - ready.keys()}"
            )
        time.sleep(0.2)


def _ready_topics(metadata: ClusterMetadata, names: set[str]) -> dict[str, int]:
    ready: dict[str, int] = {}
    for name in names:
        topic = metadata.topics.get(name)
        if topic is None or topic.error is not None or not topic.partitions:
            continue
        if all(p.leader >= 0 and p.error is None for p in topic.partitions.values()):
            ready[name] = len(topic.partitions)
    return ready


def read_all(
    bootstrap: str,
    topic: str,
    timeout_s: float = 30.0,
    expected: int | None = None,
    *,
    idle_s: float = 3.0,
    config: Mapping[str, str | int | float | bool] | None = None,
) -> list[Message]:
    """Every message of ``topic`` from the beginning of all its partitions.

    Uses ``assign()`` (no consumer-group join, so no rebalance delay). Stops when
    ``expected`` messages have been read, or, when ``expected`` is None, after ``idle_s``
    without a new message *once every partition has been read up to the high watermark the
    broker reported at the start* (a fresh consumer needs about a second for its first
    fetch, so an idle clock that started at once would end a read of a non-empty topic
    with nothing); never later than ``timeout_s``.
    """
    partitions = wait_for_topics(bootstrap, [topic], config=config, timeout_s=timeout_s)[topic]
    consumer = Consumer(
        client_config(bootstrap, config)
        | {
            "group.id": f"read-all-{uuid.uuid4().hex}",  # librdkafka wants one even for assign
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        floor = high_watermarks(consumer, topic, partitions, timeout_s)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        return drain(consumer, timeout_s, expected, idle_s, floor)
    finally:
        consumer.close()


def high_watermarks(
    consumer: Consumer, topic: str, partitions: int, timeout_s: float
) -> dict[int, int]:
    """partition -> the high watermark the broker reports now (0 where it cannot say).

    Tansu's watermarks can lag what it has stored, so they are a floor to read up to,
    never a count to stop at."""
    ends: dict[int, int] = {}
    for partition in range(partitions):
        try:
            _, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=min(timeout_s, 10.0)
            )
        except KafkaException as exc:  # no floor for this partition: the idle rule alone
            log.debug("read_all: no watermark for %s[%d]: %s", topic, partition, exc)
            high = 0
        ends[partition] = max(high, 0)
    return ends


def _caught_up(messages: list[Message], floor: Mapping[int, int]) -> set[int]:
    """The partitions these messages show read up to their floor."""
    done = set()
    for message in messages:
        partition, offset = message.partition(), message.offset()
        if partition is not None and offset is not None and offset + 1 >= floor.get(partition, 0):
            done.add(partition)
    return done


def drain(
    consumer: Consumer,
    timeout_s: float,
    expected: int | None,
    idle_s: float,
    floor: Mapping[int, int],
) -> list[Message]:
    """Consume from an assigned ``consumer`` by ``read_all``'s stopping rule."""
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    last_message_at = time.monotonic()
    behind = {partition for partition, end in floor.items() if end > 0}
    while time.monotonic() < deadline:
        if expected is not None and len(messages) >= expected:
            break
        idle = time.monotonic() - last_message_at > idle_s
        if expected is None and idle and not behind:
            break
        batch = consumer.consume(num_messages=1000, timeout=0.2)
        good = [m for m in batch if m.error() is None]
        for message in batch:
            if message.error() is not None:
                log.warning("read_all: %s", message.error())
        if good:
            messages.extend(good)
            last_message_at = time.monotonic()
            behind -= _caught_up(good, floor)
    return messages
