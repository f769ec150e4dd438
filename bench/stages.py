"""Running one benchmark stage: start its process(es), sample progress, stop, compute rates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.probes import GroupProgress, Sample, Sampler, slope
from stream_app.local.embedded import free_port
from stream_app.local.stack import WorkerProcess

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Proc:
    """A stage process in its own process group (stopped with SIGTERM, then SIGKILL).

    It runs in the repository root unless ``cwd`` names another tree, so ``-m bench.x`` and
    ``-m stream_app.cli`` import this checkout whatever directory the benchmark started in."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path | None = None
    web_port: int = 0
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log_path.open("ab") as log_file:
            self.popen = subprocess.Popen(
                [sys.executable, *self.args],
                env=self.env,
                cwd=self.cwd or REPO,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def wait_healthy(self, timeout_s: float = 120.0) -> None:
        """Worker processes: until /health says ready."""
        probe = WorkerProcess(0, self.web_port, self.log_path, self.env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.args} exited: {self.tail()}")
            body = probe.health()
            if body is not None and body.get("ready"):
                return
            time.sleep(0.25)
        raise RuntimeError(f"{self.args} not healthy: {self.tail()}")

    def wait_for_line(self, text: str, timeout_s: float = 120.0) -> str:
        """The first log line containing ``text``, once the process printed it."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if text in line:
                    return line.strip()
            if time.monotonic() > deadline or (self.popen and self.popen.poll() is not None):
                raise RuntimeError(f"{self.args} did not print {text!r}: {self.tail()}")
            time.sleep(0.25)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def worker_proc(env: Mapping[str, str], log_path: Path, cwd: Path | None = None) -> Proc:
    port = free_port()
    full = {**os.environ, **env, "WORKER_WEB_PORT": str(port)}
    return Proc(["-m", "stream_app.cli", "worker"], full, log_path, cwd=cwd, web_port=port)


@dataclass
class Drain:
    """Committed offsets (and /metrics) of one stage while it works through the backlog."""

    committed: list[tuple[float, int]]
    metrics: list[Sample] = field(default_factory=list)
    target: int = 0

    def events_per_s(self) -> float:
        """Sustained end-to-end rate, skipping start-up (< 2 %) and the tail (> 98 %)."""
        points = [(t, float(v)) for t, v in self.committed]
        return slope(points, 0.02 * self.target, 0.98 * self.target)

    def series(self, name: str) -> list[tuple[float, float]]:
        return [(t, values.get(name, 0.0)) for t, values in self.metrics]


def drain(
    progress: GroupProgress,
    target: int,
    cap_s: float,
    ports: list[int] | None = None,
    alive: list[Proc] | None = None,
) -> Drain:
    """Sample until ``target`` events are committed or ``cap_s`` has passed."""
    sampler = Sampler(progress, metric_ports=ports or [])
    sampler.start()
    deadline = time.monotonic() + cap_s
    try:
        while time.monotonic() < deadline and sampler.latest() < target:
            for proc in alive or []:
                if proc.popen is not None and proc.popen.poll() not in (None, 0):
                    raise RuntimeError(f"stage process died: {proc.tail()}")
            time.sleep(0.2)
    finally:
        sampler.stop.set()
        sampler.join(10)
        progress.close()
    return Drain(sampler.committed, sampler.metrics, target)
