"""The dashboard's live view of the topics: top sessions, recent triggers, throughput, latency.

``DashboardState`` is pure (records in, a JSON-able snapshot out, clock injected);
``TopicFeed`` follows ``intent-scores`` and ``intent-triggers`` from their end in a
background thread (confluent-kafka, ``assign``: no consumer group) and feeds it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from stream_app.core.config import KafkaSettings
from stream_app.core.topics import security_config, wait_for_topics

log = logging.getLogger(__name__)

MAX_SESSIONS = 5000  # sessions remembered for the "highest intent now" list
RECENT_TRIGGERS = 50
RATE_WINDOW_MS = 10_000
LATENCY_SAMPLES = 1000


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class DashboardState:
    def __init__(self, clock: Callable[[], int] = wall_ms) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._triggers: deque[dict[str, Any]] = deque(maxlen=RECENT_TRIGGERS)
        self._score_times: deque[int] = deque()
        self._latencies_ms: deque[int] = deque(maxlen=LATENCY_SAMPLES)
        self.scores_seen = 0
        self.triggers_seen = 0

    def add_score(self, record: dict[str, Any], received_ms: int | None = None) -> None:
        now = self._clock() if received_ms is None else received_ms
        session = str(record.get("session_id", ""))
        view = {k: record.get(k) for k in ("session_id", "user_id", "score", "session_events",
                                           "scored_at", "stale", "purchased")}  # fmt: skip
        with self._lock:
            self._sessions[session] = view
            self._sessions.move_to_end(session)
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
            self._score_times.append(now)
            oldest = record.get("oldest_ingest_ms")
            if isinstance(oldest, int) and oldest > 0:
                self._latencies_ms.append(max(now - oldest, 0))
            self.scores_seen += 1

    def add_trigger(self, record: dict[str, Any]) -> None:
        keep = ("trigger_id", "rule", "session_id", "user_id", "score", "reasons", "fired_at")
        with self._lock:
            self._triggers.appendleft({k: record.get(k) for k in keep})
            self.triggers_seen += 1

    def snapshot(self, top: int = 15) -> dict[str, Any]:
        now = self._clock()
        with self._lock:
            while self._score_times and self._score_times[0] < now - RATE_WINDOW_MS:
                self._score_times.popleft()
            sessions = sorted(self._sessions.values(), key=lambda v: -float(v["score"] or 0))
            latencies = np.asarray(self._latencies_ms, dtype=np.float64)
            return {
                "now_ms": now,
                "top_sessions": sessions[:top],
                "triggers": list(self._triggers),
                "scores_per_s": round(len(self._score_times) / (RATE_WINDOW_MS / 1000), 1),
                "scores_seen": self.scores_seen,
                "triggers_seen": self.triggers_seen,
                "latency_ms_p50": _pct(latencies, 50),
                "latency_ms_p99": _pct(latencies, 99),
            }


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values.size else None


class TopicFeed:
    """Follows the scores and triggers topics into a ``DashboardState``."""

    def __init__(self, kafka: KafkaSettings, state: DashboardState) -> None:
        self._kafka = kafka
        self._state = state
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        kafka = self._kafka
        config = security_config(kafka)
        topics = [kafka.scores_topic, kafka.triggers_topic]
        try:
            counts = wait_for_topics(kafka.bootstrap_servers, topics, config=config, timeout_s=60)
        except Exception as exc:  # the dashboard is optional; the read API keeps serving
            log.warning("dashboard feed disabled: %s", exc)
            return
        consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, **config,
                             "group.id": f"dashboard-{uuid.uuid4().hex}",
                             "enable.auto.commit": False})  # fmt: skip
        consumer.assign(
            [TopicPartition(t, p, OFFSET_END) for t in topics for p in range(counts[t])]
        )
        try:
            while not self._stop.is_set():
                for message in consumer.consume(num_messages=500, timeout=0.2):
                    if message.error() is None:
                        self._take(message.topic(), message.value())
        finally:
            consumer.close()

    def _take(self, topic: str | None, value: bytes | None) -> None:
        try:
            record = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            return
        if not isinstance(record, dict):
            return
        if topic == self._kafka.triggers_topic:
            self._state.add_trigger(record)
        else:
            self._state.add_score(record)
