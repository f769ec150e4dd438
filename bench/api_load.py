"""Read-API load test: open-loop HTTP load on ``intent-stream api`` over loopback.

Starts a real Redis (embedded) and a real ``intent-stream api`` process (uvicorn), writes
``--sessions`` latest scores the way the worker does, then sends GET requests on a fixed
schedule (``--rate`` per second for ``--duration`` seconds, a warm-up first) with aiohttp on
uvloop, at most ``--max-in-flight`` outstanding. Latency is measured from each request's
*scheduled* time (no coordinated omission: a stalled server cannot hide its queue), so a
generator that falls behind shows up as latency too. 90 % of requests hit known sessions,
10 % unknown ones (404). Bounded in count and time; loopback only.

    python bench/api_load.py --rate 1000 --duration 20 --report-json artifacts/api_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson

from stream_app.api.latest import RedisLatestScores
from stream_app.core.config import RedisSettings
from stream_app.core.redis_connect import redis_client
from stream_app.local.embedded import EmbeddedRedis, free_port
from stream_app.scoring.scores import ScoreRecord

TOKEN = "bench-token-0123456789"  # noqa: S105 - a throwaway loopback token


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds (<= 120)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--report-json", type=Path)
    return parser.parse_args(argv)


async def fill(url: str, sessions: int) -> list[str]:
    latest = RedisLatestScores(redis_client(RedisSettings(url=url)), "bench", 3600)
    now = int(time.time() * 1000)
    ids = [f"session-{i:06d}" for i in range(sessions)]
    for start in range(0, sessions, 1000):
        records = [ScoreRecord(sid, f"user-{i % 5000}", 0.1 + (i % 90) / 100, "bench", 5, 5, "",
                               now, now, now, now) for i, sid in enumerate(ids[start:start + 1000],
                                                                          start)]  # fmt: skip
        await latest.write(records)
    await latest.close()
    return ids


def start_api(redis_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": "bench", "API_PORT": str(port),
        "API_TOKEN": TOKEN, "API_DASHBOARD_FEED": "false", "KAFKA_BOOTSTRAP_SERVERS": "",
    }  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "stream_app.cli", "api"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=1):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"api did not start:\n{log.read_text()[-2000:]}")


async def run_load(port: int, ids: list[str], args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    total_s = args.warmup + args.duration
    n = int(total_s * args.rate)
    paths = [f"/v1/sessions/{rng.choice(ids)}/intent" if rng.random() < 0.9
             else f"/v1/sessions/unknown-{k}/intent" for k in range(n)]  # fmt: skip
    latencies = np.full(n, np.nan)
    statuses: dict[int, int] = {}
    gate = asyncio.Semaphore(args.max_in_flight)
    # Idle client connections close before the server's keep-alive (30 s) could drop them.
    connector = aiohttp.TCPConnector(limit=args.max_in_flight, keepalive_timeout=10)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector,
                                     headers=headers) as http:  # fmt: skip
        # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
        clock = time.perf_counter
        start = clock() + 0.1

        async def one(k: int) -> None:
            scheduled = start + k / args.rate
            status = 0  # a connection error
            async with gate:
                try:
                    async with http.get(paths[k]) as response:
                        await response.read()
                        status = response.status
                except aiohttp.ClientError:
                    pass
            statuses[status] = statuses.get(status, 0) + 1
            latencies[k] = clock() - scheduled

        tasks = []
        for k in range(n):
            delay = start + k / args.rate - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(k)))
        await asyncio.gather(*tasks)
        elapsed = clock() - start
    measured = latencies[int(args.warmup * args.rate) :] * 1000
    return {
        "requests": n, "measured": int(measured.size), "rate_target": args.rate,
        "rate_achieved": round(n / elapsed, 1),
        "statuses": {str(k): v for k, v in statuses.items()},
        **{f"latency_ms_p{q}": round(float(np.nanpercentile(measured, q)), 3)
           for q in (50, 90, 99, 99.9)},
        "latency_ms_max": round(float(np.nanmax(measured)), 3),
    }  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (``/proc/<pid>/stat``), in seconds: the server's
    own cost per request, whatever else the machine is running."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not 0 < args.duration <= 120 or not 0 < args.rate <= 20_000:
        raise SystemExit("--duration must be in (0, 120] and --rate in (0, 20000]")
    import uvloop

    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(log_dir=Path(tmp)) as redis:
        ids = asyncio.run(fill(redis.url, args.sessions))
        port = free_port()
        api = start_api(redis.url, port, Path(tmp) / "api.log")
        try:
            cpu_before = cpu_seconds(api.pid)
            report = uvloop.run(run_load(port, ids, args))
            cpu = cpu_seconds(api.pid) - cpu_before
            report["api_cpu_us_per_request"] = round(1e6 * cpu / report["requests"], 1)
            if any(not k.startswith(("2", "4")) for k in report["statuses"]):
                report["api_log_tail"] = (Path(tmp) / "api.log").read_text()[-1500:]
        finally:
            api.terminate()
            api.wait(10)
    report |= {"machine": f"{os.cpu_count()} cpus (shared)", "generator": "aiohttp+uvloop"}
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    if args.report_json:
        args.report_json.parent.mkdir(parents=True, exist_ok=True)
        args.report_json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
