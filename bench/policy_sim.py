"""``python -m bench.policy_sim``: the batch policies in a simulated scorer (no broker, no model).

A discrete-event simulation of the scoring stage alone: sessions arrive (Poisson, or in bursts as a
Kafka fetch or a rebalance catch-up delivers them), one scorer serves batches whose time follows a
cost profile ``a + b n + c n L`` with log-normal noise, and ``stream_app.serving.deadline`` decides
every release, learning the cost online exactly as in the worker. It isolates the policy from the
machine: a shared 2-core box moves real latencies by 30-50 %, the simulation is deterministic
(seeded). It is not a measurement of the worker: the fixed path every event pays outside the scorer
(micro-batch wait, Redis, Kafka) is not in it.

    python -m bench.policy_sim --out bench-results/policy-sim
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.plot import latency_vs_load
from stream_app.serving.deadline import BatchPolicy, BatchShape, CostModel, Waiting


@dataclass(frozen=True)
class Profile:
    name: str
    a_ms: float  # per call (executor hop, publishing the scores)
    b_ms: float  # per session
    c_ms: float  # per session and padded position (events)

    def ms(self, shape: BatchShape) -> float:
        return (
            self.a_ms + self.b_ms * shape.sessions + self.c_ms * shape.sessions * shape.padded_len
        )


PROFILES = {
    # run 4's worker: ~440 ms per 64-session batch on 2 CPU cores, small per-call cost.
    "cpu-bert": Profile("cpu-bert", a_ms=8.0, b_ms=6.5, c_ms=0.05),
    # a cheap session model over cached embeddings: the call and its publish dominate.
    "cheap": Profile("cheap", a_ms=12.0, b_ms=0.2, c_ms=0.01),
}


def capacity_per_s(profile: Profile, max_batch: int, mean_len: float) -> float:
    return 1000 * max_batch / profile.ms(BatchShape(max_batch, math.ceil(mean_len * 2)))


def simulate(
    profile: Profile,
    budget_ms: float,
    rate_per_s: float,
    seconds: float,
    burst: int = 1,
    max_batch: int = 64,
    seed: int = 0,
    noise: float = 0.1,
) -> dict[str, Any]:
    """Latencies (ms) of every session that arrived in ``seconds``; arrivals in groups of
    ``burst`` at once (Poisson group times), so the mean rate stays ``rate_per_s``."""
    rng = random.Random(seed)
    policy = BatchPolicy(budget_ms, max_batch, cost=CostModel())
    arrivals: list[tuple[float, int]] = []  # (ms, window length)
    t = 0.0
    while t < seconds * 1000:
        t += rng.expovariate(rate_per_s / burst / 1000)
        arrivals += [(t, min(50, 1 + int(rng.expovariate(1 / 2.4)))) for _ in range(burst)]
    queue: list[tuple[float, int]] = []
    latencies: list[float] = []
    reasons: dict[str, int] = {}
    sizes: list[int] = []
    now, nxt = 0.0, 0
    while nxt < len(arrivals) or queue:
        if not queue:  # idle until the next arrival
            now = max(now, arrivals[nxt][0])
        fresh = 0
        while nxt < len(arrivals) and arrivals[nxt][0] <= now:
            queue.append(arrivals[nxt])
            nxt, fresh = nxt + 1, fresh + 1
        policy.arrived(now, fresh)
        head = [Waiting(int(at), length) for at, length in queue[:max_batch]]
        decision = policy.decide(now, head, len(queue))
        taken, queue = queue[: decision.size], queue[decision.size :]
        shape = BatchShape(len(taken), max(length for _, length in taken))
        elapsed = profile.ms(shape) * math.exp(rng.gauss(0, noise))
        policy.observe(shape, elapsed)
        now += elapsed  # the scorer is busy; arrivals meanwhile join the queue
        latencies += [now - at for at, _ in taken]
        reasons[decision.reason] = reasons.get(decision.reason, 0) + 1
        sizes.append(decision.size)
    values = np.asarray(latencies)
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 1),
        "p99_ms": round(float(np.percentile(values, 99)), 1),
        "within_100ms": round(float(np.mean(values <= 100.0)), 4),
        "batches": len(sizes),
        "mean_size": round(float(np.mean(sizes)), 2),
        "release_reasons": reasons,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/policy-sim"))
    parser.add_argument("--budget-ms", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=120.0, help="simulated time per point")
    parser.add_argument("--fractions", default="0.25,0.5,0.65,0.8,0.9")
    args = parser.parse_args(argv)
    fractions = [float(f) for f in args.fractions.split(",")]
    results: dict[str, Any] = {}
    for profile in PROFILES.values():
        capacity = capacity_per_s(profile, 64, 2.4)
        for burst in (1, 32):
            key = f"{profile.name}, bursts of {burst}"
            sweep = []
            for fraction in fractions:
                for policy, budget in (
                    ("size-only", 0.0),
                    (f"deadline {args.budget_ms:g} ms", args.budget_ms),
                ):
                    rate = capacity * fraction
                    point = simulate(profile, budget, rate, args.seconds, burst=burst)
                    sweep.append(
                        {"policy": policy, "fraction": fraction, "rate": round(rate, 1), **point}
                    )
                    print(f"{key:24} {policy:18} load {fraction:.2f} ({rate:7.1f}/s): {point}")
            results[key] = sweep
            name = key.replace(", ", "-").replace(" ", "-")
            latency_vs_load(
                sweep, args.out / f"{name}.png", f"simulated: {key}; capacity {capacity:.0f}/s"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "policy-sim.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
