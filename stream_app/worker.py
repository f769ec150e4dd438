"""``intent-stream worker``: settings -> model -> store -> Faust worker."""

from __future__ import annotations

import logging

import faust

from stream_app.app import create_app
from stream_app.config import Settings, load_settings
from stream_app.errors import ConfigError, ModelLoadError
from stream_app.logs import configure_logging, worker_logging_config
from stream_app.scoring import load_scorer
from stream_app.store import create_store
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
    return create_app(settings, scorer=scorer, store=store)


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
