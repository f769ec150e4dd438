"""The worker processes: ``intent-stream worker`` (settings -> model -> store -> Faust worker)
and ``intent-stream triggers`` (settings -> rules, trigger state, reasons -> Faust worker)."""

from __future__ import annotations

import logging
from typing import Any

import faust

from stream_app.api.latest import InMemoryLatestScores, LatestScores, RedisLatestScores
from stream_app.app import create_app, create_triggers_app
from stream_app.core.config import Settings, load_settings
from stream_app.core.errors import ConfigError, ModelLoadError
from stream_app.core.logs import configure_logging, worker_logging_config
from stream_app.core.redis_connect import redis_client
from stream_app.scoring import load_scorer, require_backend_packages
from stream_app.serving.lifecycle import Lifecycle
from stream_app.serving.preflight import check_broker, check_tls_files, run_checks
from stream_app.sessions.store import MEMORY_SCHEME, RedisSessionStore, create_store
from stream_app.sessions.windows import WindowRules
from stream_app.triggers.worker import build_parts

log = logging.getLogger(__name__)


class BoundedWorker(faust.Worker):
    """``faust.Worker`` whose SIGTERM/SIGINT stop is bounded by ``WORKER_SHUTDOWN_TIMEOUT_S``
    (see ``lifecycle.py``): Faust's graceful stop runs, a watchdog ends it if it hangs."""

    def __init__(self, app: faust.App, lifecycle: Lifecycle, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.lifecycle = lifecycle

    def _on_sigterm(self) -> None:
        self.lifecycle.begin_shutdown("SIGTERM")
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self.lifecycle.begin_shutdown("SIGINT")
        super()._on_sigint()


def build_worker_app(settings: Settings, lifecycle: Lifecycle | None = None) -> faust.App:
    """Everything that can fail fast (config, model files) fails here, before consuming."""
    if settings.kafka.embedded:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS is not set (the worker needs a broker)")
    if settings.redis.embedded:
        raise ConfigError("REDIS_URL is not set (the worker needs Redis)")
    check_tls_files(settings.kafka, settings.redis)
    require_backend_packages(settings.model)
    check_broker(settings.kafka)
    rules = WindowRules.from_settings(settings.window)
    store = create_store(settings.redis, rules)
    if isinstance(store, RedisSessionStore):
        run_checks(settings.redis, rules)
    scorer = load_scorer(settings.model)
    return create_app(
        settings, scorer=scorer, store=store, lifecycle=lifecycle, latest=latest_scores(settings)
    )


def latest_scores(settings: Settings) -> LatestScores | None:
    """Where the worker writes latest scores for the read API (None: API_WRITE_LATEST=false)."""
    if not settings.api.write_latest:
        return None
    if settings.redis.url.strip().startswith(MEMORY_SCHEME):
        return InMemoryLatestScores()
    return RedisLatestScores(
        redis_client(settings.redis), settings.redis.key_prefix, settings.api.score_ttl_s
    )


def worker_options(settings: Settings) -> dict[str, Any]:
    """The Faust worker options both processes share: our log level and logging setup."""
    level, as_json = settings.worker.log_level, settings.worker.log_json
    return {"loglevel": level.lower(), "quiet": True,
            "logging_config": worker_logging_config(level, as_json)}  # fmt: skip


def run_worker() -> int:
    try:
        settings = load_settings()
        configure_logging(settings.worker.log_level, settings.worker.log_json)
        lifecycle = Lifecycle(settings.worker.shutdown_timeout_s)
        app = build_worker_app(settings, lifecycle)
    except (ConfigError, ModelLoadError) as exc:
        log.error("cannot start worker: %s", exc)
        return 2
    worker = BoundedWorker(app, lifecycle, **worker_options(settings))
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    else:  # pragma: no cover - execute_from_commandline always raises SystemExit
        status = 0
    lifecycle.finished()
    return lifecycle.exit_code or status


def run_triggers() -> int:
    try:
        settings = load_settings()
        configure_logging(settings.worker.log_level, settings.worker.log_json)
        app = create_triggers_app(settings, parts=build_parts(settings))
    except (ConfigError, ModelLoadError) as exc:
        log.error("cannot start the triggers worker: %s", exc)
        return 2
    worker = faust.Worker(app, **worker_options(settings))
    worker.execute_from_commandline()
    return 0
