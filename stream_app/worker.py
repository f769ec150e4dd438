"""``intent-stream worker``: settings -> model -> store -> Faust worker."""

from __future__ import annotations

import logging

import faust

from stream_app.api.latest import InMemoryLatestScores, LatestScores, RedisLatestScores
from stream_app.app import create_app
from stream_app.config import Settings, load_settings
from stream_app.errors import ConfigError, ModelLoadError
from stream_app.logs import configure_logging, worker_logging_config
from stream_app.redis_connect import redis_client
from stream_app.scoring import load_scorer
from stream_app.store import MEMORY_SCHEME, create_store
from stream_app.windows import WindowRules

log = logging.getLogger(__name__)


def build_worker_app(settings: Settings) -> faust.App:
    """Everything that can fail fast (config, model files) fails here, before consuming."""
    if settings.kafka.embedded:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS is not set (the worker needs a broker)")
    if settings.redis.embedded:
        raise ConfigError("REDIS_URL is not set (the worker needs Redis)")
    scorer = load_scorer(settings.model)
    store = create_store(settings.redis, WindowRules.from_settings(settings.window))
    return create_app(settings, scorer=scorer, store=store, latest=latest_scores(settings))


def latest_scores(settings: Settings) -> LatestScores | None:
    """Where the worker writes latest scores for the read API (None: API_WRITE_LATEST=false)."""
    if not settings.api.write_latest:
        return None
    if settings.redis.url.strip().startswith(MEMORY_SCHEME):
        return InMemoryLatestScores()
    return RedisLatestScores(
        redis_client(settings.redis), settings.redis.key_prefix, settings.api.score_ttl_s
    )


def run_worker() -> int:
    try:
        settings = load_settings()
        configure_logging(settings.worker.log_level, settings.worker.log_json)
        app = build_worker_app(settings)
    except (ConfigError, ModelLoadError) as exc:
        log.error("cannot start worker: %s", exc)
        return 2
    worker = faust.Worker(
        app,
        loglevel=settings.worker.log_level.lower(),
        quiet=True,
        logging_config=worker_logging_config(settings.worker.log_level, settings.worker.log_json),
    )
    worker.execute_from_commandline()
    return 0
