"""Deadline-aware scoring batches: how many waiting sessions to score in the next model call.

Pure logic (no I/O, no clocks of its own: every call takes ``now_ms``), so it is unit-tested
with a fake clock and a fake model time.

Two parts:

* ``CostModel`` learns, online, how long one scoring batch takes (model call plus publishing
  its scores) as ``a + b * sessions + c * sessions * padded_len``. It fits the recent batches
  by ridge least squares pulled toward a prior, reweights outliers (Tukey's biweight) so a noisy
  neighbour's slow batch does not wreck the fit, and multiplies the fit by a safety factor: a
  high quantile of the recent observed/predicted ratios, so a slower machine shows up in the
  estimate without letting a single spike dominate it. The features are generic (no
  assumption about the model): ``padded_len`` is the longest window in the batch, in events.
* ``BatchPolicy`` decides, whenever the scorer is free and sessions wait; it never leaves the
  scorer idle while a session waits (work-conserving):
    - a full batch waits (a backlog): ``max_batch``, the throughput size (``size``);
    - the oldest event has already missed its budget: everything waiting, up to
      ``max_batch``, to drain (``deadline``);
    - more wait than the model can score before the oldest event's budget runs out
      (``a + b n + c n L <= budget - age``): only as many as fit, but never fewer than the
      batch that keeps up with the recent arrival rate, since smaller calls would cost
      throughput and grow the queue (``deadline``);
    - otherwise everything waiting (``idle``: the scorer was free and the batch fits).
  A budget of 0 is the old size-only policy: everything waiting, up to ``max_batch``.

  Waiting for a bigger batch while the scorer is idle was tried and dropped: in the
  simulation (``bench/policy_sim.py``) it raised p50 by half and p99 too, for both a CPU
  BERT and a cheap model; with a linear cost, batches grow by themselves while the scorer
  is busy.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RELEASE_REASONS = ("size", "deadline", "idle")
# Prior before anything is measured: 5 ms per batch, 10 ms per session (a CPU BERT-sized model);
# it only decides the first few batches, the fit replaces it within ``MIN_FIT`` batches.
PRIOR_MS = (5.0, 10.0, 0.0)
HISTORY = 64  # batches the fit looks at
MIN_FIT = 4  # batches before the fit is trusted over the prior
DECAY = 0.97  # weight of a batch per newer batch (adapts within a few dozen batches)
TUKEY_C = 4.685  # residuals beyond C robust sigmas get no weight (a neighbour's slow batch)
MARGIN_QUANTILE = 0.9
MARGIN_RANGE = (1.0, 3.0)
ARRIVAL_WINDOW_MS = 1_000.0  # arrival rate over this recent stretch
TARGET_UTILISATION = 0.8  # size batches so the model is at most this busy


@dataclass(frozen=True, slots=True)
class BatchShape:
    sessions: int
    padded_len: int  # the longest window in the batch (events): what it is padded to

    def features(self) -> tuple[float, float, float]:
        return 1.0, float(self.sessions), float(self.sessions * self.padded_len)


class CostModel:
    """Milliseconds one scoring batch takes, learnt from the batches scored so far."""

    def __init__(
        self,
        prior_ms: tuple[float, float, float] = PRIOR_MS,
        history: int = HISTORY,
        decay: float = DECAY,
    ) -> None:
        self.prior = np.asarray(prior_ms, dtype=np.float64)
        self.coef = self.prior.copy()
        self._coef = tuple(float(v) for v in self.coef)  # plain floats: estimates are hot
        self.margin = 1.0
        self.decay = decay
        self._x: deque[tuple[float, float, float]] = deque(maxlen=history)
        self._y: deque[float] = deque(maxlen=history)

    def __len__(self) -> int:
        return len(self._y)

    def observe(self, shape: BatchShape, elapsed_ms: float) -> None:
        if shape.sessions < 1 or not math.isfinite(elapsed_ms) or elapsed_ms < 0:
            return
        self._x.append(shape.features())
        self._y.append(elapsed_ms)
        self._fit()

    def fitted_ms(self, shape: BatchShape) -> float:
        """The fit alone (no safety factor)."""
        a, b, c = self._coef
        return a + b * shape.sessions + c * shape.sessions * shape.padded_len

    def estimate_ms(self, shape: BatchShape) -> float:
        """What the policy plans with: the fit times the recent safety factor."""
        return self.fitted_ms(shape) * self.margin

    def _fit(self) -> None:
        x = np.asarray(self._x, dtype=np.float64)
        y = np.asarray(self._y, dtype=np.float64)
        count = len(y)
        weights = self.decay ** np.arange(count - 1, -1, -1, dtype=np.float64)
        # Ridge toward the prior, scaled per feature; it dominates until MIN_FIT batches.
        scale = np.maximum(np.abs(x).mean(axis=0), 1e-9)
        strength = 1e-3 if count >= MIN_FIT else 10.0
        coef = self.coef
        recency = weights
        for _ in range(4):  # iteratively reweighted: Tukey's biweight on the residuals
            coef = _ridge(x, y, weights, self.prior, strength * recency.sum() / scale**2)
            residuals = y - x @ coef
            sigma = 1.4826 * float(np.median(np.abs(residuals))) + 1e-6
            u = np.minimum(np.abs(residuals) / (TUKEY_C * sigma), 1.0)
            weights = recency * (1.0 - u**2) ** 2
        self.coef = np.maximum(coef, 0.0)
        if self.coef[1] + self.coef[2] <= 0:  # a batch never costs nothing per session
            self.coef[1] = self.prior[1] or 1e-3
        self._coef = tuple(float(v) for v in self.coef)
        predicted = np.maximum(x @ self.coef, 1e-6)
        recent = (y / predicted)[-min(count, 32) :]
        low, high = MARGIN_RANGE
        self.margin = float(np.clip(np.quantile(recent, MARGIN_QUANTILE), low, high))


def _ridge(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, prior: np.ndarray, penalty: np.ndarray
) -> np.ndarray:
    """argmin sum w (y - x c)^2 + sum penalty (c - prior)^2."""
    xtw = x.T * w
    lhs = xtw @ x + np.diag(penalty)
    rhs = xtw @ y + penalty * prior
    return np.asarray(np.linalg.solve(lhs, rhs), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Waiting:
    """One pending session as the policy sees it (queue order, oldest first)."""

    arrived_ms: int  # when its oldest waiting event arrived
    length: int  # its window length (events)


@dataclass(frozen=True, slots=True)
class Decision:
    size: int  # sessions to score now (0 only when none wait)
    reason: str = ""  # size | deadline | idle when size > 0


class BatchPolicy:
    """When to release a scoring batch and how big (see the module docstring)."""

    def __init__(self, budget_ms: float, max_batch: int, cost: CostModel | None = None) -> None:
        if max_batch < 1 or budget_ms < 0:
            raise ValueError("max_batch must be positive and budget_ms not negative")
        self.budget_ms = float(budget_ms)
        self.max_batch = max_batch
        self.cost = cost or CostModel()
        self._arrivals: deque[tuple[float, int]] = deque()

    def arrived(self, now_ms: float, sessions: int) -> None:
        """New sessions joined the queue (coalesced updates do not count)."""
        if sessions > 0:
            self._arrivals.append((now_ms, sessions))
        self._forget(now_ms)

    def arrival_rate_per_ms(self, now_ms: float) -> float:
        self._forget(now_ms)
        if not self._arrivals:
            return 0.0
        span = max(now_ms - self._arrivals[0][0], ARRIVAL_WINDOW_MS / 4)
        return sum(n for _, n in self._arrivals) / span

    def observe(self, shape: BatchShape, elapsed_ms: float) -> None:
        self.cost.observe(shape, elapsed_ms)

    def decide(self, now_ms: float, head: Sequence[Waiting], waiting: int) -> Decision:
        """``head``: the first sessions of the queue (at least ``max_batch`` of them when that
        many wait); ``waiting``: how many sessions wait in all."""
        if waiting < 1 or not head:
            return Decision(0)
        available = min(waiting, self.max_batch, len(head))
        if self.budget_ms <= 0 or waiting >= self.max_batch:
            return Decision(available, "size" if waiting >= self.max_batch else "idle")
        oldest = min(item.arrived_ms for item in head[:available])
        left_ms = self.budget_ms - max(0.0, now_ms - oldest)
        fits = self._fits(head[:available], left_ms)
        if fits == 0:  # already late: drain with the biggest batch at hand
            return Decision(available, "deadline")
        if fits < available:  # more wait than the budget allows in one batch: cut it, but
            # never below the size that keeps up with arrivals (smaller calls would cost
            # throughput, and the queue would grow)
            needed = min(self._batch_needed(now_ms, head[:available]), available)
            return Decision(max(fits, math.ceil(needed)), "deadline")
        return Decision(available, "idle")

    def _fits(self, head: Sequence[Waiting], left_ms: float) -> int:
        """The largest n whose batch (the first n sessions) ends within ``left_ms``."""
        longest, fits = 0, 0
        for n, item in enumerate(head, start=1):
            longest = max(longest, item.length)
            if self.cost.estimate_ms(BatchShape(n, longest)) > left_ms:
                break
            fits = n
        return fits

    def _batch_needed(self, now_ms: float, head: Sequence[Waiting]) -> float:
        """The smallest batch at which the model keeps up with the arrival rate, busy at most
        ``TARGET_UTILISATION``: n >= rate * cost(n) / u, with cost(n) = a + n * per_session."""
        rate = self.arrival_rate_per_ms(now_ms)
        if rate <= 0:
            return 1.0
        shape = _shape(head)
        fixed = self.cost.estimate_ms(BatchShape(0, 0))
        per_session = (self.cost.estimate_ms(shape) - fixed) / shape.sessions
        spare = TARGET_UTILISATION - rate * per_session
        if spare <= 0:
            return math.inf
        return max(1.0, rate * fixed / spare)

    def _forget(self, now_ms: float) -> None:
        while self._arrivals and self._arrivals[0][0] < now_ms - ARRIVAL_WINDOW_MS:
            self._arrivals.popleft()


def _shape(head: Sequence[Waiting]) -> BatchShape:
    return BatchShape(len(head), max((item.length for item in head), default=0))
