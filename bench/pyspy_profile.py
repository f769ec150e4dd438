"""``python -m bench.pyspy_profile``: where a stage's CPU time goes, sampled with py-spy.

Starts the embedded stack, preloads a backlog, runs one stage process (our worker or the
consume-only Faust agent) and records it with ``py-spy record --format raw`` (collapsed
stacks; py-spy is a dev tool: ``pip install py-spy``). Prints the functions with the most
samples on-CPU, by own time and including callees, grouped by package.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench.data import default_log, looped_messages, preload
from bench.stages import Proc, worker_proc
from stream_app.core.config import KafkaSettings, Settings
from stream_app.core.topics import ensure_topics
from stream_app.local.stack import LocalStack

PARTITIONS = 8


def py_spy() -> str:
    """py-spy next to this interpreter (a venv that is not activated) or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy not found: pip install py-spy (it is in the [dev] extra)")
    return found


def record(pid: int, seconds: int, out: Path) -> None:
    subprocess.run(
        [py_spy(), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
         "--format", "raw", "--subprocesses", "--nonblocking", "-o", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip


def summarize(collapsed: Path, top: int) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        packages[_package(frames[-1])] += count
    lines = [f"{total} samples"]
    for title, counter in (("own", own), ("inclusive", inclusive), ("package", packages)):
        lines.append(f"-- top by {title}")
        lines += [f"{100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(top)]
    return "\n".join(lines)


def _package(frame: str) -> str:
    """``fn (onnxruntime/capi/x.py:12)`` -> ``onnxruntime``; our code -> its module."""
    path = frame.rpartition("(")[2].split(":", 1)[0]
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    if path.startswith(("stream_app/", "bench/")):
        return path
    return path.split("/", 1)[0] if "/" in path else path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("worker", "faust"))
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-profile.txt"))
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the stage")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="intent-profile-"))
    with LocalStack(Settings(kafka=KafkaSettings(partitions=PARTITIONS)), workers=0) as stack:
        topics = {f"p-{name}": PARTITIONS for name in ("events", "scores", "dlq")}
        ensure_topics(stack.bootstrap_servers, topics, 1)
        preload(stack.bootstrap_servers, "p-events", looped_messages(default_log(), args.events))
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
            "REDIS_URL": stack.redis_url,
            "KAFKA_EVENTS_TOPIC": "p-events",
            "KAFKA_SCORES_TOPIC": "p-scores",
            "KAFKA_DLQ_TOPIC": "p-dlq",
            "KAFKA_PARTITIONS": str(PARTITIONS),
            "WORKER_APP_ID": "profile",
            "WORKER_DATA_DIR": str(work / "data"),
            "WORKER_LOG_LEVEL": "WARNING",
            "MODEL_DIR": str(args.model_dir),
            **dict(item.split("=", 1) for item in args.env),
        }
        proc = worker_proc(env, work / "stage.log")
        if args.stage == "faust":
            proc = Proc(["-m", "bench.faust_consume"], proc.env, work / "stage.log")
        proc.start()
        try:
            if args.stage == "worker":
                proc.wait_healthy()
            assert proc.popen is not None
            record(proc.popen.pid, args.seconds, work / "collapsed.txt")
        finally:
            proc.stop()
    text = summarize(work / "collapsed.txt", args.top)
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
