"""Pipeline semantics without servers: in-memory store, recording sinks, a fixed clock."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import orjson
import pytest

from stream_app.core.config import BatchSettings, ModelSettings, Settings
from stream_app.core.errors import StoreUnavailable
from stream_app.ingest.dlq import parse_dead_letter
from stream_app.ingest.events import Event
from stream_app.scoring.scores import ScoreRecord
from stream_app.serving.pipeline import InMessage, Pipeline
from stream_app.sessions.store import InMemorySessionStore
from stream_app.sessions.windows import WindowRules, WindowSnapshot

NOW_MS = 1_700_000_000_000


class CountingScorer:
    """Deterministic stand-in for the model: the score grows with the window length."""

    model_version = "test-1"

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.batches: list[list[str]] = []

    def score(self, snapshots: Sequence[WindowSnapshot]) -> np.ndarray:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("backend exploded")
        self.batches.append([s.session_id for s in snapshots])
        return np.array([min(1.0, len(s.events) / 10) for s in snapshots], dtype=np.float32)


class FlakyStore(InMemorySessionStore):
    """The real in-memory store, unavailable for its first ``outages`` calls."""

    def __init__(self, rules: WindowRules, outages: int) -> None:
        super().__init__(rules, clock=lambda: NOW_MS)
        self.outages = outages

    async def apply(self, updates):  # type: ignore[no-untyped-def]
        if self.outages:
            self.outages -= 1
            raise StoreUnavailable("connection refused")
        return await super().apply(updates)


class Recorder:
    def __init__(self) -> None:
        self.scores: list[ScoreRecord] = []
        self.letters: list[dict] = []
        self.acked: list[int] = []
        self.log: list[str] = []

    async def publish_scores(self, records: Sequence[ScoreRecord]) -> None:
        self.scores.extend(records)
        self.log.append(f"scores:{len(records)}")

    async def publish_dead_letters(self, letters: Sequence[tuple[bytes | None, bytes]]) -> None:
        self.letters.extend(parse_dead_letter(value) for _, value in letters)
        self.log.append(f"dlq:{len(letters)}")

    async def ack(self, messages: Sequence[InMessage]) -> None:
        self.acked.extend(m.offset for m in messages)
        self.log.append(f"ack:{len(messages)}")


def make_pipeline(
    recorder: Recorder, *, store=None, scorer=None, max_pending: int = 1000
) -> Pipeline:
    settings = Settings(
        batch=BatchSettings(max_score_batch=64, max_pending_sessions=max_pending),
        model=ModelSettings(retries=1, inference_timeout_s=5),
    )
    rules = WindowRules(max_events=settings.window.max_events)
    return Pipeline(
        settings=settings,
        store=store if store is not None else InMemorySessionStore(rules, clock=lambda: NOW_MS),
        scorer=scorer if scorer is not None else CountingScorer(),
        publish_scores=recorder.publish_scores,
        publish_dead_letters=recorder.publish_dead_letters,
        ack=recorder.ack,
        clock=lambda: NOW_MS,
    )


def message(offset: int, session: str, minute: int, event_type: str = "view") -> InMessage:
    value = orjson.dumps(
        {
            "event_time": NOW_MS - 3_600_000 + minute * 60_000,
            "event_type": event_type,
            "product_id": f"p{offset}",
            "category_code": "electronics.smartphone",
            "brand": "acme",
            "price": 10.5,
            "user_id": "u1",
            "user_session": session,
        }
    )
    return InMessage(session.encode(), value, "user-events", 0, offset, NOW_MS - 50 + offset)


def bad(offset: int, value: bytes) -> InMessage:
    return InMessage(None, value, "user-events", 1, offset, NOW_MS)


async def test_valid_events_are_scored_then_acked() -> None:
    rec = Recorder()
    pipe = make_pipeline(rec)
    await pipe.ingest([message(0, "s1", 1), message(1, "s2", 1), message(2, "s1", 2)])
    assert rec.acked == []  # nothing may be committed before its score is out
    assert await pipe.score_pending() == 2
    by_session = {r.session_id: r for r in rec.scores}
    assert by_session["s1"].session_events == 2
    assert by_session["s1"].window_events == 2
    assert by_session["s2"].session_events == 1
    assert by_session["s1"].oldest_ingest_ms == NOW_MS - 50
    assert by_session["s1"].ingest_ms == NOW_MS - 48
    assert sorted(rec.acked) == [0, 1, 2]
    assert rec.log == ["scores:2", "ack:3"]


async def test_invalid_messages_go_to_dlq_with_source_and_reason() -> None:
    rec = Recorder()
    pipe = make_pipeline(rec)
    await pipe.ingest([bad(7, b"\xff\xfe not json"), message(8, "s1", 1), bad(9, b"[1,2]")])
    assert [letter["reason"] for letter in rec.letters] == ["not_utf8", "not_object"]
    assert rec.letters[0]["partition"] == 1
    assert rec.letters[0]["offset"] == 7
    assert rec.acked == [7, 9]  # dead letters acked once the DLQ write returned
    await pipe.score_pending()
    assert [r.session_id for r in rec.scores] == ["s1"]
    assert sorted(rec.acked) == [7, 8, 9]


async def test_replayed_events_change_no_window_but_wait_for_a_score() -> None:
    # A re-delivery after a crash may be the only chance to publish the score the crashed
    # worker never sent, so duplicates are acknowledged only after a (duplicate) score.
    rec = Recorder()
    pipe = make_pipeline(rec)
    batch = [message(0, "s1", 1), message(1, "s1", 2)]
    await pipe.ingest(batch)
    await pipe.score_pending()
    before = await pipe.store.get("s1")
    replay = [InMessage(m.key, m.value, m.topic, m.partition, m.offset + 10, NOW_MS) for m in batch]
    await pipe.ingest(replay)
    assert await pipe.store.get("s1") == before
    assert sorted(rec.acked) == [0, 1]
    await pipe.score_pending()
    assert sorted(rec.acked) == [0, 1, 10, 11]
    assert [r.session_events for r in rec.scores] == [2, 2]


async def test_a_session_touched_twice_before_scoring_is_scored_once_on_newest_window() -> None:
    rec = Recorder()
    scorer = CountingScorer()
    pipe = make_pipeline(rec, scorer=scorer)
    await pipe.ingest([message(0, "hot", 1)])
    await pipe.ingest([message(1, "hot", 2), message(2, "cold", 1)])
    await pipe.ingest([message(3, "hot", 3)])
    await pipe.score_pending()
    assert scorer.batches == [["hot", "cold"]]
    hot = next(r for r in rec.scores if r.session_id == "hot")
    assert hot.session_events == 3
    assert pipe.pending.coalesced_total == 2
    assert sorted(rec.acked) == [0, 1, 2, 3]


async def test_out_of_order_event_lands_in_place() -> None:
    rec = Recorder()
    pipe = make_pipeline(rec)
    await pipe.ingest([message(0, "s", 5), message(1, "s", 1), message(2, "s", 3)])
    await pipe.score_pending()
    snapshot = await pipe.store.get("s")
    assert snapshot is not None
    times = [e.event_time_ms for e in snapshot.events]
    assert times == sorted(times)


async def test_store_outage_is_retried_without_losing_or_acking() -> None:
    rec = Recorder()
    store = FlakyStore(WindowRules(), outages=3)
    pipe = make_pipeline(rec, store=store)
    pipe._store_backoff = type(pipe._store_backoff)(base_s=0.001, cap_s=0.002)
    await pipe.ingest([message(0, "s1", 1)])
    assert store.outages == 0
    assert pipe.health.store_up
    await pipe.score_pending()
    assert [r.session_events for r in rec.scores] == [1]


async def test_a_model_failing_everything_dead_letters_nothing_and_acks_nothing() -> None:
    rec = Recorder()
    pipe = make_pipeline(rec, scorer=CountingScorer(failures=5))
    await pipe.ingest([message(0, "s1", 1)])
    await pipe.score_pending()  # 2 attempts and the known-good probe all fail: model down
    assert rec.scores == []
    assert rec.letters == []
    assert rec.acked == []
    assert len(pipe.pending) == 1  # kept for the next try
    await pipe.score_pending()
    assert [r.session_id for r in rec.scores] == ["s1"]
    assert rec.acked == [0]


async def test_scoring_recovers_after_one_failure() -> None:
    rec = Recorder()
    pipe = make_pipeline(rec, scorer=CountingScorer(failures=1))
    await pipe.ingest([message(0, "s1", 1)])
    await pipe.score_pending()
    assert [r.session_id for r in rec.scores] == ["s1"]


async def test_backpressure_blocks_ingest_until_scoring_makes_room() -> None:
    rec = Recorder()
    pipe = make_pipeline(rec, max_pending=2)
    await pipe.ingest([message(0, "a", 1), message(1, "b", 1)])
    blocked = asyncio.create_task(pipe.ingest([message(2, "c", 1)]))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    assert len(pipe.pending) == 2
    await pipe.score_pending()
    await asyncio.wait_for(blocked, 1)
    assert len(pipe.pending) == 1


async def test_a_session_that_bought_is_published_as_purchased_without_a_model_call() -> None:
    rec = Recorder()
    scorer = CountingScorer()
    pipe = make_pipeline(rec, scorer=scorer)
    await pipe.ingest([message(0, "buyer", 1), message(1, "buyer", 2, "cart")])
    await pipe.ingest([message(2, "browser", 1)])
    await pipe.score_pending()
    before = {r.session_id: r for r in rec.scores}
    assert not any(r.purchased for r in before.values())
    assert before["buyer"].score == pytest.approx(0.2)  # the model's answer before the purchase

    await pipe.ingest([message(3, "buyer", 3, "purchase"), message(4, "browser", 2)])
    await pipe.ingest([message(5, "buyer", 4)])  # browsing on after the purchase
    await pipe.score_pending()
    assert scorer.batches[-1] == ["browser"]  # the buyer is not in the model's batch
    after = {r.session_id: r for r in rec.scores[len(before) :]}
    assert after["buyer"].purchased is True
    assert after["buyer"].score == 1.0
    assert after["buyer"].session_events == 4
    assert after["buyer"].model_version == scorer.model_version
    assert after["browser"].purchased is False
    assert after["browser"].score == pytest.approx(0.2)
    assert sorted(rec.acked) == [0, 1, 2, 3, 4, 5]
    assert b'"purchased":true' in after["buyer"].to_json()


async def test_purchased_sessions_are_published_even_when_the_model_is_down() -> None:
    rec = Recorder()
    pipe = make_pipeline(rec, scorer=CountingScorer(failures=5))
    await pipe.ingest([message(0, "buyer", 1, "purchase"), message(1, "browser", 1)])
    await pipe.score_pending()
    assert [(r.session_id, r.purchased, r.score) for r in rec.scores] == [("buyer", True, 1.0)]
    # The model failing on every input (the probe too) is an outage, not a bad session: the
    # browser waits in the queue, unacknowledged and not dead-lettered.
    assert rec.letters == []
    assert sorted(rec.acked) == [0]
    assert len(pipe.pending) == 1


def test_score_records_without_the_field_read_as_not_purchased() -> None:
    record = ScoreRecord("s", "u", 0.5, "v", 1, 1, "t", 1, 1, 1, 1)
    data = orjson.loads(record.to_json())
    del data["purchased"]
    assert ScoreRecord.from_json(orjson.dumps(data)).purchased is False


@pytest.mark.parametrize("key", ["0123456789abcdef", "another-long-secret-key"])
async def test_pseudonymisation_hides_ids_everywhere(key: str) -> None:
    rec = Recorder()
    settings = Settings(privacy={"pseudonymize_key": key})  # type: ignore[arg-type]
    pipe = Pipeline(
        settings=settings,
        store=InMemorySessionStore(WindowRules(), clock=lambda: NOW_MS),
        scorer=CountingScorer(),
        publish_scores=rec.publish_scores,
        publish_dead_letters=rec.publish_dead_letters,
        ack=rec.ack,
        clock=lambda: NOW_MS,
    )
    await pipe.ingest([message(0, "secret-session", 1)])
    await pipe.score_pending()
    record = rec.scores[0]
    assert "secret-session" not in record.to_json().decode()
    assert record.user_id.startswith("p-")
    assert key not in repr(settings)


def test_event_helper_is_valid() -> None:
    assert Event("e", 1, "view", "s").event_type == "view"
