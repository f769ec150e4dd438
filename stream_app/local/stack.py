"""A whole local stack: broker + Redis (embedded unless configured) + N worker processes.

Used by ``intent-stream demo``, the benchmark, and the integration/fault tests, so they all
run the worker exactly as production does: a separate ``intent-stream worker`` process
configured only through environment variables.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import orjson

from stream_app.core.config import Settings
from stream_app.core.errors import IntentStreamError
from stream_app.core.topics import ensure_topics, security_config
from stream_app.local.embedded import EmbeddedBroker, EmbeddedRedis, free_port

log = logging.getLogger(__name__)


class WorkerFailed(IntentStreamError):
    """A worker process exited or never became healthy."""


@dataclass
class WorkerProcess:
    index: int
    web_port: int
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    command: str = "worker"  # the intent-stream sub-command: worker | triggers | api

    def start(self) -> None:
        log_file = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_app.cli", self.command],
            env=self.env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log_file.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> dict[str, object] | None:
        url = f"http://127.0.0.1:{self.web_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return dict(orjson.loads(response.read()))
        except urllib.error.HTTPError as exc:
            return dict(orjson.loads(exc.read()))
        except (OSError, ValueError):
            return None

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no final commit -- a crash."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass
class LocalStack:
    settings: Settings
    workers: int = 1
    worker_env: Mapping[str, str] = field(default_factory=dict)
    work_dir: Path | None = None
    broker: EmbeddedBroker | None = None
    redis: EmbeddedRedis | None = None
    processes: list[WorkerProcess] = field(default_factory=list)
    triggers: int = 0  # triggers worker processes (intent-stream triggers)
    extra: list[WorkerProcess] = field(default_factory=list)  # triggers workers, the api
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self.work_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="intent-stream-")
            self.work_dir = Path(self._tmp.name)
        self._start_servers()
        kafka = self.settings.kafka
        topics = dict.fromkeys(
            (kafka.events_topic, kafka.scores_topic, kafka.dlq_topic, kafka.triggers_topic),
            kafka.partitions,
        )
        ensure_topics(
            self.bootstrap_servers,
            topics,
            kafka.replication_factor,
            config=security_config(kafka),
        )
        for index in range(self.workers):
            self.add_worker(index)
        for index in range(self.triggers):
            self.add_service("triggers", index)

    def _start_servers(self) -> None:
        assert self.work_dir is not None
        if self.settings.kafka.embedded:
            self.broker = EmbeddedBroker(log_dir=self.work_dir / "broker").start()
            log.info("embedded broker on %s", self.broker.bootstrap_servers)
        if self.settings.redis.embedded:
            self.redis = EmbeddedRedis(log_dir=self.work_dir / "redis").start()
            log.info("embedded redis on %s", self.redis.redacted_url)

    def stop(self) -> None:
        for process in [*self.extra, *self.processes]:
            process.stop()
        for server in (self.redis, self.broker):
            if server is not None:
                server.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ------------------------------------------------------------------ addresses
    @property
    def bootstrap_servers(self) -> str:
        return (
            self.broker.bootstrap_servers if self.broker else self.settings.kafka.bootstrap_servers
        )

    @property
    def redis_url(self) -> str:
        return self.redis.url if self.redis else self.settings.redis.url

    # ------------------------------------------------------------------ workers
    def add_worker(self, index: int) -> WorkerProcess:
        assert self.work_dir is not None
        port = free_port()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "REDIS_URL": self.redis_url,
            "WORKER_WEB_PORT": str(port),
            "WORKER_DATA_DIR": str(self.work_dir / f"worker-{index}"),
            **self.worker_env,
        }
        process = WorkerProcess(index, port, self.work_dir / f"worker-{index}.log", env)
        process.start()
        self.processes.append(process)
        return process

    def add_service(
        self, command: str, index: int, env: Mapping[str, str] | None = None
    ) -> WorkerProcess:
        """Start an ``intent-stream triggers`` or ``api`` process beside the workers; its
        ``/health`` (and ``/metrics``) answer on ``web_port``."""
        assert self.work_dir is not None
        port = free_port()
        port_var = {"triggers": "TRIGGERS_WEB_PORT", "api": "API_PORT"}[command]
        full_env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "REDIS_URL": self.redis_url,
            "WORKER_DATA_DIR": str(self.work_dir / f"{command}-{index}"),
            **self.worker_env,
            **(env or {}),
            port_var: str(port),
        }
        name = f"{command}-{index}"
        process = WorkerProcess(index, port, self.work_dir / f"{name}.log", full_env, None, command)
        process.start()
        self.extra.append(process)
        return process

    def restart_worker(self, index: int) -> WorkerProcess:
        old = self.processes[index]
        old.stop()
        old.start()
        return old

    def wait_healthy(self, timeout_s: float = 120.0, *, assigned: bool = False) -> None:
        """Wait until every running worker answers ``/health`` as ready; with ``assigned``,
        also until each owns partitions of the events topic (its consumer group has joined),
        so that what is produced next is measured from the first event."""
        deadline = time.monotonic() + timeout_s
        for process in [*self.processes, *self.extra]:
            while not _is_ready(process, assigned and process.command != "api"):
                if not process.running:
                    raise WorkerFailed(f"worker {process.index} exited:\n{process.log_tail()}")
                if time.monotonic() > deadline:
                    raise WorkerFailed(
                        f"worker {process.index} not healthy in {timeout_s:.0f} s:\n"
                        f"{process.log_tail()}"
                    )
                time.sleep(0.25)


def _is_ready(process: WorkerProcess, assigned: bool) -> bool:
    body = process.health()
    if body is None or not body.get("ready"):
        return False
    return not assigned or int(str(body.get("assigned_partitions", 0))) > 0
