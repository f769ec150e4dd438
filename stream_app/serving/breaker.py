"""A circuit breaker for the model backend, as a pure state machine (clock injected).

closed --(``threshold`` failures in a row)--> open --(cooldown elapsed)--> half-open
half-open --(one success)--> closed;  half-open --(a failure)--> open, cooldown doubled
(up to ``max_factor`` x the base). While it is not closed the scoring stage takes nothing,
the ingest stage stops feeding it, nothing is acknowledged, so consumer lag grows and
``/readyz`` answers 503 -- the model being down is never a reason to dead-letter a session.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class CircuitBreaker:
    threshold: int = 3
    cooldown_s: float = 5.0
    max_factor: int = 8
    clock: Callable[[], float] = time.monotonic
    state: str = CLOSED
    failures: int = 0  # consecutive
    opened: int = 0  # consecutive openings without a success, sets the cooldown
    _retry_at: float = field(default=0.0, repr=False)

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def allow(self) -> bool:
        """May a call go to the backend now? Moves open -> half-open once the cooldown passed."""
        if self.state == OPEN and self.clock() >= self._retry_at:
            self.state = HALF_OPEN
        return self.state != OPEN

    def wait_s(self) -> float:
        """Seconds until ``allow`` can be true again (0 when it already is)."""
        return max(0.0, self._retry_at - self.clock()) if self.state == OPEN else 0.0

    def record_success(self) -> None:
        self.state, self.failures, self.opened = CLOSED, 0, 0

    def record_failure(self) -> bool:
        """Count one backend failure; returns True when this opened the breaker."""
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.threshold:
            factor = min(self.max_factor, 2**self.opened)
            self.opened += 1
            self.state = OPEN
            self._retry_at = self.clock() + self.cooldown_s * factor
            return True
        return False
