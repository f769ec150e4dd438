"""The ``intent-scores`` record: one message per scored session, keyed by session id.

Consumers measure end-to-end latency as ``received - ingest_ms`` (newest event covered) or
``received - oldest_ingest_ms`` (the oldest event first covered by this score); both are
Kafka record timestamps set when the events were produced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class ScoreRecord:
    session_id: str
    user_id: str
    score: float  # calibrated probability that the session goes on to buy, 0..1
    model_version: str
    window_events: int  # events in the window the model saw (<= WINDOW_MAX_EVENTS)
    session_events: int  # distinct valid events the session has accepted so far
    last_event_time: str  # ISO-8601 UTC of the newest event in the window
    last_event_time_ms: int
    scored_at: int  # epoch ms when the score was computed
    ingest_ms: int  # Kafka timestamp of the newest event this score covers
    oldest_ingest_ms: int  # Kafka timestamp of the oldest event first covered by this score
    worker: str = ""
    # The session had already bought: score 1.0 without a model call (a missing field, as in
    # records of older workers, means False).
    purchased: bool = False
    # The newest event is older than SCORE_STALE_AFTER_S: a backlog score, not a live one.
    # Consumers treat a missing field as false.
    stale: bool = False
    # Window facts the trigger rules test (``stream_app.triggers.facts.WindowFacts``).
    facts: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> ScoreRecord:
        data: dict[str, Any] = orjson.loads(raw)
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def iso_utc(epoch_ms: int) -> str:
    """Render epoch milliseconds as ISO-8601 UTC with a ``Z`` suffix."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
