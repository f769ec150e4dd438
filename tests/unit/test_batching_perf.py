"""Scoring-side batching: length-sorted chunks and the time bound on the pending queue."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_app.core import metrics
from stream_app.core.config import BatchSettings, ScoreSettings, Settings
from stream_app.serving.batching import length_sorted_chunks, time_bounded_limit
from stream_app.serving.pipeline import PENDING_TARGET_S, InMessage, Pipeline, wall_clock_ms
from stream_app.sessions.store import InMemorySessionStore
from stream_app.sessions.windows import WindowRules, WindowSnapshot

NOW_MS = 1_700_000_000_000


def test_a_batch_that_fits_one_chunk_keeps_its_order() -> None:
    assert length_sorted_chunks([5, 1, 3], chunk=4) == [[0, 1, 2]]
    assert length_sorted_chunks([], chunk=4) == []


def test_longer_batches_are_cut_shortest_first() -> None:
    lengths = [9, 1, 8, 2, 7, 1]
    chunks = length_sorted_chunks(lengths, chunk=2)
    assert [[lengths[i] for i in chunk] for chunk in chunks] == [[1, 1], [2, 7], [8, 9]]


def test_chunk_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        length_sorted_chunks([1], chunk=0)


@given(st.lists(st.integers(0, 60), max_size=200), st.integers(1, 40))
def test_every_index_exactly_once_and_chunks_bounded(lengths: list[int], chunk: int) -> None:
    chunks = length_sorted_chunks(lengths, chunk)
    flat = [i for c in chunks for i in c]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(1 <= len(c) <= chunk for c in chunks)
    if len(lengths) > chunk:  # sorted: no chunk holds a window longer than the next one's
        assert all(
            max(lengths[i] for i in a) <= min(lengths[i] for i in b) for a, b in pairwise(chunks)
        )


def test_pending_limit_is_about_target_seconds_of_scoring_work() -> None:
    assert time_bounded_limit(40.0, 5.0, floor=128, cap=20_000) == 200
    assert time_bounded_limit(10_000.0, 5.0, floor=128, cap=20_000) == 20_000  # capped
    assert time_bounded_limit(1.0, 5.0, floor=128, cap=20_000) == 128  # a full batch waits
    assert time_bounded_limit(1.0, 5.0, floor=128, cap=2) == 2  # the setting always wins


class SlowScorer:
    """A stand-in model that takes a known time per call (the rate the pipeline measures)."""

    model_version = "slow-1"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def score(self, snapshots: Sequence[WindowSnapshot]) -> np.ndarray:
        time.sleep(self.seconds)
        return np.full(len(snapshots), 0.5, dtype=np.float32)


async def _no_op(items: Sequence[object]) -> None:
    return None


def _message(offset: int) -> InMessage:
    session = f"s{offset}"
    value = orjson.dumps(
        {"event_time": NOW_MS - 60_000, "event_type": "view", "product_id": "p1",
         "user_session": session}
    )  # fmt: skip
    return InMessage(session.encode(), value, "user-events", 0, offset, NOW_MS)


async def test_the_pending_bound_follows_the_measured_scoring_rate() -> None:
    settings = Settings(batch=BatchSettings(max_score_batch=4, max_pending_sessions=20_000))
    pipe = Pipeline(
        settings=settings,
        store=InMemorySessionStore(WindowRules(), clock=lambda: NOW_MS),
        scorer=SlowScorer(0.1),  # 4 sessions per >= 0.1 s: <= 40 sessions/s
        publish_scores=_no_op,
        publish_dead_letters=_no_op,
        ack=_no_op,
        clock=lambda: NOW_MS,
    )
    assert pipe.pending.max_sessions == 20_000  # nothing measured yet: the setting
    await pipe.ingest([_message(i) for i in range(4)])
    assert await pipe.score_pending() == 4
    assert pipe.scoring_rate_per_s is not None
    assert pipe.scoring_rate_per_s <= 40
    assert 2 * 4 <= pipe.pending.max_sessions <= 40 * PENDING_TARGET_S
    pipe.close()


class PerSessionScorer:
    """A stand-in model whose time grows with the batch: ``seconds`` per session."""

    model_version = "per-session-1"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def score(self, snapshots: Sequence[WindowSnapshot]) -> np.ndarray:
        time.sleep(self.seconds * len(snapshots))
        return np.full(len(snapshots), 0.5, dtype=np.float32)


async def _batch_sizes(budget_ms: int, sessions: int) -> list[int]:
    """Queue ``sessions`` fresh sessions at once, run the scoring loop, return batch sizes."""
    sizes: list[int] = []
    all_scored = asyncio.Event()

    async def publish(records: Sequence[object]) -> None:
        sizes.append(len(records))
        if sum(sizes) >= sessions:
            all_scored.set()

    settings = Settings(
        batch=BatchSettings(max_score_batch=64), score=ScoreSettings(latency_budget_ms=budget_ms)
    )
    pipe = Pipeline(
        settings=settings,
        store=InMemorySessionStore(WindowRules(), clock=wall_clock_ms),
        scorer=PerSessionScorer(0.002),
        publish_scores=publish,
        publish_dead_letters=_no_op,
        ack=_no_op,
    )
    now = wall_clock_ms()
    await pipe.ingest([dataclasses.replace(_message(i), timestamp_ms=now) for i in range(sessions)])
    loop = asyncio.create_task(pipe.run_scoring())
    try:
        await asyncio.wait_for(all_scored.wait(), 20)
    finally:
        loop.cancel()
        pipe.close()
    return sizes


async def test_the_scoring_loop_sizes_batches_to_the_latency_budget() -> None:
    """12 fresh sessions, a 60 ms budget and (before anything is measured) the prior's 5 ms +
    10 ms per session: the first batch is cut to what fits (12 would take 125 ms; at 48 new
    sessions/s, a batch of one keeps up), all are scored, and the reason is counted."""
    before = metrics.SCORE_RELEASES.labels("deadline")._value.get()
    sizes = await _batch_sizes(60, 12)
    assert sum(sizes) == 12
    assert 1 <= sizes[0] <= 6
    assert metrics.SCORE_RELEASES.labels("deadline")._value.get() > before


async def test_a_zero_budget_scores_whatever_waits_at_once() -> None:
    assert await _batch_sizes(0, 12) == [12]
