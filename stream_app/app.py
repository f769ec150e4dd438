"""The Faust wiring -- the only place a ``faust.App``, its topics, agent and pages are built.

Data flow (see docs/design.md for the picture)::

    user-events --agent--> noack_take(BATCH_MAX_SIZE, within=BATCH_MAX_WAIT_MS)
        --> Pipeline.ingest: parse (bad -> user-events-dlq) -> Redis windows (one round trip)
        --> PendingScores (one entry per session, newest window, bounded)
    scoring task --> Pipeline.score_pending: model in a thread -> intent-scores -> ack offsets

Offsets are acknowledged by the pipeline, never by Faust's automatic per-event ack
(``noack_take``), so a committed offset always means "durable in Redis and scored (or
dead-lettered)".
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Sequence
from typing import Any, cast

import faust
from faust.web import Request, Response, View

from stream_app.api.latest import LatestScores
from stream_app.core import metrics
from stream_app.core.config import Settings
from stream_app.core.security import faust_credentials
from stream_app.scoring.scores import ScoreRecord
from stream_app.serving.acks import OrderedAcks
from stream_app.serving.lifecycle import Lifecycle
from stream_app.serving.pipeline import InMessage, Pipeline, Scorer
from stream_app.serving.probes import liveness, readiness
from stream_app.sessions.store import SessionStore
from stream_app.triggers.engine import TriggerRecord
from stream_app.triggers.worker import TriggerParts

log = logging.getLogger(__name__)

# faust.transport.drivers.aiokafka creates its consumer with fetch_max_wait_ms=1500.
FAUST_FETCH_MAX_WAIT_MS = 1500


def build_faust_app(settings: Settings) -> faust.App:
    """The ``faust.App`` with the worker's broker, consumer and web settings (no agents).

    The benchmark's consume-only agent is built on this too, so it measures the framework
    with exactly the worker's settings.
    """
    kafka = settings.kafka
    return faust.App(
        settings.worker.app_id,
        broker=[f"kafka://{host.strip()}" for host in kafka.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(kafka),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_session_timeout=kafka.session_timeout_ms / 1000,
        broker_rebalance_timeout=kafka.rebalance_timeout_ms / 1000,
        broker_heartbeat_interval=min(3.0, kafka.session_timeout_ms / 3000),
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        consumer_max_fetch_size=4 * 1024 * 1024,
        # Faust's own drain on revoke and stop waits, unbounded, for every consumed message
        # to be acked; ours (Pipeline.on_revoked) is bounded below the rebalance timeout.
        stream_wait_empty=False,
        web_port=settings.worker.web_port,
        web_bind=settings.worker.web_host,
        web_host=settings.worker.web_host,
        datadir=str(settings.worker.data_dir),
        store="memory://",
    )


def create_app(
    settings: Settings,
    *,
    scorer: Scorer,
    store: SessionStore,
    lifecycle: Lifecycle | None = None,
    latest: LatestScores | None = None,
) -> faust.App:
    kafka = settings.kafka
    life = lifecycle or Lifecycle(settings.worker.shutdown_timeout_s)
    app = build_faust_app(settings)
    events_topic = app.topic(kafka.events_topic, key_type=bytes, value_type=bytes)
    scores_topic = app.topic(kafka.scores_topic, key_type=bytes, value_type=bytes)
    dlq_topic = app.topic(kafka.dlq_topic, key_type=bytes, value_type=bytes)

    async def publish_scores(records: Sequence[ScoreRecord]) -> None:
        await _send_all(scores_topic, [(r.session_id.encode(), r.to_json()) for r in records])

    async def publish_dead_letters(letters: Sequence[tuple[bytes | None, bytes]]) -> None:
        await _send_all(dlq_topic, letters)

    # Faust commits runs of acked offsets; hand it acks in offset order (see acks.py).
    acks: OrderedAcks[Any] = OrderedAcks()

    async def ack(messages: Sequence[InMessage]) -> None:
        for message in messages:
            for stream, event in acks.settle(_partition(message), message.offset, message.handle):
                await stream.ack(event)

    pipeline = Pipeline(
        settings=settings,
        store=store,
        scorer=scorer,
        publish_scores=publish_scores,
        publish_dead_letters=publish_dead_letters,
        ack=ack,
        worker_id=f"{socket.gethostname()}:{os.getpid()}",
        latest=latest,
    )

    @app.agent(events_topic)
    async def score_sessions(stream: faust.StreamT[bytes]) -> None:
        batch = settings.batch
        concrete = cast("faust.Stream[bytes]", stream)  # noack_take is not on the protocol
        async for events in concrete.noack_take(batch.max_size, within=batch.max_wait_ms / 1000):
            messages = [_in_message(stream, cast("faust.EventT[bytes]", e)) for e in events]
            for message in messages:
                acks.register(_partition(message), message.offset, message.handle)
            # Never let Faust's supervisor restart this agent: the failed batch would not be
            # re-delivered and its offsets would block every later commit. Fail fast instead.
            await fail_fast(life, "ingest stage", pipeline.ingest(messages))

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # mode types it as sync
    async def _on_assigned(sender: Any, assigned: Any = (), *args: Any, **kwargs: Any) -> None:
        limit_fetch_wait(app, fetch_wait_ms(settings))
        mine = [tp for tp in assigned if tp.topic == kafka.events_topic]
        pipeline.health.assigned_partitions = len(mine)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode types it as sync
    async def _on_revoked(sender: Any, revoked: Any = (), *args: Any, **kwargs: Any) -> None:
        mine = [(tp.topic, tp.partition) for tp in revoked if tp.topic == kafka.events_topic]
        pipeline.health.assigned_partitions = 0
        await pipeline.on_revoked(mine, revoke_drain_s(settings))
        acks.forget(mine)
        await app.consumer.commit()  # what the drain settled, before the partitions go

    @app.task
    async def scoring_loop() -> None:
        await fail_fast(life, "scoring stage", pipeline.run_scoring())

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            payload, content_type = metrics.render()
            return self.bytes(payload, content_type=content_type)

    @app.page("/health")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            body = _health_body(pipeline)
            return self.json(body, status=200 if body["ready"] else 503)

    @app.page("/livez")
    class LiveView(View):
        async def get(self, request: Request) -> Response:
            body = liveness(life)
            return self.json(body, status=200 if body["live"] else 503)

    @app.page("/readyz")
    class ReadyView(View):
        async def get(self, request: Request) -> Response:
            body = await readiness(pipeline, store, life)
            return self.json(body, status=200 if body["ready"] else 503)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode types receivers as sync
    async def _close(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        pipeline.close()
        await store.close()

    life.on_shutdown.append(pipeline.freeze)
    app.pipeline = pipeline  # type: ignore[attr-defined]  # for tests and the CLI
    app.lifecycle = life  # type: ignore[attr-defined]
    return app


async def fail_fast(lifecycle: Lifecycle, stage: str, work: Awaitable[None]) -> None:
    """Run one stage's work; any exception it lets out ends the process (exit status 70).

    The stage then parks until shutdown cancels it, so it consumes and acks nothing more.
    """
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        lifecycle.fatal(f"{stage} failed: {type(exc).__name__}: {str(exc)[:300]}")
        await asyncio.Event().wait()


def revoke_drain_s(settings: Settings) -> float:
    """How long a revoke may wait for pending scores: half the rebalance timeout, so the
    drain, the commit and the rest of the rebalance fit in it."""
    return settings.kafka.rebalance_timeout_ms / 2000


def fetch_wait_ms(settings: Settings) -> int:
    """How long a fetch may wait for data: no longer than a micro-batch waits to fill."""
    return min(FAUST_FETCH_MAX_WAIT_MS, max(10, settings.batch.max_wait_ms))


def limit_fetch_wait(app: faust.App, max_wait_ms: int) -> bool:
    """Lower the consumer's fetch wait, which Faust hard-codes to 1.5 s.

    A broker that does not answer a pending fetch as soon as data arrives (the embedded Tansu
    broker) then holds every event for up to that long: measured p50 380 ms vs 6 ms at 20 ms.
    Faust offers no setting, so this reaches into aiokafka's fetcher, which reads the value
    for every request; returns False (and changes nothing) if that structure ever changes.
    """
    thread = getattr(app.consumer, "_thread", None)
    fetcher = getattr(getattr(thread, "_consumer", None), "_fetcher", None)
    if fetcher is None or not hasattr(fetcher, "_fetch_max_wait_ms"):
        log.warning("cannot lower the consumer fetch wait (faust/aiokafka internals changed)")
        return False
    fetcher._fetch_max_wait_ms = max_wait_ms
    return True


def _in_message(stream: faust.StreamT[bytes], event: faust.EventT[bytes]) -> InMessage:
    message = event.message
    return InMessage(
        key=message.key,
        value=event.value if isinstance(event.value, bytes) else bytes(event.value or b""),
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int(message.timestamp * 1000),
        handle=(stream, event),
    )


def _partition(message: InMessage) -> tuple[str, int]:
    return message.topic, message.partition


async def _send_all(topic: faust.TopicT, items: Sequence[tuple[bytes | None, bytes]]) -> None:
    """Send, then wait until the broker acknowledged every message (acks=all)."""
    pending = [await topic.send(key=key, value=value) for key, value in items]
    await asyncio.gather(*pending)


def _health_body(pipeline: Pipeline) -> dict[str, Any]:
    health = pipeline.health
    return {
        "ready": health.store_up,
        "store_up": health.store_up,
        "last_store_error": health.last_store_error if not health.store_up else "",
        "model_version": pipeline.scorer.model_version,
        "assigned_partitions": health.assigned_partitions,
        "pending_sessions": len(pipeline.pending),
        "pending_limit": pipeline.pending.max_sessions,
        "pending_messages": pipeline.pending.pending_tokens,
        "pending_bytes": pipeline.pending.pending_bytes,
        "model_breaker": pipeline.breaker.state,
        "last_score_at_ms": health.last_score_at_ms,
        "scored_batches": health.scored_batches,
    }


# --------------------------------------------------------------------------- triggers worker


def create_triggers_app(settings: Settings, *, parts: TriggerParts) -> faust.App:
    """``intent-stream triggers``: intent-scores -> rules -> intent-triggers.

    Its own consumer group (``TRIGGERS_APP_ID``) and web port; scales with the partitions of
    intent-scores like the worker. Offsets are acknowledged after the batch's triggers were
    acknowledged by the broker (at-least-once in; exactly one trigger per episode out, see
    ``stream_app.triggers.engine``).
    """
    kafka, config = settings.kafka, settings.triggers
    web = {"web_port": config.web_port, "web_host": config.web_host}
    worker = settings.worker.model_copy(
        update={"app_id": config.app_id} | {k: v for k, v in web.items() if v is not None}
    )
    app = build_faust_app(settings.model_copy(update={"worker": worker}))
    scores_topic = app.topic(kafka.scores_topic, key_type=bytes, value_type=bytes)
    triggers_topic = app.topic(kafka.triggers_topic, key_type=bytes, value_type=bytes)

    async def publish(records: Sequence[TriggerRecord]) -> None:
        await _send_all(triggers_topic, [(r.session_id.encode(), r.to_json()) for r in records])

    engine = parts.engine(publish)
    acks: OrderedAcks[Any] = OrderedAcks()
    health = {"assigned": 0, "batches": 0}

    @app.agent(scores_topic)
    async def evaluate_triggers(stream: faust.StreamT[bytes]) -> None:
        batch = settings.batch
        concrete = cast("faust.Stream[bytes]", stream)
        async for events in concrete.noack_take(batch.max_size, within=batch.max_wait_ms / 1000):
            typed = [cast("faust.EventT[bytes]", e) for e in events]
            for event in typed:
                acks.register(_tp(event), event.message.offset, (stream, event))
            await parts.run_batch(engine, [e.value for e in typed])
            health["batches"] += 1
            for event in typed:
                for s, e in acks.settle(_tp(event), event.message.offset, (stream, event)):
                    await s.ack(e)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _on_assigned(sender: Any, assigned: Any = (), *args: Any, **kwargs: Any) -> None:
        limit_fetch_wait(app, fetch_wait_ms(settings))
        health["assigned"] = len([tp for tp in assigned if tp.topic == kafka.scores_topic])

    _probe_pages(app, parts, health)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def _close(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        await parts.close()

    app.trigger_engine = engine  # type: ignore[attr-defined]
    return app


def _probe_pages(app: faust.App, parts: TriggerParts, health: dict[str, int]) -> None:
    @app.page("/metrics")
    class TriggerMetricsView(View):
        async def get(self, request: Request) -> Response:
            payload, content_type = metrics.render()
            return self.bytes(payload, content_type=content_type)

    @app.page("/livez")
    class LiveView(View):
        async def get(self, request: Request) -> Response:
            return self.json({"live": True})

    @app.page("/readyz")
    class ReadyView(View):
        async def get(self, request: Request) -> Response:
            up = await parts.ping()
            body = {"ready": up, "store_up": up, "assigned_partitions": health["assigned"]}
            return self.json(body, status=200 if up else 503)

    @app.page("/health")
    class TriggerHealthView(View):
        async def get(self, request: Request) -> Response:
            up = await parts.ping()
            body = {"ready": up, "assigned_partitions": health["assigned"],
                    "batches": health["batches"]}  # fmt: skip
            return self.json(body, status=200 if up else 503)


def _tp(event: faust.EventT[bytes]) -> tuple[str, int]:
    return event.message.topic, event.message.partition
