"""Triggers end to end: real broker, real Redis, a real worker and a real triggers worker.

The triggers worker's output must be exactly what the pure engine computes from the scores
topic (same ids, no duplicate), with reason codes and the facts it used.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_app.local.stack import LocalStack
from stream_app.sessions.windows import WindowRules
from tests.integration.fault_tools import TrackedProducer, expected_windows, http_get, wait_until
from tests.integration.helpers import load_messages, stack_settings, wait_for_scores, worker_env
from tests.integration.trigger_tools import (
    duplicates,
    expected_triggers,
    published_triggers,
    rules_of,
    triggers_env,
    write_rules,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PARTITIONS = 4


def test_triggers_worker_fires_exactly_the_expected_triggers_with_reasons(
    kafka_bootstrap: str, redis_url: str, unique_name: str, model_dir: Path, rees46_path: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    settings = stack_settings(kafka_bootstrap, redis_url, unique_name, PARTITIONS)
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"triggers_topic": f"{unique_name}-trg"})}
    )
    rules_path = write_rules(tmp_path)
    messages = load_messages(rees46_path, limit=500)
    env = worker_env(settings, model_dir) | triggers_env(settings, rules_path, unique_name)
    with LocalStack(settings, worker_env=env, work_dir=tmp_path, triggers=1) as stack:
        stack.wait_healthy(assigned=True)
        TrackedProducer(kafka_bootstrap, settings.kafka.events_topic).send(messages)
        windows = expected_windows(messages, WindowRules())
        expected_counts = {s: w.aggregates.n_events for s, w in windows.items()}
        wait_for_scores(kafka_bootstrap, settings.kafka.scores_topic, expected_counts, 180)
        expected = expected_triggers(settings, rules_of(rules_path))
        assert len(expected) >= 5, "the test rules should fire on this sample"
        wait_until(lambda: len(published_triggers(settings)) >= len(expected), 90, "triggers")
        published = published_triggers(settings)
        status, body = http_get(stack.extra[0], "/metrics")
    assert not duplicates(published)
    assert {r.trigger_id: (r.rule, r.session_id) for r in published} == expected
    with_reasons = [r for r in published if r.reasons]
    assert len(with_reasons) >= len(published) // 2, "reason codes missing on most triggers"
    assert all(r.facts.get("n_events", 0) >= 1 for r in published)
    assert all(r.fired_at >= r.scored_at for r in published)
    assert status == 200
    assert b"intent_trigger_decisions_total" in body


def test_published_lookup_finds_triggers_already_on_the_topic(
    kafka_bootstrap: str, unique_name: str
) -> None:
    """Crash recovery asks "was this reserved trigger published?"; a wrong "no" sends the
    trigger twice. With a short idle pause the lookup must still read up to what the broker
    holds, and a partition with nothing after the reservation time (read from its end)
    must not hold it up until the timeout."""
    import time

    import orjson
    from confluent_kafka import Producer

    from stream_app.core.config import KafkaSettings
    from stream_app.core.topics import ensure_topics
    from stream_app.triggers.lookup import PublishedLookup

    topic = f"{unique_name}-trg"
    ensure_topics(kafka_bootstrap, {topic: 3})
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    now_ms = int(time.time() * 1000)
    old_ms = now_ms - 3_600_000  # long before the reservation: partition 2 has only this
    producer.produce(topic, orjson.dumps({"trigger_id": "old"}), partition=2, timestamp=old_ms)
    for trigger_id in ("t-1", "t-2"):
        producer.produce(topic, orjson.dumps({"trigger_id": trigger_id}), partition=0)
    assert producer.flush(10) == 0

    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, triggers_topic=topic)
    lookup = PublishedLookup(kafka, idle_s=0.2, timeout_s=20)
    for _ in range(3):
        started = time.monotonic()
        assert lookup.find({"t-1", "t-2", "t-3"}, since_ms=now_ms) == {"t-1", "t-2"}
        assert time.monotonic() - started < 10
