"""The processing pipeline, independent of Faust: parse -> window -> coalesce -> score -> publish.

``app.py`` feeds it micro-batches of messages and supplies three callables (publish scores,
publish dead letters, acknowledge messages); unit tests feed it the same way with an
in-memory store and a real scorer, no broker needed.

Delivery: a message is acknowledged (so its offset may be committed) only after
* its event is durable in the session store AND a score covering it was acknowledged by the
  broker (a duplicate event, already in the window, waits for a fresh score of that window
  too: after a crash we cannot tell whether the first score got out), or
* its dead letter was acknowledged by the broker.
A crash before that re-delivers the message; re-applying it is a no-op (dedup by event id), so
windows are effectively-once and only a score message can be duplicated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson

from stream_app import metrics
from stream_app.batching import (
    PendingEntry,
    PendingScores,
    group_by_session,
    length_sorted_chunks,
    time_bounded_limit,
)
from stream_app.config import Settings
from stream_app.deadline import BatchPolicy, BatchShape, Waiting
from stream_app.dlq import dead_letter_record
from stream_app.errors import InvalidEvent, StoreUnavailable
from stream_app.events import Event, EventLimits, parse_event
from stream_app.privacy import Pseudonymizer
from stream_app.retry import Backoff
from stream_app.scores import ScoreRecord, iso_utc
from stream_app.store import SessionStore
from stream_app.windows import WindowSnapshot

log = logging.getLogger(__name__)

# Dead letters carry the whole rejected message (up to the 1 MiB hostile-input probe, cut with
# its size and sha256 beyond). Stay under the producer's default max request (1,000,000 B).
DLQ_MAX_RECORD_BYTES = 960_000
# Sessions per model call inside one scoring batch, grouped by window length (see
# ``batching.length_sorted_chunks``): small enough that short windows get their own short
# sequence bucket, large enough that CPU matmuls stay efficient.
SCORE_CHUNK = 16
# The pending queue holds at most about this many seconds of scoring work (measured), within
# [2 x max_score_batch, BATCH_MAX_PENDING_SESSIONS]; see ``batching.time_bounded_limit``.
PENDING_TARGET_S = 5.0
RATE_SMOOTHING = 0.2  # weight of the newest batch in the scoring-rate average


@dataclass(frozen=True, slots=True)
class InMessage:
    """One consumed Kafka record; ``handle`` is whatever the transport needs to ack it."""

    key: bytes | None
    value: bytes
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    handle: Any = None


class Scorer(Protocol):
    model_version: str

    def score(self, snapshots: Sequence[WindowSnapshot]) -> np.ndarray: ...


PublishScores = Callable[[Sequence[ScoreRecord]], Awaitable[None]]
PublishDeadLetters = Callable[[Sequence[tuple[bytes | None, bytes]]], Awaitable[None]]
Ack = Callable[[Sequence[InMessage]], Awaitable[None]]
Clock = Callable[[], int]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Health:
    store_up: bool = True
    last_store_error: str = ""
    last_score_at_ms: int = 0
    scored_batches: int = 0
    assigned_partitions: int = 0  # of the events topic, after the last rebalance
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Parsed:
    valid: list[tuple[Event, InMessage]]
    dead: list[tuple[InMessage, str, str]]


class Pipeline:
    def __init__(
        self,
        *,
        settings: Settings,
        store: SessionStore,
        scorer: Scorer,
        publish_scores: PublishScores,
        publish_dead_letters: PublishDeadLetters,
        ack: Ack,
        clock: Clock = wall_clock_ms,
        worker_id: str = "",
    ) -> None:
        self.settings = settings
        self.store = store
        self.scorer = scorer
        self._publish_scores = publish_scores
        self._publish_dead_letters = publish_dead_letters
        self._ack = ack
        self._clock = clock
        self.worker_id = worker_id
        self.limits = EventLimits.from_settings(settings.window, settings.kafka.max_message_bytes)
        privacy = settings.privacy
        self._pseudonymizer = (
            Pseudonymizer(privacy.pseudonymize_key.get_secret_value()) if privacy.enabled else None
        )
        batch = settings.batch
        self.pending: PendingScores[InMessage] = PendingScores(
            max_sessions=batch.max_pending_sessions,
            max_tokens=batch.max_pending_sessions * 8,
        )
        self._changed = asyncio.Condition()
        self._store_backoff = Backoff(settings.redis.backoff_base_s, settings.redis.backoff_cap_s)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
        self.health = Health()
        self.scoring_rate_per_s: float | None = None  # sessions/s, smoothed over batches
        self.batch_policy = BatchPolicy(settings.score.latency_budget_ms, batch.max_score_batch)

    # ---------------------------------------------------------------- ingest stage
    async def ingest(self, messages: Sequence[InMessage]) -> None:
        """Apply one consumed micro-batch to the session windows and queue the sessions."""
        metrics.INGEST_BATCH_SIZE.observe(len(messages))
        parsed = self._parse(messages)
        letters = [self._letter(m, reason, detail) for m, reason, detail in parsed.dead]
        by_session = group_by_session(event for event, _ in parsed.valid)
        outcomes = await self._apply_with_retry(by_session) if by_session else {}
        messages_by_event = {id(event): message for event, message in parsed.valid}
        settled: list[InMessage] = [m for m, _, _ in parsed.dead]
        entries = []
        for session_id, outcome in outcomes.items():
            rejected = [(messages_by_event[id(e)], e, why) for e, why in outcome.rejected]
            letters.extend(self._letter(m, why, _rejected_detail(e, why)) for m, e, why in rejected)
            settled.extend(m for m, _, _ in rejected)
            # Duplicates are re-deliveries (e.g. after a crash between the window update and
            # its score): the window ignores them, but they still wait for a score of it.
            waiting = [messages_by_event[id(e)] for e in (*outcome.accepted, *outcome.duplicates)]
            if waiting:
                entries.append((session_id, _entry(outcome.snapshot, waiting)))
        _count_outcomes(outcomes.values())
        if letters:
            await self._publish_dead_letters(letters)
        await self._queue(entries)
        if settled:
            await self._ack(settled)

    def _parse(self, messages: Sequence[InMessage]) -> _Parsed:
        now_ms = self._clock()
        parsed = _Parsed(valid=[], dead=[])
        for message in messages:
            try:
                event = parse_event(message.value, limits=self.limits, now_ms=now_ms)
            except InvalidEvent as exc:
                metrics.EVENTS_IN.labels("invalid").inc()
                parsed.dead.append((message, exc.reason, exc.detail))
                continue
            if self._pseudonymizer is not None:
                event = self._pseudonymizer.apply(event)
            parsed.valid.append((event, message))
        return parsed

    def _letter(self, message: InMessage, reason: str, detail: str) -> tuple[bytes | None, bytes]:
        metrics.DLQ.labels(reason.split(":", 1)[0]).inc()
        record = dead_letter_record(
            raw=message.value,
            reason=reason,
            detail=detail,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            failed_at_ms=self._clock(),
            max_record_bytes=DLQ_MAX_RECORD_BYTES,
        )
        return message.key, record

    async def _apply_with_retry(self, by_session: dict[str, list[Event]]) -> dict[str, Any]:
        """Retry store outages forever with bounded, jittered backoff.

        Giving up would mean dropping or dead-lettering valid events; instead consumption
        stalls (nothing is acked, so nothing is committed) and resumes when Redis is back.
        """
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                outcomes = await self.store.apply(by_session)
            except StoreUnavailable as exc:
                self._mark_store_down(exc)
                await asyncio.sleep(self._store_backoff.delay(attempt))
                attempt += 1
                continue
            metrics.REDIS_SECONDS.observe(time.perf_counter() - started)
            if not self.health.store_up:
                log.info("session store is back after %d retries", attempt)
            self.health.store_up = True
            metrics.STORE_UP.set(1)
            return dict(outcomes)

    def _mark_store_down(self, exc: Exception) -> None:
        if self.health.store_up:
            log.warning("session store unavailable, retrying with backoff: %s", exc)
        self.health.store_up = False
        self.health.last_store_error = str(exc)
        metrics.STORE_UP.set(0)
        metrics.STORE_RETRIES.inc()

    async def _queue(self, entries: list[tuple[str, PendingEntry[InMessage]]]) -> None:
        """Hand sessions to the scorer, waiting for room (backpressure) when it is behind."""
        if not entries:
            return
        tokens = sum(len(entry.tokens) for _, entry in entries)
        async with self._changed:
            await self._changed.wait_for(lambda: self.pending.has_room(len(entries), tokens))
            now_ms, new = self._clock(), 0
            for session_id, entry in entries:
                entry.queued_ms = now_ms
                if self.pending.offer(session_id, entry):
                    metrics.COALESCED.inc()
                else:
                    new += 1
            self.batch_policy.arrived(now_ms, new)
            self._update_pending_gauges()
            self._changed.notify_all()

    def _update_pending_gauges(self) -> None:
        metrics.PENDING_SESSIONS.set(len(self.pending))
        metrics.PENDING_MESSAGES.set(self.pending.pending_tokens)

    # ---------------------------------------------------------------- scoring stage
    async def run_scoring(self) -> None:
        """Score pending sessions forever, in batches sized by the deadline policy."""
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.pending) > 0)
                size = self._batch_size()
            await self.score_pending(size)

    def _batch_size(self) -> int:
        """How many pending sessions the next model call takes (``stream_app.deadline``)."""
        head = self.pending.peek(self.settings.batch.max_score_batch)
        waiting = [Waiting(_arrived_ms(entry), len(entry.snapshot.events)) for entry in head]
        decision = self.batch_policy.decide(self._clock(), waiting, len(self.pending))
        if decision.size:
            metrics.SCORE_RELEASES.labels(decision.reason).inc()
        return decision.size

    async def score_pending(self, limit: int | None = None) -> int:
        """Score up to ``limit`` (default ``max_score_batch``) pending sessions; returns how
        many were scored. The batch's time, publishing included, teaches the policy."""
        async with self._changed:
            taken = self.pending.take(limit or self.settings.batch.max_score_batch)
            self._update_pending_gauges()
            self._changed.notify_all()
        if not taken:
            return 0
        # Sessions that already bought are not the model's question (it is trained on the
        # prefixes before the first purchase): they get score 1.0 and no model call.
        bought = [item for item in taken if has_purchased(item[1].snapshot)]
        to_score = [item for item in taken if not has_purchased(item[1].snapshot)]
        started = time.perf_counter()
        shape = None
        probabilities: np.ndarray | None = np.empty(0)
        if to_score:
            shape = BatchShape(len(to_score), max(len(e.snapshot.events) for _, e in to_score))
            metrics.SCORE_BATCH_PADDED_LEN.observe(shape.padded_len)
            probabilities = await self._infer_with_retry([e.snapshot for _, e in to_score])
            if probabilities is None:
                await self._dead_letter_sessions(to_score)
                to_score, probabilities, shape = [], np.empty(0), None
        if bought or to_score:
            certain = np.ones(len(bought))
            await self._publish(bought + to_score, np.concatenate([certain, probabilities]))
        if shape is not None:  # the cost model learns from batches the model actually ran
            self.batch_policy.observe(shape, (time.perf_counter() - started) * 1000)
        await self._ack([m for _, entry in taken for m in entry.tokens])
        return len(taken)

    async def _infer_with_retry(self, snapshots: list[WindowSnapshot]) -> np.ndarray | None:
        loop = asyncio.get_running_loop()
        timeout = self.settings.model.inference_timeout_s
        for attempt in range(self.settings.model.retries + 1):
            started = time.perf_counter()
            try:
                future = loop.run_in_executor(self._executor, self._score_by_length, snapshots)
                result = await asyncio.wait_for(future, timeout)
            except Exception as exc:  # any backend failure: retry, then dead-letter
                metrics.SCORING_FAILURES.inc()
                log.warning("inference failed (attempt %d): %r", attempt + 1, exc)
                self.health.extra["last_scoring_error"] = repr(exc)
                continue
            elapsed = time.perf_counter() - started
            metrics.INFERENCE_SECONDS.observe(elapsed)
            self._observe_scoring_rate(len(snapshots), elapsed)
            metrics.SCORE_BATCH_SIZE.observe(len(snapshots))
            return np.asarray(result, dtype=np.float64)
        return None

    def _observe_scoring_rate(self, sessions: int, seconds: float) -> None:
        """Track sessions/s and re-bound the pending queue to ``PENDING_TARGET_S`` of work."""
        rate = sessions / max(seconds, 1e-6)
        previous = self.scoring_rate_per_s
        self.scoring_rate_per_s = (
            rate if previous is None else ((1 - RATE_SMOOTHING) * previous + RATE_SMOOTHING * rate)
        )
        batch = self.settings.batch
        self.pending.max_sessions = time_bounded_limit(
            self.scoring_rate_per_s,
            PENDING_TARGET_S,
            floor=2 * batch.max_score_batch,
            cap=batch.max_pending_sessions,
        )

    def _score_by_length(self, snapshots: list[WindowSnapshot]) -> np.ndarray:
        """Score in chunks of similar window length (runs in the scorer thread)."""
        lengths = [len(snapshot.events) for snapshot in snapshots]
        probabilities = np.empty(len(snapshots), dtype=np.float64)
        for chunk in length_sorted_chunks(lengths, SCORE_CHUNK):
            probabilities[chunk] = self.scorer.score([snapshots[i] for i in chunk])
        return probabilities

    async def _publish(
        self, taken: list[tuple[str, PendingEntry[InMessage]]], probabilities: np.ndarray
    ) -> None:
        now_ms = self._clock()
        records = [
            self._record(session_id, entry, float(p), now_ms)
            for (session_id, entry), p in zip(taken, probabilities, strict=True)
        ]
        await self._publish_scores(records)
        acked_ms = self._clock()
        for _, entry in taken:
            metrics.E2E_LATENCY_SECONDS.observe(max(0, acked_ms - entry.oldest_ingest_ms) / 1000)
        metrics.SCORES_OUT.inc(len(records))
        self.health.last_score_at_ms = acked_ms
        self.health.scored_batches += 1

    def _record(
        self, session_id: str, entry: PendingEntry[InMessage], score: float, now_ms: int
    ) -> ScoreRecord:
        snapshot = entry.snapshot
        last_ms = snapshot.events[-1].event_time_ms if snapshot.events else 0
        return ScoreRecord(
            session_id=session_id,
            user_id=snapshot.user_id,
            score=round(min(1.0, max(0.0, score)), 6),
            model_version=self.scorer.model_version,
            window_events=len(snapshot.events),
            session_events=snapshot.aggregates.n_events,
            last_event_time=iso_utc(last_ms),
            last_event_time_ms=last_ms,
            scored_at=now_ms,
            ingest_ms=entry.newest_ingest_ms,
            oldest_ingest_ms=entry.oldest_ingest_ms,
            worker=self.worker_id,
            purchased=has_purchased(snapshot),
        )

    async def _dead_letter_sessions(self, taken: list[tuple[str, PendingEntry[InMessage]]]) -> None:
        """Inference kept failing: record each session (and the events it waited on)."""
        letters = []
        for session_id, entry in taken:
            newest = entry.tokens[-1]
            summary = {
                "session_id": session_id,
                "window_events": [e.event_id for e in entry.snapshot.events],
                "detail": self.health.extra.get("last_scoring_error", ""),
            }
            message = InMessage(
                key=session_id.encode(),
                value=orjson.dumps(summary),
                topic=newest.topic,
                partition=newest.partition,
                offset=newest.offset,
                timestamp_ms=newest.timestamp_ms,
            )
            letters.append(self._letter(message, "scoring_failed", summary["detail"]))
        await self._publish_dead_letters(letters)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def has_purchased(snapshot: WindowSnapshot) -> bool:
    """The session has accepted a purchase (any, even one trimmed from the kept window)."""
    return snapshot.aggregates.count("purchase") > 0


def _entry(snapshot: WindowSnapshot, waiting: list[InMessage]) -> PendingEntry[InMessage]:
    stamps = [m.timestamp_ms for m in waiting]
    return PendingEntry(
        snapshot=snapshot,
        tokens=waiting,
        oldest_ingest_ms=min(stamps),
        newest_ingest_ms=max(stamps),
    )


def _arrived_ms(entry: PendingEntry[InMessage]) -> int:
    """When the entry's oldest event arrived: its Kafka timestamp, or when it was queued if
    that is earlier (a producer clock ahead of ours must not stretch the wait)."""
    if entry.queued_ms:
        return min(entry.oldest_ingest_ms, entry.queued_ms)
    return entry.oldest_ingest_ms


def _count_outcomes(outcomes: Iterable[Any]) -> None:
    """Count a whole batch's outcomes at once (a labelled counter costs a lookup per call)."""
    late = overflow = duplicate = valid = 0
    for outcome in outcomes:
        late += len(outcome.late)
        overflow += len(outcome.overflow)
        duplicate += len(outcome.duplicates)
        valid += len(outcome.accepted)
    for result, count in (("late", late), ("overflow", overflow), ("duplicate", duplicate)):
        if count:
            metrics.EVENTS_IN.labels(result).inc(count)
    metrics.EVENTS_IN.labels("valid").inc(valid)


def _rejected_detail(event: Event, reason: str) -> str:
    return f"event_id={event.event_id} event_time_ms={event.event_time_ms} ({reason})"
