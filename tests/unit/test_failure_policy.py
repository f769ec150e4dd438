"""Issue 8 failure policy without servers: what each stage does when something breaks.

Real pipeline, real in-memory store, scorers that misbehave in one precise way (a NaN for one
session, an exception when one session is in the batch, a call that hangs, a model that
fails everything), and recording sinks for scores, dead letters and acks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest
from redis import exceptions as redis_errors

from stream_app.core.config import BatchSettings, ModelSettings, ScoreSettings, Settings
from stream_app.core.errors import (
    ModelUnavailable,
    ScoringTimeout,
    SessionStoreError,
    StoreRefused,
    StoreUnavailable,
)
from stream_app.ingest.dlq import MAX_KEY_BYTES, dead_letter_key
from stream_app.serving.batching import PendingEntry, PendingScores
from stream_app.serving.breaker import CircuitBreaker
from stream_app.serving.inference import TimedRunner
from stream_app.serving.lifecycle import EXIT_FATAL, EXIT_SHUTDOWN_TIMEOUT, Lifecycle
from stream_app.serving.pipeline import DLQ_MAX_RECORD_BYTES, InMessage, Pipeline, is_stale
from stream_app.serving.preflight import eviction_warning
from stream_app.sessions.store import InMemorySessionStore, classify_redis_error
from stream_app.sessions.windows import WindowRules, WindowSnapshot
from tests.unit.test_pipeline import NOW_MS, Recorder, message

# ------------------------------------------------------------------------------- scorers


class SessionScorer:
    """Scores like a model, except for the sessions named in ``nan`` (NaN output) and
    ``poison`` (the whole call raises when one of them is in the batch)."""

    model_version = "test-1"

    def __init__(self, nan: Sequence[str] = (), poison: Sequence[str] = ()) -> None:
        self.nan, self.poison = set(nan), set(poison)
        self.calls: list[list[str]] = []
        self.down = False

    def score(self, snapshots: Sequence[WindowSnapshot]) -> np.ndarray:
        ids = [s.session_id for s in snapshots]
        self.calls.append(ids)
        if self.down:
            raise RuntimeError("CUDA error: device lost")
        if self.poison & set(ids):
            raise RuntimeError("Got invalid dimensions for input: input_ids")
        return np.array([np.nan if i in self.nan else 0.25 for i in ids], dtype=np.float32)


class HangingScorer(SessionScorer):
    """The first call blocks until released (a stuck backend); later calls answer."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.first = True

    def score(self, snapshots: Sequence[WindowSnapshot]) -> np.ndarray:
        if self.first:
            self.first = False
            self.release.wait(30)
        return super().score(snapshots)


def pipeline(rec: Recorder, scorer: object, **model: object) -> Pipeline:
    settings = Settings(
        batch=BatchSettings(max_score_batch=64),
        model=ModelSettings(**{"retries": 1, "inference_timeout_s": 5, **model}),  # type: ignore[arg-type]
    )
    return Pipeline(
        settings=settings,
        store=InMemorySessionStore(WindowRules(), clock=lambda: NOW_MS),
        scorer=scorer,  # type: ignore[arg-type]
        publish_scores=rec.publish_scores,
        publish_dead_letters=rec.publish_dead_letters,
        ack=rec.ack,
        clock=lambda: NOW_MS,
    )


def sessions(*names: str) -> list[InMessage]:
    return [message(i, name, 1) for i, name in enumerate(names)]


# ------------------------------------------------------------------ 4. non-finite output


async def test_a_nan_score_is_a_failure_of_that_session_never_a_published_zero() -> None:
    rec = Recorder()
    pipe = pipeline(rec, SessionScorer(nan=["b"]))
    await pipe.ingest(sessions("a", "b", "c"))
    await pipe.score_pending()
    assert sorted(r.session_id for r in rec.scores) == ["a", "c"]
    assert [(x["reason"], x["key"]) for x in rec.letters] == [("scoring_failed", b"b")]
    assert "non-finite" in rec.letters[0]["detail"]
    assert sorted(rec.acked) == [0, 1, 2]


async def test_a_model_that_only_gives_nan_is_down_not_every_session_bad() -> None:
    rec = Recorder()
    scorer = SessionScorer(nan=["a", "b", "__intent_stream_canary__"])
    pipe = pipeline(rec, scorer)
    await pipe.ingest(sessions("a", "b"))
    await pipe.score_pending()
    assert rec.scores == []
    assert rec.letters == []
    assert rec.acked == []
    assert len(pipe.pending) == 2


# ------------------------------------------------------------------ 3. one bad session


async def test_a_batch_that_raises_is_bisected_and_only_the_bad_session_dead_lettered() -> None:
    rec = Recorder()
    scorer = SessionScorer(poison=["s5"])
    pipe = pipeline(rec, scorer)
    names = [f"s{i}" for i in range(8)]
    await pipe.ingest(sessions(*names))
    await pipe.score_pending()
    assert sorted(r.session_id for r in rec.scores) == sorted(set(names) - {"s5"})
    assert [x["key"] for x in rec.letters] == [b"s5"]
    assert "invalid dimensions" in rec.letters[0]["detail"]
    assert sorted(rec.acked) == list(range(8))


# ------------------------------------------------------- 2. model down: circuit breaker


async def test_model_down_opens_the_breaker_pauses_ingest_and_dead_letters_nothing() -> None:
    rec = Recorder()
    scorer = SessionScorer()
    scorer.down = True
    pipe = pipeline(rec, scorer, breaker_failures=2, breaker_cooldown_s=0.2)
    await pipe.ingest(sessions("a", "b"))
    for _ in range(2):
        await pipe.score_pending()
    assert not pipe.breaker.closed
    assert rec.letters == []
    assert rec.acked == []
    assert len(pipe.pending) == 2
    blocked = asyncio.create_task(pipe.ingest([message(9, "c", 1)]))
    await asyncio.sleep(0.1)
    assert not blocked.done(), "ingest must stop while the breaker is open"
    scorer.down = False
    scoring = asyncio.create_task(pipe.run_scoring())
    try:
        await asyncio.wait_for(blocked, 5)
        await asyncio.sleep(0.5)  # the scoring loop drains what ingest queued
    finally:
        scoring.cancel()
    assert pipe.breaker.closed
    assert sorted(r.session_id for r in rec.scores) >= ["a", "b"]
    assert sorted(rec.acked) == [0, 1, 9]
    assert rec.letters == []


def test_breaker_opens_after_threshold_probes_after_cooldown_and_backs_off() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown_s=1.0, clock=lambda: now[0])
    assert breaker.allow()
    assert not breaker.record_failure()
    assert breaker.record_failure()
    assert not breaker.allow()
    now[0] = 1.0
    assert breaker.allow()
    assert breaker.state == "half_open"
    assert breaker.record_failure()  # a failed probe re-opens, cooldown doubled
    now[0] = 2.5
    assert not breaker.allow()
    now[0] = 3.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.closed
    assert breaker.failures == 0


async def test_a_hung_model_call_is_abandoned_and_the_next_call_runs_at_once() -> None:
    scorer = HangingScorer()
    runner = TimedRunner(scorer.score, timeout_s=0.3)
    snapshot = WindowSnapshot("a", "", (), None)  # type: ignore[arg-type]
    with pytest.raises(ScoringTimeout):
        await runner.run([snapshot])
    started = time.monotonic()
    result = await runner.run([snapshot])  # a fresh thread: does not queue behind the hung one
    assert time.monotonic() - started < 0.3
    assert result.tolist() == [0.25]
    assert runner.abandoned_alive == 1
    scorer.release.set()


async def test_abandoned_threads_are_bounded() -> None:
    release = threading.Event()
    runner = TimedRunner(lambda s: (release.wait(30), np.zeros(1))[1], timeout_s=0.05,
                         max_abandoned=2)  # fmt: skip
    for _ in range(2):
        with pytest.raises(ScoringTimeout):
            await runner.run([])
    with pytest.raises(ModelUnavailable, match="abandoned"):
        await runner.run([])
    release.set()


async def test_a_hung_model_dead_letters_nothing() -> None:
    rec = Recorder()
    scorer = HangingScorer()
    pipe = pipeline(rec, scorer, inference_timeout_s=0.3)
    await pipe.ingest(sessions("a"))
    await pipe.score_pending()
    assert rec.letters == []
    assert rec.acked == []
    assert len(pipe.pending) == 1
    await pipe.score_pending()
    assert [r.session_id for r in rec.scores] == ["a"]
    scorer.release.set()


# ---------------------------------------------------------- 6. Redis error classification


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (redis_errors.ConnectionError("Connection refused"), StoreUnavailable),
        (redis_errors.TimeoutError("Timeout reading from socket"), StoreUnavailable),
        (redis_errors.BusyLoadingError("LOADING Redis is loading"), StoreUnavailable),
        (redis_errors.ResponseError("OOM command not allowed"), StoreUnavailable),
        (redis_errors.ReadOnlyError("READONLY You can't write"), StoreUnavailable),
        (redis_errors.NoPermissionError("NOPERM no permissions to run 'evalsha'"), StoreRefused),
        (redis_errors.AuthenticationError("WRONGPASS invalid"), StoreRefused),
        (redis_errors.ResponseError("WRONGTYPE Operation against a key"), SessionStoreError),
        (redis_errors.ResponseError("ERR user_script:12: bad argument"), SessionStoreError),
    ],
)
def test_redis_errors_are_sorted_into_outage_refusal_or_one_bad_session(
    error: Exception, kind: type
) -> None:
    assert isinstance(classify_redis_error(error, "apply"), kind)


def test_a_session_store_error_carries_a_reason_code() -> None:
    error = classify_redis_error(redis_errors.ResponseError("WRONGTYPE Operation"), "apply")
    assert isinstance(error, SessionStoreError)
    assert error.reason == "store_error:WRONGTYPE"


class WrongTypeStore(InMemorySessionStore):
    """The real in-memory store, except one session whose keys hold the wrong type."""

    async def apply(self, updates):  # type: ignore[no-untyped-def]
        good = {sid: ev for sid, ev in updates.items() if sid != "broken"}
        outcomes = await super().apply(good)
        if "broken" in updates:
            outcomes["broken"] = classify_redis_error(
                redis_errors.ResponseError("WRONGTYPE Operation against a key"), "script"
            )
        return outcomes


async def test_a_deterministic_store_error_dead_letters_that_session_only() -> None:
    rec = Recorder()
    pipe = pipeline(rec, SessionScorer())
    pipe.store = WrongTypeStore(WindowRules(), clock=lambda: NOW_MS)
    await pipe.ingest(sessions("ok", "broken"))
    await pipe.score_pending()
    assert [r.session_id for r in rec.scores] == ["ok"]
    assert [(x["reason"], x["key"]) for x in rec.letters] == [("store_error:WRONGTYPE", b"broken")]
    assert sorted(rec.acked) == [0, 1]


# ------------------------------------------------------------- 5. dead letters always fit


async def test_a_dead_letter_for_a_huge_key_fits_one_produce_request() -> None:
    rec = Recorder()
    keys: list[bytes | None] = []

    async def publish(letters: Sequence[tuple[bytes | None, bytes]]) -> None:
        keys.extend(k for k, _ in letters)
        await rec.publish_dead_letters(letters)

    pipe = pipeline(rec, SessionScorer())
    pipe._publish_dead_letters = publish
    poison = InMessage(b"k" * 950_000, b"x" * 100_000, "user-events", 0, 0, NOW_MS)
    await pipe.ingest([poison])
    assert rec.letters[0]["reason"] == "too_large"
    assert keys[0] is not None
    assert len(keys[0]) <= MAX_KEY_BYTES
    assert len(keys[0]) + DLQ_MAX_RECORD_BYTES < 1_000_000
    assert dead_letter_key(b"short") == b"short"
    assert dead_letter_key(None) is None


# -------------------------------------------------------------------- 9. bytes in queue


def test_the_pending_queue_is_bounded_in_bytes() -> None:
    queue: PendingScores[int] = PendingScores(max_sessions=100, max_tokens=100, max_bytes=1000)
    snapshot = WindowSnapshot("a", "", (), None)  # type: ignore[arg-type]
    queue.offer("a", PendingEntry(snapshot, [1], size_bytes=900))
    assert not queue.has_room(1, 1, 200)
    assert queue.has_room(1, 1, 100)
    queue.take(1)
    assert queue.pending_bytes == 0
    assert queue.has_room(1, 1, 5000)


async def test_ingest_waits_when_pending_bytes_exceed_the_bound() -> None:
    rec = Recorder()
    settings = Settings(batch=BatchSettings(max_pending_bytes=64 * 1024))
    pipe = Pipeline(settings=settings,
                    store=InMemorySessionStore(WindowRules(), clock=lambda: NOW_MS),
                    scorer=SessionScorer(), publish_scores=rec.publish_scores,  # type: ignore[arg-type]
                    publish_dead_letters=rec.publish_dead_letters, ack=rec.ack,
                    clock=lambda: NOW_MS)  # fmt: skip
    big = [message(i, f"s{i}", 1) for i in range(2)]
    big = [
        InMessage(m.key, m.value + b" " * 40_000, m.topic, 0, m.offset, m.timestamp_ms) for m in big
    ]  # fmt: skip  (valid JSON with trailing whitespace, 40 kB each)
    await pipe.ingest(big[:1])
    blocked = asyncio.create_task(pipe.ingest(big[1:]))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    await pipe.score_pending()
    await asyncio.wait_for(blocked, 1)


# ------------------------------------------------------------------------ 10. staleness


def test_staleness_rule() -> None:
    assert is_stale(NOW_MS - 3_601_000, NOW_MS, 3600)
    assert not is_stale(NOW_MS - 3_599_000, NOW_MS, 3600)
    assert not is_stale(0, NOW_MS, 0)  # 0 turns it off


async def test_backlog_updates_the_window_and_its_score_says_stale() -> None:
    rec = Recorder()
    pipe = pipeline(rec, SessionScorer())
    pipe.settings = pipe.settings.model_copy(update={"score": ScoreSettings(stale_after_s=600)})
    await pipe.ingest([message(0, "old", 1)])  # event time: an hour before NOW_MS
    await pipe.score_pending()
    assert rec.scores[0].stale is True
    assert (await pipe.store.get("old")) is not None
    pipe.settings = pipe.settings.model_copy(update={"score": ScoreSettings(stale_after_s=0)})
    await pipe.ingest([message(1, "fresh", 59)])
    await pipe.score_pending()
    assert rec.scores[1].stale is False


# ------------------------------------------------------------------ 1. bounded shutdown


def test_shutdown_watchdog_exits_when_the_stop_hangs() -> None:
    exited: list[int] = []
    life = Lifecycle(0.2, exit=exited.append, signal_self=lambda: None)
    life.begin_shutdown("SIGTERM")
    time.sleep(0.5)
    assert exited == [EXIT_SHUTDOWN_TIMEOUT]


def test_a_fatal_error_exits_non_zero() -> None:
    exited: list[int] = []
    signalled: list[bool] = []
    life = Lifecycle(0.2, exit=exited.append, signal_self=lambda: signalled.append(True))
    life.fatal("ingest stage failed: boom")
    assert signalled == [True]
    assert life.exit_code == EXIT_FATAL
    time.sleep(0.5)
    assert exited == [EXIT_FATAL]


def test_a_finished_stop_is_not_cut_short() -> None:
    exited: list[int] = []
    life = Lifecycle(0.3, exit=exited.append, signal_self=lambda: None)
    life.begin_shutdown("SIGTERM")
    life.finished()
    time.sleep(0.1)
    assert exited == []


# ------------------------------------------------------------------------ 11. eviction


def test_eviction_policy_warning() -> None:
    assert eviction_warning("noeviction") is None
    assert "volatile-ttl" in (eviction_warning("volatile-ttl") or "")
    assert "cannot read" in (eviction_warning(None) or "")


# ------------------------------------------------------------------------ 7. rebalance


async def test_revoke_drains_within_its_bound_and_nothing_from_before_is_published() -> None:
    rec = Recorder()
    scorer = HangingScorer()
    pipe = pipeline(rec, scorer, inference_timeout_s=10)
    await pipe.ingest(sessions("a"))
    scoring = asyncio.create_task(pipe.score_pending())  # stuck in the model
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await pipe.on_revoked([("user-events", 0)], drain_s=0.3)
    assert time.monotonic() - started < 1.0
    scorer.release.set()  # the model answers after the partition went away
    await asyncio.wait_for(scoring, 5)
    assert rec.scores == []
    assert rec.acked == []


async def test_revoke_lets_pending_scores_finish_when_there_is_time() -> None:
    rec = Recorder()
    pipe = pipeline(rec, SessionScorer())
    await pipe.ingest(sessions("a", "b"))
    scoring = asyncio.create_task(pipe.run_scoring())
    try:
        given_up = await pipe.on_revoked([("user-events", 0)], drain_s=5)
    finally:
        scoring.cancel()
    assert given_up == 0
    assert sorted(r.session_id for r in rec.scores) == ["a", "b"]
    assert sorted(rec.acked) == [0, 1]


async def test_nothing_is_published_once_shutdown_began() -> None:
    rec = Recorder()
    pipe = pipeline(rec, SessionScorer())
    await pipe.ingest(sessions("a"))
    life = Lifecycle(5, exit=lambda code: None, signal_self=lambda: None)
    life.on_shutdown.append(pipe.freeze)
    life.begin_shutdown("SIGTERM")
    await pipe.score_pending()
    assert rec.scores == []
    assert rec.acked == []
    life.finished()


class GatedScorer(SessionScorer):
    """``SessionScorer`` whose calls wait for ``gate`` (a slow model mid-rebalance)."""

    def __init__(self, nan: Sequence[str]) -> None:
        super().__init__(nan=nan)
        self.gate = threading.Event()

    def score(self, snapshots: Sequence[WindowSnapshot]) -> np.ndarray:
        self.gate.wait(30)
        return super().score(snapshots)


async def test_a_revoke_mid_batch_keeps_each_result_with_its_own_session() -> None:
    rec = Recorder()
    scorer = GatedScorer(nan=["b"])
    pipe = pipeline(rec, scorer)
    on = [message(0, "a", 1), message(1, "b", 1), message(2, "c", 1)]
    on = [InMessage(m.key, m.value, m.topic, 0 if i == 0 else 1, m.offset, m.timestamp_ms)
          for i, m in enumerate(on)]  # fmt: skip
    await pipe.ingest(on)
    scoring = asyncio.create_task(pipe.score_pending())
    await asyncio.sleep(0.05)
    await pipe.on_revoked([("user-events", 0)], drain_s=0.1)  # "a" was on partition 0
    scorer.gate.set()
    await asyncio.wait_for(scoring, 5)
    assert [r.session_id for r in rec.scores] == ["c"]
    assert [x["key"] for x in rec.letters] == [b"b"]
    assert sorted(rec.acked) == [1, 2]


async def test_an_open_breaker_with_nothing_queued_still_probes_and_ingest_resumes() -> None:
    rec = Recorder()
    scorer = SessionScorer()
    scorer.down = True
    pipe = pipeline(rec, scorer, breaker_failures=1, breaker_cooldown_s=0.1)
    await pipe.ingest(sessions("a"))
    await pipe.score_pending()
    assert not pipe.breaker.closed
    await pipe.on_revoked([("user-events", 0)], drain_s=0)  # the queued session goes away
    assert len(pipe.pending) == 0
    scorer.down = False
    scoring = asyncio.create_task(pipe.run_scoring())
    try:
        await asyncio.wait_for(pipe.ingest([message(5, "b", 1)]), 5)
    finally:
        scoring.cancel()
    assert pipe.breaker.closed
