"""``intent-stream triggers``: settings -> rules, Redis state, model (reasons) -> Faust app.

``TriggerParts`` holds everything but Faust (the wiring is ``app.create_triggers_app``, the
process is ``stream_app/worker.py``):
parsing score records, the engine with its Redis state, reason codes from the windows in
Redis through the model, and the bounded retry around a store outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream_app.core.config import Settings
from stream_app.core.errors import StoreUnavailable
from stream_app.core.retry import Backoff
from stream_app.sessions.store import SessionStore
from stream_app.triggers import metrics
from stream_app.triggers.engine import AlreadyPublished, Publish, TriggerEngine
from stream_app.triggers.evaluate import ScoreInput
from stream_app.triggers.reasons import OcclusionExplainer
from stream_app.triggers.rules import RuleSet
from stream_app.triggers.state import TriggerStateStore

log = logging.getLogger(__name__)


def parse_scores(values: Sequence[bytes | None]) -> list[ScoreInput]:
    """Score records -> ``ScoreInput``; unreadable ones are counted and skipped."""
    scores = []
    for value in values:
        try:
            scores.append(ScoreInput.from_record(orjson.loads(value or b"")))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            metrics.BAD_SCORES.inc()
    return scores


@dataclass
class TriggerParts:
    settings: Settings
    rules: RuleSet
    state: TriggerStateStore
    sessions: SessionStore | None = None  # windows, for reason codes
    explainer: OcclusionExplainer | None = None
    lookup: AlreadyPublished | None = None
    _executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="reasons")
    )

    def engine(self, publish: Publish) -> TriggerEngine:
        explain = self.explain if self.explainer is not None and self.sessions else None
        return TriggerEngine(
            rules=self.rules, state=self.state, publish=publish, explain=explain,
            already_published=self.lookup,
        )  # fmt: skip

    async def explain(self, scores: Sequence[ScoreInput]) -> list[list[dict[str, Any]]]:
        """Reasons from each session's current window (``[]`` where it has expired)."""
        assert self.sessions is not None
        assert self.explainer is not None
        snapshots = await asyncio.gather(*(self.sessions.get(s.session_id) for s in scores))
        present = [snap for snap in snapshots if snap is not None]
        loop = asyncio.get_running_loop()
        explained = iter(
            await loop.run_in_executor(self._executor, self.explainer.explain, present)
        )
        return [[r.to_dict() for r in next(explained)] if snap else [] for snap in snapshots]

    async def run_batch(self, engine: TriggerEngine, values: Sequence[bytes | None]) -> None:
        """Evaluate one batch; a Redis outage is retried with backoff (never skipped: the
        offsets are not acknowledged until the batch went through)."""
        scores = parse_scores(values)
        backoff = Backoff(self.settings.redis.backoff_base_s, self.settings.redis.backoff_cap_s)
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                await engine.process(scores)
            except StoreUnavailable as exc:
                log.warning("trigger state unavailable (attempt %d): %s", attempt + 1, exc)
                await asyncio.sleep(backoff.delay(attempt))
                attempt += 1
                continue
            metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
            return

    async def ping(self) -> bool:
        if self.sessions is None:
            return True
        return await self.sessions.ping()

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        await self.state.close()
        if self.sessions is not None:
            await self.sessions.close()


def build_parts(settings: Settings) -> TriggerParts:
    """Everything that can fail fast (config, rules file, model) fails here."""
    from stream_app.core.errors import ConfigError
    from stream_app.core.redis_connect import redis_client
    from stream_app.sessions.store import MEMORY_SCHEME, RedisSessionStore
    from stream_app.sessions.windows import WindowRules
    from stream_app.triggers.lookup import PublishedLookup
    from stream_app.triggers.rules import load_rules
    from stream_app.triggers.state import RedisTriggerState

    if settings.kafka.embedded:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS is not set (the triggers worker needs a broker)")
    if settings.redis.embedded or settings.redis.url.strip().startswith(MEMORY_SCHEME):
        raise ConfigError("REDIS_URL must name a Redis for the triggers worker")
    rules = load_rules(settings.triggers.rules_path)
    redis = settings.redis
    state = RedisTriggerState(redis_client(redis), redis.key_prefix, settings.triggers.state_ttl_s)
    parts = TriggerParts(settings, rules, state, lookup=PublishedLookup(settings.kafka))
    if settings.triggers.reasons:
        from stream_app.scoring import load_scorer

        rules_w = WindowRules.from_settings(settings.window)
        parts.sessions = RedisSessionStore(redis_client(redis), rules_w, redis.key_prefix)
        parts.explainer = OcclusionExplainer(load_scorer(settings.model))
    return parts
