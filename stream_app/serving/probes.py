"""Kubernetes probes: ``/livez`` (restart me?) and ``/readyz`` (am I doing my job?).

* ``/livez`` answers 200 while the process and its event loop run -- the page answering is
  the proof. It does NOT look at Redis, the broker or the model: a liveness probe that fails
  during a Redis outage would restart every worker at once and fix nothing. A worker that
  cannot go on exits by itself (see ``lifecycle.py``), so liveness has little else to say;
  it turns 503 once a fatal error or a shutdown began.
* ``/readyz`` answers 200 only when the session store answers a PING (within
  ``READY_PING_TIMEOUT_S``), the model circuit breaker is closed, partitions of the events
  topic are assigned, and no shutdown began; else 503 with the failing checks named.

``/health`` stays as before (200 while the store is up) for existing dashboards and tools.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from stream_app.serving.lifecycle import Lifecycle

if TYPE_CHECKING:
    from stream_app.serving.pipeline import Pipeline
    from stream_app.sessions.store import SessionStore

READY_PING_TIMEOUT_S = 0.5


def liveness(lifecycle: Lifecycle) -> dict[str, Any]:
    return {"live": not lifecycle.stopping, "fatal": lifecycle.fatal_reason}


async def readiness(
    pipeline: Pipeline, store: SessionStore, lifecycle: Lifecycle
) -> dict[str, Any]:
    store_up = False
    with contextlib.suppress(TimeoutError):
        store_up = await asyncio.wait_for(store.ping(), READY_PING_TIMEOUT_S)
    checks = {
        "store_reachable": store_up,
        "model_circuit_closed": pipeline.breaker.closed,
        "partitions_assigned": pipeline.health.assigned_partitions > 0,
        "not_stopping": not lifecycle.stopping,
    }
    return {
        "ready": all(checks.values()),
        "failing": [name for name, ok in checks.items() if not ok],
        **checks,
        "breaker_state": pipeline.breaker.state,
        "last_scoring_error": pipeline.health.extra.get("last_scoring_error", ""),
        "assigned_partitions": pipeline.health.assigned_partitions,
    }
