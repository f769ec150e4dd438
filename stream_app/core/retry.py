"""Retry policies as values: what to wait before attempt N, nothing else."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Bounded exponential backoff with "equal jitter": a delay in [d/2, d], d = base * 2**n.

    Jitter spreads the retries of many workers after a shared outage (a Redis restart) so
    they do not stampede the server at the same instant.
    """

    base_s: float = 0.05
    cap_s: float = 2.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        ceiling = min(self.cap_s, self.base_s * (2 ** min(attempt, 30)))
        return ceiling * (0.5 + 0.5 * rand())
