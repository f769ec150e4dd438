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
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson

from stream_app.api.latest import LatestScores
from stream_app.core import metrics
from stream_app.core.config import Settings
from stream_app.core.errors import (
    InvalidEvent,
    ModelUnavailable,
    SessionStoreError,
    StoreUnavailable,
)
from stream_app.core.retry import Backoff
from stream_app.ingest.dlq import dead_letter_key, dead_letter_record
from stream_app.ingest.events import Event, EventLimits, parse_event
from stream_app.ingest.privacy import Pseudonymizer
from stream_app.scoring.scores import ScoreRecord, iso_utc
from stream_app.serving.batching import (
    PendingEntry,
    PendingScores,
    group_by_session,
    length_sorted_chunks,
    time_bounded_limit,
)
from stream_app.serving.breaker import CircuitBreaker
from stream_app.serving.deadline import BatchPolicy, BatchShape, Waiting
from stream_app.serving.inference import BatchResult, Inference
from stream_app.sessions.store import SessionStore
from stream_app.sessions.windows import WindowSnapshot
from stream_app.triggers.facts import window_facts

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
# Per held message beyond its bytes: the Faust event, message and our InMessage (measured
# order of magnitude with sys.getsizeof; the byte bound is about payloads, not exact RSS).
MESSAGE_OVERHEAD_BYTES = 1024


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
        latest: LatestScores | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.scorer = scorer
        self._publish_scores = publish_scores
        self._publish_dead_letters = publish_dead_letters
        self._ack = ack
        self._clock = clock
        self.worker_id = worker_id
        self._latest = latest  # the read API's latest scores (None: not written)
        self.limits = EventLimits.from_settings(settings.window, settings.kafka.max_message_bytes)
        privacy = settings.privacy
        self._pseudonymizer = (
            Pseudonymizer(privacy.pseudonymize_key.get_secret_value()) if privacy.enabled else None
        )
        batch = settings.batch
        self.pending: PendingScores[InMessage] = PendingScores(
            max_sessions=batch.max_pending_sessions,
            max_tokens=batch.max_pending_sessions * 8,
            max_bytes=batch.max_pending_bytes,
        )
        self._changed = asyncio.Condition()
        self._store_backoff = Backoff(settings.redis.backoff_base_s, settings.redis.backoff_cap_s)
        model = settings.model
        self.inference = Inference(
            self._score_by_length, timeout_s=model.inference_timeout_s, retries=model.retries
        )
        self.breaker = CircuitBreaker(model.breaker_failures, model.breaker_cooldown_s)
        self.in_flight = 0  # sessions in the model call now
        self._publishing = asyncio.Lock()  # held from the ownership check to the broker ack
        self._revocations: list[set[tuple[str, int]]] = []  # one per rebalance, in order
        self._frozen = False  # shutting down: nothing more is published or queued
        self.health = Health()
        self.scoring_rate_per_s: float | None = None  # sessions/s, smoothed over batches
        self.batch_policy = BatchPolicy(settings.score.latency_budget_ms, batch.max_score_batch)

    # ---------------------------------------------------------------- ingest stage
    async def ingest(self, messages: Sequence[InMessage]) -> None:
        """Apply one consumed micro-batch to the session windows and queue the sessions."""
        metrics.INGEST_BATCH_SIZE.observe(len(messages))
        generation = len(self._revocations)
        parsed = self._parse(messages)
        letters = [self._letter(m, reason, detail) for m, reason, detail in parsed.dead]
        by_session = group_by_session(event for event, _ in parsed.valid)
        outcomes = await self._apply_with_retry(by_session) if by_session else {}
        messages_by_event = {id(event): message for event, message in parsed.valid}
        settled: list[InMessage] = [m for m, _, _ in parsed.dead]
        for session_id, error in _store_errors(outcomes).items():
            # Deterministic for this session's keys: dead-letter its events, keep the rest.
            log.warning("session store rejected a session: %s", error)
            for event in by_session[session_id]:
                letters.append(self._letter(messages_by_event[id(event)], error.reason,
                                            error.detail))  # fmt: skip
                settled.append(messages_by_event[id(event)])
            del outcomes[session_id]
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
        await self._queue(entries, generation)
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
        return dead_letter_key(message.key), record

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

    async def _queue(
        self, entries: list[tuple[str, PendingEntry[InMessage]]], generation: int
    ) -> None:
        """Hand sessions to the scorer, waiting for room (backpressure) when it is behind.

        Messages of partitions revoked since ``generation`` (the batch was consumed before a
        rebalance) are left out: their next owner consumes them again."""
        if not entries:
            return
        tokens = sum(len(entry.tokens) for _, entry in entries)
        size = sum(entry.size_bytes for _, entry in entries)

        def ready() -> bool:  # room in the queue, and a model that works
            return self.breaker.closed and self.pending.has_room(len(entries), tokens, size)

        async with self._changed:
            await self._changed.wait_for(ready)
            entries = self._owned(entries, generation)
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
        metrics.PENDING_BYTES.set(self.pending.pending_bytes)

    # ---------------------------------------------------------------- partition ownership
    async def on_revoked(self, partitions: Iterable[tuple[str, int]], drain_s: float) -> int:
        """Rebalance: let pending work of these partitions finish for at most ``drain_s``,
        then give the rest up (it is consumed again by the next owner) and make sure nothing
        more is published for them. Returns how many messages were given up.

        After this returns no score for these partitions leaves this process: the ownership
        check and the publish happen under ``_publishing``, which this waits for, so the next
        owner's scores (made from the same Redis windows, later) always come after ours.
        """
        revoked = set(partitions)

        def drained() -> bool:
            return self.in_flight == 0 and not any(
                _partition_of(m) in revoked for _, e in self.pending.items() for m in e.tokens
            )

        with contextlib.suppress(TimeoutError):
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(drained), drain_s)
        async with self._publishing, self._changed:
            self._revocations.append(revoked)
            given_up = self.pending.drop(lambda m: _partition_of(m) not in revoked)
            self._update_pending_gauges()
            self._changed.notify_all()
        if given_up:
            log.info("rebalance: gave up %d pending messages of %d revoked partitions after "
                     "%.1f s (their next owner consumes them again)", len(given_up),
                     len(revoked), drain_s)  # fmt: skip
        return len(given_up)

    def freeze(self) -> None:
        """Shutdown began: publish nothing more (the consumer is about to leave the group,
        and a score published after that could land behind the next owner's)."""
        self._frozen = True

    def _owned(
        self, taken: list[tuple[str, PendingEntry[InMessage]]], generation: int
    ) -> list[tuple[str, PendingEntry[InMessage]]]:
        """``taken`` without messages of partitions revoked since ``generation`` (a count of
        rebalances), and without sessions left with none: work from before a revoke never
        leaves this process, even if the partition came back meanwhile."""
        if self._frozen:
            return []
        revoked: set[tuple[str, int]] = set().union(*self._revocations[generation:])
        if not revoked:
            return taken
        kept = []
        for session_id, entry in taken:
            entry.tokens = [m for m in entry.tokens if _partition_of(m) not in revoked]
            if entry.tokens:
                kept.append((session_id, entry))
        return kept

    # ---------------------------------------------------------------- scoring stage
    async def run_scoring(self) -> None:
        """Score pending sessions forever, in batches sized by the deadline policy."""
        while True:
            async with self._changed:
                await self._changed.wait_for(
                    lambda: len(self.pending) > 0 or not self.breaker.closed
                )
                size = self._batch_size() if self.breaker.closed else 0
            if not self.breaker.allow():  # model down: wait for the next probe
                await asyncio.sleep(max(0.01, self.breaker.wait_s()))
                continue
            if len(self.pending) > 0:
                await self.score_pending(size or None)
            else:  # breaker half-open and nothing queued (a revoke took it): probe alone
                await self._probe_model()

    def _batch_size(self) -> int:
        """How many pending sessions the next model call takes (``stream_app.serving.deadline``)."""
        head = self.pending.peek(self.settings.batch.max_score_batch)
        waiting = [Waiting(_arrived_ms(entry), len(entry.snapshot.events)) for entry in head]
        decision = self.batch_policy.decide(self._clock(), waiting, len(self.pending))
        if decision.size:
            metrics.SCORE_RELEASES.labels(decision.reason).inc()
        return decision.size

    async def _probe_model(self) -> None:
        try:
            await self.inference.probe()
        except ModelUnavailable as exc:
            await self._model_down([], exc, len(self._revocations))
            return
        await self._model_up()

    async def score_pending(self, limit: int | None = None) -> int:
        """Score up to ``limit`` (default ``max_score_batch``) pending sessions; returns how
        many were settled (scored or dead-lettered). While the model is down
        (``ModelUnavailable``) its batch goes back to the front of the queue and nothing of
        it is acknowledged."""
        async with self._changed:
            generation = len(self._revocations)
            taken = self.pending.take(limit or self.settings.batch.max_score_batch)
            self._update_pending_gauges()
            self._changed.notify_all()
        if not taken:
            return 0
        self.in_flight = len(taken)
        try:
            # Sessions that already bought are not the model's question (it is trained on
            # the prefixes before the first purchase): score 1.0 and no model call.
            bought = [item for item in taken if has_purchased(item[1].snapshot)]
            to_score = [item for item in taken if not has_purchased(item[1].snapshot)]
            settled = await self._settle_bought(bought, generation) if bought else 0
            if to_score:
                settled += await self._score_with_model(to_score, generation)
        finally:
            async with self._changed:
                self.in_flight = 0
                self._changed.notify_all()
        return settled

    async def _settle_bought(
        self, taken: list[tuple[str, PendingEntry[InMessage]]], generation: int
    ) -> int:
        async with self._publishing:
            owned = self._owned(taken, generation)
            if owned:
                await self._publish(owned, np.ones(len(owned)))
                await self._ack([m for _, entry in owned for m in entry.tokens])
        return len(owned)

    async def _score_with_model(
        self, taken: list[tuple[str, PendingEntry[InMessage]]], generation: int
    ) -> int:
        """One model call for ``taken``; its time, publishing included, teaches the batch
        policy. Returns how many sessions were settled (0 while the model is down)."""
        started = time.perf_counter()
        shape = BatchShape(len(taken), max(len(entry.snapshot.events) for _, entry in taken))
        metrics.SCORE_BATCH_PADDED_LEN.observe(shape.padded_len)
        try:
            result = await self.inference.score([entry.snapshot for _, entry in taken])
        except ModelUnavailable as exc:
            await self._model_down(taken, exc, generation)
            return 0
        self._observe_success(len(taken), time.perf_counter() - started)
        await self._model_up()
        position = {id(entry): i for i, (_, entry) in enumerate(taken)}
        async with self._publishing:
            owned = self._owned(taken, generation)
            await self._settle_scored([(position[id(e)], (sid, e)) for sid, e in owned], result)
        self.batch_policy.observe(shape, (time.perf_counter() - started) * 1000)
        return len(owned)

    async def _settle_scored(
        self, taken: list[tuple[int, tuple[str, PendingEntry[InMessage]]]], result: BatchResult
    ) -> None:
        """Publish the scores, dead-letter the sessions that failed alone, then ack both.
        ``taken`` pairs each session with its position in ``result``."""
        scored = [(i, item) for i, item in taken if i not in result.failures]
        failed = [(item, result.failures[i]) for i, item in taken if i in result.failures]
        if scored:
            await self._publish([item for _, item in scored],
                                result.probabilities[[i for i, _ in scored]])  # fmt: skip
        if failed:
            await self._dead_letter_sessions(failed)
        await self._ack([m for _, (_, entry) in taken for m in entry.tokens])

    async def _model_down(
        self,
        taken: list[tuple[str, PendingEntry[InMessage]]],
        exc: ModelUnavailable,
        generation: int,
    ) -> None:
        """Keep the batch (never dead-letter healthy sessions), count a breaker failure."""
        self.health.extra["last_scoring_error"] = str(exc)
        if self.breaker.record_failure():
            metrics.BREAKER_OPEN.set(1)
            log.error("model circuit breaker open for %.1f s (consumption paused): %s",
                      self.breaker.wait_s(), exc)  # fmt: skip
        async with self._changed:
            self.pending.restore(self._owned(taken, generation))
            self._update_pending_gauges()
            self._changed.notify_all()

    async def _model_up(self) -> None:
        if self.breaker.closed:
            return
        self.breaker.record_success()
        metrics.BREAKER_OPEN.set(0)
        log.info("model circuit breaker closed: scoring and consumption resume")
        async with self._changed:
            self._changed.notify_all()

    def _observe_success(self, sessions: int, elapsed: float) -> None:
        metrics.INFERENCE_SECONDS.observe(elapsed)
        self._observe_scoring_rate(sessions, elapsed)
        metrics.SCORE_BATCH_SIZE.observe(sessions)

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
        await self._write_latest(records)
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
        if not math.isfinite(score):  # never reached: non-finite outputs are failures
            raise ValueError(f"refusing to publish a non-finite score for {session_id}")
        stale = is_stale(last_ms, now_ms, self.settings.score.stale_after_s)
        if stale:
            metrics.STALE_SCORES.inc()
        return ScoreRecord(
            session_id=session_id,
            user_id=snapshot.user_id,
            score=round(min(1.0, max(0.0, score)), 6),
            stale=stale,
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
            facts=window_facts(snapshot).to_dict(),
        )

    async def _write_latest(self, records: list[ScoreRecord]) -> None:
        """One pipelined write for the read API; a failure only delays what it serves."""
        if self._latest is None:
            return
        try:
            await self._latest.write(records)
        except StoreUnavailable as exc:
            log.warning("latest scores not written (the read API lags): %s", exc)

    async def _dead_letter_sessions(
        self, failed: list[tuple[tuple[str, PendingEntry[InMessage]], str]]
    ) -> None:
        """Sessions the model could not score while it scored others: record each (and the
        events it waited on) with its own reason."""
        letters = []
        for (session_id, entry), why in failed:
            newest = entry.tokens[-1]
            summary = {
                "session_id": session_id,
                "window_events": [e.event_id for e in entry.snapshot.events],
                "detail": why,
            }
            message = InMessage(
                key=session_id.encode(),
                value=orjson.dumps(summary),
                topic=newest.topic,
                partition=newest.partition,
                offset=newest.offset,
                timestamp_ms=newest.timestamp_ms,
            )
            letters.append(self._letter(message, "scoring_failed", why))
        await self._publish_dead_letters(letters)

    def close(self) -> None:
        self.inference.close()


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
        size_bytes=sum(_message_bytes(m) for m in waiting),
    )


def _arrived_ms(entry: PendingEntry[InMessage]) -> int:
    """When the entry's oldest event arrived: its Kafka timestamp, or when it was queued if
    that is earlier (a producer clock ahead of ours must not stretch the wait)."""
    if entry.queued_ms:
        return min(entry.oldest_ingest_ms, entry.queued_ms)
    return entry.oldest_ingest_ms


def _message_bytes(message: InMessage) -> int:
    """What holding a consumed message costs: its value and key, plus object overhead."""
    return len(message.value) + len(message.key or b"") + MESSAGE_OVERHEAD_BYTES


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


def is_stale(last_event_ms: int, now_ms: int, stale_after_s: int) -> bool:
    """The staleness rule: the session's newest event is older than ``stale_after_s``
    (``SCORE_STALE_AFTER_S``; 0 = never stale). A backlog replayed by a new consumer group
    still updates windows, but its scores say ``stale: true`` so triggers can ignore them."""
    return stale_after_s > 0 and now_ms - last_event_ms > stale_after_s * 1000


def _partition_of(message: InMessage) -> tuple[str, int]:
    return message.topic, message.partition


def _store_errors(outcomes: dict[str, Any]) -> dict[str, SessionStoreError]:
    return {sid: o for sid, o in outcomes.items() if isinstance(o, SessionStoreError)}


def _rejected_detail(event: Event, reason: str) -> str:
    return f"event_id={event.event_id} event_time_ms={event.event_time_ms} ({reason})"
