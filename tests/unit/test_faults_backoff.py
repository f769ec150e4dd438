"""The store-outage retry delay: exponential, capped, jittered within [d/2, d]."""

from __future__ import annotations

import random

from stream_app.core.retry import Backoff


def test_delays_double_until_the_cap() -> None:
    backoff = Backoff(base_s=0.05, cap_s=2.0)
    ceilings = [backoff.delay(attempt, rand=lambda: 1.0) for attempt in range(9)]
    assert ceilings == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]


def test_jitter_stays_between_half_and_full_delay() -> None:
    backoff = Backoff(base_s=0.05, cap_s=2.0)
    rng = random.Random(7)
    delays = [backoff.delay(10, rand=rng.random) for _ in range(500)]
    assert all(1.0 <= d <= 2.0 for d in delays)
    assert max(delays) - min(delays) > 0.5  # really spread, so workers do not stampede


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert Backoff(0.05, 2.0).delay(10**9, rand=lambda: 0.0) == 1.0
