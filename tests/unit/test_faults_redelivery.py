"""A crash between the window update and its score: the re-delivered events are duplicates
for the window, yet they must still lead to a score of it before their offsets commit."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson

from stream_app.core.config import Settings
from stream_app.scoring.scores import ScoreRecord
from stream_app.serving.pipeline import InMessage, Pipeline
from stream_app.sessions.store import InMemorySessionStore
from stream_app.sessions.windows import WindowRules, WindowSnapshot

NOW_MS = 1_700_000_000_000


class LengthScorer:
    model_version = "test"

    def score(self, snapshots: Sequence[WindowSnapshot]) -> np.ndarray:
        return np.array([len(s.events) / 100 for s in snapshots], dtype=np.float32)


class Sinks:
    def __init__(self) -> None:
        self.scores: list[ScoreRecord] = []
        self.acked: list[int] = []

    async def scores_out(self, records: Sequence[ScoreRecord]) -> None:
        self.scores.extend(records)

    async def letters_out(self, letters: Sequence[tuple[bytes | None, bytes]]) -> None:
        raise AssertionError("nothing here is a dead letter")

    async def ack(self, messages: Sequence[InMessage]) -> None:
        self.acked.extend(m.offset for m in messages)


def _worker(store: InMemorySessionStore, sinks: Sinks) -> Pipeline:
    return Pipeline(settings=Settings(), store=store, scorer=LengthScorer(),
                    publish_scores=sinks.scores_out, publish_dead_letters=sinks.letters_out,
                    ack=sinks.ack, clock=lambda: NOW_MS)  # fmt: skip


def _event(offset: int) -> InMessage:
    body = {"event_time": NOW_MS - 60_000 + offset * 1000, "event_type": "view",
            "product_id": f"p{offset}", "user_session": "s1"}  # fmt: skip
    return InMessage(b"s1", orjson.dumps(body), "user-events", 0, offset, NOW_MS)


async def test_redelivered_duplicates_are_scored_before_they_are_acked() -> None:
    store = InMemorySessionStore(WindowRules(), clock=lambda: NOW_MS)  # survives the crash
    batch = [_event(0), _event(1)]
    crashed = Sinks()
    await _worker(store, crashed).ingest(batch)  # windows updated, then killed: no score
    assert crashed.acked == []
    assert crashed.scores == []

    restarted = Sinks()
    worker = _worker(store, restarted)
    await worker.ingest(batch)  # the same offsets again: duplicates for the window
    assert restarted.acked == [], "acked without a score: a crash here would lose the score"
    assert await worker.score_pending() == 1
    assert [r.session_events for r in restarted.scores] == [2]
    assert sorted(restarted.acked) == [0, 1]
    snapshot = await store.get("s1")
    assert snapshot is not None
    assert snapshot.aggregates.n_events == 2  # applied once, not twice
