"""A real worker process between a real broker and a real Redis, fed real REES46 events."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_app.core.topics import read_all
from stream_app.ingest.dlq import parse_dead_letter
from stream_app.local.stack import LocalStack
from stream_app.scoring.scores import ScoreRecord
from stream_app.sessions.windows import WindowRules
from tests.integration.helpers import (
    expected_session_events,
    latest_scores,
    load_messages,
    produce,
    sentinels,
    stack_settings,
    stored_windows,
    valid_events,
    wait_for_scores,
    worker_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

MALFORMED: list[tuple[bytes | None, bytes]] = [
    (None, b"this is not json"),
    (b"k", b"\xff\xfe\xfd"),
    (b"s", b'{"event_type": "teleport", "user_session": "s", "event_time": 1}'),
    (b"s", b'{"event_type": "view", "user_session": "", "event_time": 1, "product_id": 1}'),
    (b"s", b"[1, 2, 3]"),
]


def test_sample_is_scored_on_complete_windows_and_replay_is_idempotent(
    kafka_bootstrap: str, redis_url: str, unique_name: str, model_dir: Path, rees46_path: Path
) -> None:
    settings = stack_settings(kafka_bootstrap, redis_url, unique_name)
    events = load_messages(rees46_path, limit=600)
    # Malformed messages interleaved with good ones: none may block or drop a valid event.
    messages = events[:200] + MALFORMED + events[200:]
    expected, invalid = expected_session_events(messages, WindowRules())
    assert invalid == len(MALFORMED)

    with LocalStack(settings, worker_env=worker_env(settings, model_dir)) as stack:
        stack.wait_healthy()
        produce(kafka_bootstrap, settings.kafka.events_topic, messages)
        latest = wait_for_scores(kafka_bootstrap, settings.kafka.scores_topic, expected)

        incomplete = {s: n for s, n in expected.items() if latest.get(s) is None
                      or latest[s].session_events != n}  # fmt: skip
        assert not incomplete, f"{len(incomplete)} sessions without a complete-window score"
        for record in latest.values():
            assert 0.0 <= record.score <= 1.0
            assert record.window_events == min(record.session_events, 50)
            assert record.ingest_ms >= record.oldest_ingest_ms > 0

        # After the purchase: every score covering a session's first purchase is marked
        # (score 1.0, no model call); every score before it is the model's, unmarked.
        bought_at = first_purchase_positions(messages)
        assert bought_at, "the sample has buying sessions"
        for message in read_all(kafka_bootstrap, settings.kafka.scores_topic):
            record = ScoreRecord.from_json(message.value())
            purchased = record.session_events >= bought_at.get(record.session_id, 10**9)
            assert record.purchased is purchased, record
            assert record.score == 1.0 or not purchased

        letters = read_all(kafka_bootstrap, settings.kafka.dlq_topic, expected=len(MALFORMED))
        reasons = sorted(parse_dead_letter(m.value())["reason"] for m in letters)
        assert len(reasons) == len(MALFORMED)
        assert "not_json" in reasons
        assert "unknown_event_type" in reasons

        sessions = sorted(expected)
        before = stored_windows(settings, sessions)
        produce(kafka_bootstrap, settings.kafka.events_topic, events)  # the same events again
        tag = sentinels(kafka_bootstrap, settings.kafka.events_topic, 4, unique_name)
        wait_for_scores(kafka_bootstrap, settings.kafka.scores_topic, dict.fromkeys(tag, 1))
        after = stored_windows(settings, sessions)
        assert after == before, "replaying the same events changed a window"
        rescored = latest_scores(kafka_bootstrap, settings.kafka.scores_topic)
        assert all(rescored[s].session_events == expected[s] for s in sessions)


def first_purchase_positions(messages: list[tuple[bytes | None, bytes]]) -> dict[str, int]:
    """Per buying session, how many distinct events it has once its first purchase is in
    (one key, one partition: the worker accepts each session's events in produce order)."""
    positions = {}
    for session, events in valid_events(messages).items():
        distinct = {e.event_id: e for e in events}  # first occurrence wins, order kept
        kinds = [e.event_type for e in distinct.values()]
        if "purchase" in kinds:
            positions[session] = kinds.index("purchase") + 1
    return positions
