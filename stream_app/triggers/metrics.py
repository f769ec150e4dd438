"""Prometheus metrics of the triggers worker (same registry as ``stream_app.core.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from stream_app.core.metrics import REGISTRY

_FAST_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

DECISIONS = Counter(
    "intent_trigger_decisions_total",
    "Rule evaluations by rule and outcome (fired, cooldown, rate_limited, conflict, "
    "duplicate, stale, purchased, below_exit, between, streak, conditions, fired_already)",
    ["rule", "decision"],
    registry=REGISTRY,
)
REASONS_SECONDS = Histogram(
    "intent_trigger_reasons_seconds",
    "Wall time of one batched reason-code computation (occlusion through the scorer)",
    buckets=_FAST_BUCKETS,
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "intent_trigger_batch_seconds",
    "Wall time of evaluating one consumed batch of scores (state, reasons, publish)",
    buckets=_FAST_BUCKETS,
    registry=REGISTRY,
)
RECOVERED = Counter(
    "intent_triggers_recovered_total",
    "Reserved triggers a crash left unpublished, published on recovery",
    registry=REGISTRY,
)
BAD_SCORES = Counter(
    "intent_trigger_bad_scores_total", "Score records that could not be read", registry=REGISTRY
)
