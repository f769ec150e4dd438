"""Bad input on the command line: one line naming the problem, exit 2, within seconds.

Table-driven, through the real ``intent-stream`` CLI in a subprocess, each case checked
before anything connects (or against an address nothing listens on) or loads a model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stream_app.local.embedded import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# Every case fails before any heavy import (torch) or connection; the broker check waits 5 s.
# Generous for the shared 2-core CI box.
LIMIT_S = 20.0
REES46_HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
)


@dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[Path], list[str]]
    says: str  # text the last output line must contain
    env: dict[str, str] = field(default_factory=dict)


def _files(tmp: Path) -> dict[str, Path]:
    latin1 = tmp / "latin1.csv"
    row = "2019-10-01 00:00:00 UTC,view,1,2,,caf\xe9,1.0,3,s\n".encode("latin-1")
    latin1.write_bytes(REES46_HEADER.encode() + row * 3)
    wrong = tmp / "wrong.csv"
    wrong.write_text("a,b,c\n1,2,3\n")
    good = tmp / "good.csv"
    good.write_text(REES46_HEADER + "2019-10-01 00:00:00 UTC,view,1,2,,acme,1.0,3,s\n")
    not_dir = tmp / "plain-file"
    not_dir.write_text("x")
    return {"latin1": latin1, "wrong": wrong, "good": good, "file": not_dir}


def _closed() -> str:
    return f"127.0.0.1:{free_port()}"


CASES = [
    Case("worker: config error names the whole variable", lambda t: ["worker"],
         "BATCH_MAX_SIZE", {"BATCH_MAX_SIZE": "-1"}),
    Case("worker: unreachable broker", lambda t: ["worker"], "cannot reach the broker",
         {"KAFKA_BOOTSTRAP_SERVERS": _closed(), "REDIS_URL": f"redis://{_closed()}"}),
    Case("worker: missing TLS file", lambda t: ["worker"], "KAFKA_SSL_CAFILE",
         {"KAFKA_BOOTSTRAP_SERVERS": _closed(), "REDIS_URL": f"redis://{_closed()}",
          "KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}),
    Case("replay: missing file", lambda t: ["replay", str(t / "nope.csv")], "no such file"),
    Case("replay: a directory", lambda t: ["replay", str(t)], "not readable as an event log"),
    Case("replay: not UTF-8", lambda t: ["replay", str(_files(t)["latin1"])], "not UTF-8"),
    Case("replay: wrong header", lambda t: ["replay", str(_files(t)["wrong"])],
         "not a REES46 CSV"),
    Case("replay: negative rate", lambda t: ["replay", str(_files(t)["good"]), "--rate", "-5"],
         "--rate must be > 0"),
    Case("replay: negative limit",
         lambda t: ["replay", str(_files(t)["good"]), "--limit", "-1"], "--limit must be >= 0"),
    Case("replay: unreachable broker",
         lambda t: ["replay", str(_files(t)["good"]), "--bootstrap-servers", _closed()],
         "cannot reach the broker"),
    Case("demo: missing events", lambda t: ["demo", "--events", str(t / "nope.csv")],
         "no such file"),
    Case("demo: negative limit", lambda t: ["demo", "--limit", "-3"], "--limit must be >= 0"),
    Case("demo: negative timeout", lambda t: ["demo", "--timeout", "-1"],
         "--timeout must be > 0"),
    Case("demo: unreachable Redis", lambda t: ["demo"], "Redis is not reachable",
         {"REDIS_URL": f"redis://{_closed()}"}),
    Case("train: shipped weights are not overwritten", lambda t: ["train"],
         "would overwrite the shipped weights"),
    Case("train: missing data",
         lambda t: ["train", "--out", str(t / "w"), "--data", str(t / "nope.csv")],
         "no such file"),
    Case("train: negative epochs",
         lambda t: ["train", "--out", str(t / "w"), "--data", str(_files(t)["good"]),
                    "--epochs", "-2"], "--epochs must be >= 0"),
    Case("evaluate: missing events",
         lambda t: ["evaluate", "--events", str(t / "nope.csv"), "--report-json",
                    str(t / "r.json")], "no such file"),
    Case("build-model: --out is a file",
         lambda t: ["build-model", "--out", str(_files(t)["file"])], "is a file"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_one_line_and_exit_2(case: Case, tmp_path: Path) -> None:
    env = {**os.environ, "WORKER_WEB_PORT": "0", "KAFKA_BOOTSTRAP_SERVERS": "",
           "REDIS_URL": "", **case.env}  # fmt: skip
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "stream_app.cli", *case.args(tmp_path)],
                          env=env, capture_output=True, timeout=LIMIT_S * 2,
                          check=False)  # fmt: skip
    took = time.monotonic() - started
    output = (done.stdout + done.stderr).decode(errors="replace")
    lines = [line for line in output.splitlines() if line.strip()]
    assert done.returncode == 2, output
    assert "Traceback" not in output, output
    assert lines, "no message at all"
    assert case.says in lines[-1], output
    assert len(lines) <= 3, f"{len(lines)} lines instead of one:\n{output}"
    assert took < LIMIT_S, f"took {took:.1f} s"
