"""Latest scores for the read API: the worker writes them, ``intent-stream api`` reads them.

For every published score the worker writes the session's latest score and the user's latest
score (one pipelined round trip per scored batch, right after the broker acknowledged the
scores), each with a TTL of ``API_SCORE_TTL_S``. Keys: ``{prefix}:latest:s:<session tag>``,
``{prefix}:latest:u:<user tag>`` (hashed ids, as for windows), values: ``LatestScore`` JSON.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import orjson
from prometheus_client import Counter, Histogram
from redis import exceptions as redis_errors

from stream_app.core.errors import StoreUnavailable
from stream_app.core.keys import session_tag
from stream_app.core.metrics import REGISTRY
from stream_app.core.redis_connect import RedisClient, answers
from stream_app.scoring.scores import ScoreRecord

WRITE_SECONDS = Histogram(
    "intent_latest_write_seconds",
    "Wall time of one pipelined latest-score write (one per scored batch)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
    registry=REGISTRY,
)
WRITE_FAILURES = Counter(
    "intent_latest_write_failures_total",
    "Latest-score writes that failed (the scores were published; the read API lags)",
    registry=REGISTRY,
)


@dataclass(frozen=True, slots=True)
class LatestScore:
    session_id: str
    user_id: str
    score: float
    model_version: str
    scored_at: int  # epoch ms
    last_event_time_ms: int
    stale: bool = False
    purchased: bool = False
    reasons: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_record(cls, record: ScoreRecord) -> LatestScore:
        data = asdict(record)
        return cls(
            session_id=record.session_id,
            user_id=record.user_id,
            score=record.score,
            model_version=record.model_version,
            scored_at=record.scored_at,
            last_event_time_ms=record.last_event_time_ms,
            stale=data.get("stale") is True,
            purchased=data.get("purchased") is True,
            reasons=list(data.get("reasons") or []),
        )

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> LatestScore:
        data = orjson.loads(raw)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class LatestScores(Protocol):
    async def write(self, records: Sequence[ScoreRecord]) -> None: ...

    async def session(self, session_id: str) -> LatestScore | None: ...

    async def user(self, user_id: str) -> LatestScore | None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


def _newest_per_user(records: Sequence[ScoreRecord]) -> dict[str, ScoreRecord]:
    newest: dict[str, ScoreRecord] = {}
    for r in records:
        if r.user_id and (r.user_id not in newest or r.scored_at >= newest[r.user_id].scored_at):
            newest[r.user_id] = r
    return newest


class InMemoryLatestScores:
    def __init__(self) -> None:
        self.sessions: dict[str, LatestScore] = {}
        self.users: dict[str, LatestScore] = {}

    async def write(self, records: Sequence[ScoreRecord]) -> None:
        for r in records:
            self.sessions[r.session_id] = LatestScore.from_record(r)
        for user, r in _newest_per_user(records).items():
            self.users[user] = LatestScore.from_record(r)

    async def session(self, session_id: str) -> LatestScore | None:
        return self.sessions.get(session_id)

    async def user(self, user_id: str) -> LatestScore | None:
        return self.users.get(user_id)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class RedisLatestScores:
    def __init__(self, client: RedisClient, key_prefix: str, ttl_s: int) -> None:
        self._client = client
        self._prefix = key_prefix
        self._ttl_ms = ttl_s * 1000

    def session_key(self, session_id: str) -> str:
        return f"{self._prefix}:latest:s:{session_tag(session_id)}"

    def user_key(self, user_id: str) -> str:
        return f"{self._prefix}:latest:u:{session_tag(user_id)}"

    async def write(self, records: Sequence[ScoreRecord]) -> None:
        if not records:
            return
        started = time.perf_counter()
        pipe = self._client.pipeline(transaction=False)
        for r in records:
            pipe.set(self.session_key(r.session_id), LatestScore.from_record(r).to_json(),
                     px=self._ttl_ms)  # fmt: skip
        for user, r in _newest_per_user(records).items():
            pipe.set(self.user_key(user), LatestScore.from_record(r).to_json(), px=self._ttl_ms)
        try:
            await pipe.execute()
        except redis_errors.RedisError as exc:
            WRITE_FAILURES.inc()
            raise StoreUnavailable(f"latest-score write failed: {exc}") from exc
        WRITE_SECONDS.observe(time.perf_counter() - started)

    async def _get(self, key: str) -> LatestScore | None:
        try:
            raw = await self._client.get(key)
        except redis_errors.RedisError as exc:
            raise StoreUnavailable(f"latest-score read failed: {exc}") from exc
        return LatestScore.from_json(raw) if raw else None

    async def session(self, session_id: str) -> LatestScore | None:
        return await self._get(self.session_key(session_id))

    async def user(self, user_id: str) -> LatestScore | None:
        return await self._get(self.user_key(user_id))

    async def ping(self) -> bool:
        return await answers(self._client)

    async def close(self) -> None:
        await self._client.aclose()
