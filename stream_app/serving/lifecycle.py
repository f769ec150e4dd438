"""Process lifecycle: a bounded shutdown and a fail-fast exit, whatever is down.

Two ways out of a running worker, both bounded by ``WORKER_SHUTDOWN_TIMEOUT_S``:

* **SIGTERM / SIGINT** (Kubernetes stopping the pod): Faust's own graceful stop runs (it
  commits what was acknowledged, i.e. scored or dead-lettered), and a watchdog thread ends the
  process with ``os._exit`` if that stop has not finished in time -- Faust's stop can wait
  forever on a broker or Redis that went away. Exit status 0 when the stop finished, 1 when
  the watchdog cut it short.
* **A fatal error** (a stage that must not continue, e.g. an unexpected exception in the
  ingest stage, or Redis refusing our commands): one CRITICAL line, then the same bounded
  stop, and exit status ``EXIT_FATAL`` so the orchestrator restarts the worker.

Neither path commits anything that was not scored: offsets only move for acknowledged
messages (see ``acks.py``), and ``os._exit`` skips every commit. What was not committed is
consumed again by whoever owns the partition next.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

EXIT_FATAL = 70  # EX_SOFTWARE: the orchestrator must restart the worker
EXIT_SHUTDOWN_TIMEOUT = 1


class Lifecycle:
    """How and when this process ends; one per worker process.

    ``exit`` and ``signal_self`` are injectable so the logic is unit-testable without
    ending the test process.
    """

    def __init__(
        self,
        timeout_s: float,
        *,
        exit: Callable[[int], object] = os._exit,
        signal_self: Callable[[], None] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.exit_code = 0
        self.fatal_reason = ""
        self._exit = exit
        self._signal_self = signal_self or _sigterm_self
        self._armed = threading.Event()
        self._finished = threading.Event()
        # Called (on the loop thread) when the shutdown begins, before Faust's stop.
        self.on_shutdown: list[Callable[[], None]] = []

    @property
    def stopping(self) -> bool:
        return self._armed.is_set()

    def begin_shutdown(self, why: str) -> None:
        """Start the watchdog (once): the process ends within ``timeout_s`` from now."""
        if self._armed.is_set():
            return
        self._armed.set()
        log.info("shutting down (%s); at most %.1f s", why, self.timeout_s)
        threading.Thread(target=self._watch, name="shutdown-watchdog", daemon=True).start()
        for callback in self.on_shutdown:
            callback()

    def fatal(self, reason: str) -> None:
        """Fail fast: record the reason and exit status, then stop through SIGTERM's path."""
        if self.exit_code == 0:
            self.exit_code = EXIT_FATAL
            self.fatal_reason = reason
            log.critical("fatal: %s; stopping the worker (exit %d)", reason, EXIT_FATAL)
        self.begin_shutdown("fatal error")
        self._signal_self()

    def finished(self) -> None:
        """The graceful stop completed. The watchdog stays armed: if interpreter exit then
        hangs (a thread that never returns), it still ends the process in time."""
        self._finished.set()

    def _watch(self) -> None:
        if self._finished.wait(self.timeout_s):
            # Stopped in time; interpreter exit (joining threads) gets the same bound.
            threading.Event().wait(self.timeout_s)
            self._exit(self.exit_code)
            return
        code = self.exit_code or EXIT_SHUTDOWN_TIMEOUT
        log.error(
            "shutdown did not finish within WORKER_SHUTDOWN_TIMEOUT_S=%.1f s; exiting now with "
            "status %d (offsets not committed are consumed again)",
            self.timeout_s,
            code,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._exit(code)


def _sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
