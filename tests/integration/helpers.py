"""Helpers for tests that drive real ``intent-stream worker`` processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson
from confluent_kafka import Producer

from stream_app.core.config import KafkaSettings, RedisSettings, Settings
from stream_app.core.errors import InvalidEvent
from stream_app.core.topics import read_all
from stream_app.ingest.events import Event, parse_event
from stream_app.ingest.sources import iter_messages
from stream_app.scoring.scores import ScoreRecord
from stream_app.sessions.store import RedisSessionStore, redis_client
from stream_app.sessions.windows import WindowRules, WindowSnapshot, expected_window


def stack_settings(
    kafka_bootstrap: str, redis_url: str, name: str, partitions: int = 4
) -> Settings:
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=kafka_bootstrap,
            events_topic=f"{name}-events",
            scores_topic=f"{name}-scores",
            dlq_topic=f"{name}-dlq",
            partitions=partitions,
        ),
        redis=RedisSettings(url=redis_url, key_prefix=name),
    )


def worker_env(settings: Settings, model_dir: Path, **extra: str) -> dict[str, str]:
    kafka = settings.kafka
    env = {
        "KAFKA_EVENTS_TOPIC": kafka.events_topic,
        "KAFKA_SCORES_TOPIC": kafka.scores_topic,
        "KAFKA_DLQ_TOPIC": kafka.dlq_topic,
        "KAFKA_PARTITIONS": str(kafka.partitions),
        "REDIS_KEY_PREFIX": settings.redis.key_prefix,
        "WORKER_APP_ID": f"{settings.redis.key_prefix}-app",
        "MODEL_DIR": str(model_dir),
        "MODEL_THREADS": "1",
        "WORKER_LOG_LEVEL": "INFO",
        # The tests replay recorded logs with their own (2016, 2019) event times: those scores
        # would all be stale, and triggers ignore stale scores. The staleness test sets it.
        "SCORE_STALE_AFTER_S": "0",
    }
    return {**env, **extra}


def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> int:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    count = 0
    for key, value in messages:
        producer.produce(topic, value=value, key=key)
        producer.poll(0)
        count += 1
    assert producer.flush(30) == 0
    return count


def sentinels(bootstrap: str, topic: str, partitions: int, tag: str) -> set[str]:
    """One fresh session per partition: once all are scored, everything before them was."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    names = set()
    for partition in range(partitions):
        session = f"sentinel-{tag}-{partition}"
        value = orjson.dumps(
            {
                "event_time": int(time.time() * 1000),
                "event_type": "view",
                "product_id": "1",
                "user_session": session,
            }
        )
        producer.produce(topic, value=value, key=session.encode(), partition=partition)
        names.add(session)
    assert producer.flush(30) == 0
    return names


def valid_events(messages: Iterable[tuple[bytes | None, bytes]]) -> dict[str, list[Event]]:
    """The valid events of ``messages`` per session, in produce order (the worker's parser)."""
    now_ms = int(time.time() * 1000)
    by_session: dict[str, list[Event]] = {}
    for _, value in messages:
        try:
            event = parse_event(value, now_ms=now_ms)
        except InvalidEvent:
            continue
        by_session.setdefault(event.user_session, []).append(event)
    return by_session


def expected_session_events(
    messages: Sequence[tuple[bytes | None, bytes]], rules: WindowRules
) -> tuple[dict[str, int], int]:
    """Per session, how many distinct valid events the worker must accept; and #invalid."""
    by_session = valid_events(messages)
    invalid = len(messages) - sum(len(events) for events in by_session.values())
    expected = {
        sid: expected_window(sid, events, rules).aggregates.n_events
        for sid, events in by_session.items()
    }
    return expected, invalid


def stored_windows(settings: Settings, sessions: Iterable[str]) -> dict[str, WindowSnapshot | None]:
    """What the worker left in Redis for each session."""

    async def read() -> dict[str, WindowSnapshot | None]:
        store = RedisSessionStore(
            redis_client(settings.redis), WindowRules(), settings.redis.key_prefix
        )
        try:
            return {sid: await store.get(sid) for sid in sessions}
        finally:
            await store.close()

    return asyncio.run(read())


def latest_scores(bootstrap: str, topic: str) -> dict[str, ScoreRecord]:
    latest: dict[str, ScoreRecord] = {}
    for message in read_all(bootstrap, topic, timeout_s=30, idle_s=1.0):
        record = ScoreRecord.from_json(message.value())
        current = latest.get(record.session_id)
        if current is None or record.session_events >= current.session_events:
            latest[record.session_id] = record
    return latest


def wait_for_scores(
    bootstrap: str, topic: str, expected: dict[str, int], timeout_s: float = 180
) -> dict[str, ScoreRecord]:
    """Poll until every expected session's newest score covers all its valid events."""
    deadline = time.monotonic() + timeout_s
    while True:
        latest = latest_scores(bootstrap, topic)
        missing = {
            sid
            for sid, n in expected.items()
            if sid not in latest or latest[sid].session_events < n
        }
        if not missing or time.monotonic() > deadline:
            return latest
        time.sleep(1.0)


def load_messages(path: Path, limit: int) -> list[tuple[bytes | None, bytes]]:
    messages = []
    for key, value in iter_messages(path):
        messages.append((key, value))
        if len(messages) >= limit:
            break
    return messages
