"""Prometheus metrics, served at ``/metrics`` on the Faust web port.

Label values are bounded sets (event results, DLQ reason codes), never ids.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_FAST_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

EVENTS_IN = Counter(
    "intent_events_in_total",
    "Messages consumed from the events topic, by outcome",
    ["result"],  # valid | duplicate | late | invalid
    registry=REGISTRY,
)
DLQ = Counter(
    "intent_dlq_total", "Messages sent to the dead-letter topic", ["reason"], registry=REGISTRY
)
INGEST_BATCH_SIZE = Histogram(
    "intent_ingest_batch_size",
    "Messages per consumed micro-batch",
    buckets=_SIZE_BUCKETS,
    registry=REGISTRY,
)
SCORE_BATCH_SIZE = Histogram(
    "intent_score_batch_size",
    "Sessions per inference batch",
    buckets=_SIZE_BUCKETS,
    registry=REGISTRY,
)
SCORE_BATCH_PADDED_LEN = Histogram(
    "intent_score_batch_padded_len",
    "Longest window (events) per inference batch: the length the batch is padded to",
    buckets=_SIZE_BUCKETS,
    registry=REGISTRY,
)
SCORE_RELEASES = Counter(
    "intent_score_batch_releases_total",
    "Inference batches released, by why: size (a full batch waited), deadline (the oldest "
    "event's latency budget), idle (the model keeps up at this size)",
    ["reason"],
    registry=REGISTRY,
)
INFERENCE_SECONDS = Histogram(
    "intent_inference_seconds",
    "Wall time of one inference batch (tokenise + encode + run)",
    buckets=_FAST_BUCKETS,
    registry=REGISTRY,
)
REDIS_SECONDS = Histogram(
    "intent_redis_seconds",
    "Wall time of one window-update round trip to the session store",
    buckets=_FAST_BUCKETS,
    registry=REGISTRY,
)
E2E_LATENCY_SECONDS = Histogram(
    "intent_e2e_latency_seconds",
    "From an event's Kafka timestamp to its score being acknowledged by the broker",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
SCORES_OUT = Counter("intent_scores_total", "Scores published", registry=REGISTRY)
COALESCED = Counter(
    "intent_coalesced_total",
    "Window updates folded into an already pending score (scored once on the newest window)",
    registry=REGISTRY,
)
PENDING_SESSIONS = Gauge(
    "intent_pending_sessions", "Sessions waiting to be scored", registry=REGISTRY
)
PENDING_MESSAGES = Gauge(
    "intent_pending_messages",
    "Consumed messages whose offsets wait for a score before they can be committed",
    registry=REGISTRY,
)
STORE_UP = Gauge("intent_store_up", "1 when the session store answers, else 0", registry=REGISTRY)
STORE_RETRIES = Counter(
    "intent_store_retries_total", "Session-store calls retried after a failure", registry=REGISTRY
)
SCORING_FAILURES = Counter(
    "intent_scoring_failures_total", "Inference batches that raised", registry=REGISTRY
)

ABANDONED_CALLS = Counter(
    "intent_inference_abandoned_total",
    "Model calls abandoned after MODEL_INFERENCE_TIMEOUT_S (their thread is replaced)",
    registry=REGISTRY,
)
BREAKER_OPEN = Gauge(
    "intent_model_breaker_open",
    "1 while the model circuit breaker is open or half-open (scoring and consumption paused)",
    registry=REGISTRY,
)
PENDING_BYTES = Gauge(
    "intent_pending_bytes",
    "Bytes of consumed messages held until their sessions are scored",
    registry=REGISTRY,
)
STALE_SCORES = Counter(
    "intent_stale_scores_total",
    "Scores published with stale=true (newest event older than SCORE_STALE_AFTER_S)",
    registry=REGISTRY,
)
FATAL_ERRORS = Counter(
    "intent_fatal_errors_total", "Errors that made the worker exit", registry=REGISTRY
)


def render() -> tuple[bytes, str]:
    """The exposition-format payload and its media type.

    aiohttp wants the charset apart from the media type, so only ``text/plain`` is returned;
    Prometheus reads an unversioned ``text/plain`` as the text exposition format.
    """
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST.split(";", 1)[0]
