"""Model calls with a real timeout, and failures sorted into "bad session" vs "model down".

``ModelThread`` runs the (synchronous) scorer in a daemon thread. When a call outlives
``MODEL_INFERENCE_TIMEOUT_S`` the thread is *abandoned*: Python cannot stop a thread, so it
is told to exit once its call returns, its result is thrown away, and the next call runs on
a fresh thread -- retries never queue behind a hung call. At most ``MAX_ABANDONED`` abandoned
threads may still be running; beyond that no new call is started (``ModelUnavailable``), so
a wedged backend costs a bounded number of threads. (ONNX Runtime and torch allow concurrent
calls on one session; a TensorRT execution context does not, so with that backend an
abandoned call may still make the next one fail -- which the breaker then handles.)

``Inference.score`` turns one batch into a per-session result:

* the batch works: every finite probability is a score; a non-finite one (NaN, inf) is a
  failure of that session, never a published 0.0;
* the batch raises ``MODEL_RETRIES + 1`` times: a known-good probe window (the canary) is
  scored. If the canary fails too, the model is down: ``ModelUnavailable``, nothing is
  dead-lettered, the caller keeps the batch. If the canary works, the batch is bisected until
  each failing session is alone: only those are failures, with the error as their reason;
* a timeout is never blamed on a session (windows are bounded): ``ModelUnavailable``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_app.core import metrics
from stream_app.core.errors import ModelUnavailable, ScoringTimeout
from stream_app.ingest.events import Event
from stream_app.sessions.windows import WindowRules, WindowSnapshot, expected_window

log = logging.getLogger(__name__)

MAX_ABANDONED = 2
CANARY_SESSION = "__intent_stream_canary__"

ScoreFn = Callable[[list[WindowSnapshot]], np.ndarray]


def canary_window() -> WindowSnapshot:
    """A one-event window every working model can score (used to tell model from input)."""
    event = Event(event_id="canary-1", event_time_ms=1_700_000_000_000, event_type="view",
                  user_session=CANARY_SESSION, product_id="1")  # fmt: skip
    return expected_window(CANARY_SESSION, [event], WindowRules())


class ModelThread:
    """One daemon thread that runs scorer calls in order and hands results to the loop."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Any, asyncio.Future[Any]] | None]
        self._jobs = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, call: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._jobs.put((call, loop, future))
        return future

    def retire(self) -> None:
        """Exit after the current call (whose result nobody will read)."""
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, loop, future = job
            try:
                outcome, failed = call(), False
            except BaseException as exc:
                outcome, failed = exc, True
            try:
                loop.call_soon_threadsafe(_settle, future, outcome, failed)
            except RuntimeError:  # the loop closed meanwhile: nobody is waiting
                return


def _settle(future: asyncio.Future[Any], outcome: Any, failed: bool) -> None:
    if future.done():  # the caller timed out and went on
        return
    if failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


@dataclass
class TimedRunner:
    """Run ``fn`` on a ``ModelThread`` with a timeout that abandons the stuck call."""

    fn: ScoreFn
    timeout_s: float
    max_abandoned: int = MAX_ABANDONED
    _thread: ModelThread | None = None
    _abandoned: list[threading.Thread] = field(default_factory=list)
    _generation: int = 0

    @property
    def abandoned_alive(self) -> int:
        self._abandoned = [t for t in self._abandoned if t.is_alive()]
        return len(self._abandoned)

    async def run(self, snapshots: list[WindowSnapshot]) -> np.ndarray:
        if self._thread is None:
            if self.abandoned_alive >= self.max_abandoned:
                raise ModelUnavailable(
                    f"{self.abandoned_alive} abandoned model calls are still running"
                )
            self._generation += 1
            self._thread = ModelThread(f"scorer-{self._generation}")
        future = self._thread.submit(lambda: self.fn(snapshots))
        try:
            return np.asarray(await asyncio.wait_for(future, self.timeout_s), dtype=np.float64)
        except TimeoutError:
            self._abandon()
            raise ScoringTimeout(
                f"model call exceeded MODEL_INFERENCE_TIMEOUT_S={self.timeout_s:g} s "
                f"({len(snapshots)} sessions); call abandoned"
            ) from None

    def _abandon(self) -> None:
        assert self._thread is not None
        self._thread.retire()
        self._abandoned.append(self._thread.thread)
        self._thread = None
        metrics.ABANDONED_CALLS.inc()

    def close(self) -> None:
        if self._thread is not None:
            self._thread.retire()
            self._thread = None


@dataclass
class BatchResult:
    """Per input position: a probability, or (in ``failures``) why that session failed."""

    probabilities: np.ndarray
    failures: dict[int, str] = field(default_factory=dict)


class Inference:
    def __init__(self, fn: ScoreFn, *, timeout_s: float, retries: int) -> None:
        self.runner = TimedRunner(fn, timeout_s)
        self.retries = retries
        self.canary = canary_window()
        self.last_error = ""

    async def score(self, snapshots: list[WindowSnapshot]) -> BatchResult:
        """Score a batch (see the module doc); raises ``ModelUnavailable`` when the model,
        not the input, is what fails."""
        error: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                probabilities = await self._call(snapshots)
            except (ScoringTimeout, ModelUnavailable) as exc:
                raise ModelUnavailable(str(exc)) from exc
            except Exception as exc:
                error = exc
                log.warning("inference failed (attempt %d): %r", attempt + 1, exc)
                continue
            result = _finite_only(probabilities)
            if len(result.failures) < len(snapshots) or not snapshots:
                return result
            await self._require_canary(f"every output non-finite ({result.failures[0]})")
            return result
        await self._require_canary(repr(error))
        return await self._isolate(snapshots)

    async def _call(self, snapshots: list[WindowSnapshot]) -> np.ndarray:
        try:
            return await self.runner.run(snapshots)
        except Exception as exc:
            metrics.SCORING_FAILURES.inc()
            self.last_error = repr(exc)
            raise

    async def probe(self) -> None:
        """Score the known-good window alone; ``ModelUnavailable`` if that fails."""
        await self._require_canary("probe")

    async def _require_canary(self, why: str) -> None:
        """Raise ``ModelUnavailable`` unless the known-good window scores to a finite value."""
        try:
            value = float((await self._call([self.canary]))[0])
        except Exception as exc:
            raise ModelUnavailable(f"model fails a known-good window too: {exc!r}") from exc
        if not math.isfinite(value):
            raise ModelUnavailable(f"model gives {value} for a known-good window ({why})")

    async def _isolate(self, snapshots: Sequence[WindowSnapshot]) -> BatchResult:
        """Bisect until each failing session is alone (the model is known to work)."""
        try:
            return _finite_only(await self._call(list(snapshots)))
        except (ScoringTimeout, ModelUnavailable) as exc:
            raise ModelUnavailable(str(exc)) from exc
        except Exception as exc:
            if len(snapshots) == 1:
                return BatchResult(np.array([np.nan]), {0: f"inference failed: {exc!r}"})
        middle = len(snapshots) // 2
        left = await self._isolate(snapshots[:middle])
        right = await self._isolate(snapshots[middle:])
        failures = left.failures | {middle + i: why for i, why in right.failures.items()}
        return BatchResult(np.concatenate([left.probabilities, right.probabilities]), failures)

    def close(self) -> None:
        self.runner.close()


def _finite_only(probabilities: np.ndarray) -> BatchResult:
    bad = np.flatnonzero(~np.isfinite(probabilities))
    failures = {int(i): f"non-finite model output ({probabilities[i]})" for i in bad}
    return BatchResult(probabilities, failures)
