"""Stage (2): the naive worker most tutorials show -- a plain confluent-kafka loop.

One event in, one Redis window update (the same ``RedisSessionStore`` and Lua script as the
worker), one torch forward pass at batch 1, one score out. No micro-batching, no coalescing,
no pipelining: each step waits for the previous one. Offsets are stored after an event is
fully handled and auto-committed every 500 ms, so committed offsets measure finished events.
Run as ``python -m bench.naive_worker`` configured by the worker's environment variables.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading

from confluent_kafka import Consumer, Producer

from stream_app.app import fetch_wait_ms
from stream_app.core.config import Settings, load_settings
from stream_app.core.errors import InvalidEvent
from stream_app.ingest.events import Event, EventLimits, parse_event
from stream_app.scoring.scores import ScoreRecord, iso_utc
from stream_app.scoring.torch_backend import TorchScorer
from stream_app.serving.pipeline import wall_clock_ms
from stream_app.sessions.store import create_store
from stream_app.sessions.windows import WindowRules, WindowSnapshot


class NaiveWorker:
    def __init__(self, settings: Settings) -> None:
        kafka = settings.kafka
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.store = create_store(settings.redis, WindowRules.from_settings(settings.window))
        assert settings.model.dir is not None, "MODEL_DIR must be set"
        self.scorer = TorchScorer(settings.model.dir, threads=settings.model.threads)
        self.limits = EventLimits.from_settings(settings.window, kafka.max_message_bytes)
        self.consumer = Consumer(
            {
                "bootstrap.servers": kafka.bootstrap_servers,
                "group.id": settings.worker.app_id,
                "auto.offset.reset": "earliest",
                "enable.auto.offset.store": False,
                "auto.commit.interval.ms": 500,
                # Same fetch wait as the worker (app.fetch_wait_ms): the embedded broker holds
                # a fetch for the whole wait even when data arrives, which is not what we test.
                "fetch.wait.max.ms": fetch_wait_ms(settings),
                # The worker's group timeouts: the embedded broker holds a join for this long.
                "session.timeout.ms": kafka.session_timeout_ms,
                "max.poll.interval.ms": max(kafka.rebalance_timeout_ms, 10_000),
            }
        )
        self.producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "acks": "all"})
        self.stop = threading.Event()

    def run(self) -> None:
        self.consumer.subscribe([self.settings.kafka.events_topic])
        while not self.stop.is_set():
            message = self.consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            self.handle(message.value() or b"", int(message.timestamp()[1]))
            self.consumer.store_offsets(message)
            self.producer.poll(0)
        self.producer.flush(10)
        self.consumer.close()

    def handle(self, value: bytes, ingest_ms: int) -> None:
        try:
            event = parse_event(value, limits=self.limits, now_ms=wall_clock_ms())
        except InvalidEvent:
            return  # the tutorial version drops bad input
        outcome = self.loop.run_until_complete(self.store.apply({event.user_session: [event]}))
        snapshot = outcome[event.user_session].snapshot
        score = float(self.scorer.score([snapshot])[0])
        record = self.record(event, snapshot, score, ingest_ms)
        self.producer.produce(
            self.settings.kafka.scores_topic, key=event.user_session.encode(), value=record
        )

    def record(self, event: Event, snapshot: WindowSnapshot, score: float, ingest_ms: int) -> bytes:
        last_ms = snapshot.events[-1].event_time_ms if snapshot.events else 0
        return ScoreRecord(
            session_id=event.user_session,
            user_id=snapshot.user_id,
            score=round(score, 6),
            model_version=self.scorer.model_version,
            window_events=len(snapshot.events),
            session_events=snapshot.aggregates.n_events,
            last_event_time=iso_utc(last_ms),
            last_event_time_ms=last_ms,
            scored_at=wall_clock_ms(),
            ingest_ms=ingest_ms,
            oldest_ingest_ms=ingest_ms,
            worker=f"naive:{os.getpid()}",
        ).to_json()


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    worker = NaiveWorker(load_settings())
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    print("naive worker ready", flush=True)
    worker.run()


if __name__ == "__main__":
    main()
