"""One error tree for the whole app.

``IntentStreamError``
├── ``TransientError``   retried with bounded backoff; offsets are not committed meanwhile
│   ├── ``StoreUnavailable``   Redis down / timing out / loading / out of memory
│   ├── ``ScoringTimeout``     a backend call took too long (the call is abandoned)
│   └── ``ModelUnavailable``   the model backend keeps failing (circuit breaker open)
├── ``StoreRefused``     Redis refuses our commands (NOPERM, auth): fail fast, an operator fixes
└── ``PermanentError``   never retried; the message (or session) goes to the dead-letter topic
    ├── ``InvalidEvent``       a message that is not a valid event (carries a reason code)
    ├── ``SessionStoreError``  Redis rejects one session's keys (WRONGTYPE, script error)
    ├── ``ModelLoadError``     a model directory that cannot be served (raised at start-up)
    └── ``ScoringFailed``      inference fails for one session while the model works

Library errors (redis-py, onnxruntime, aiokafka) are wrapped at the boundary that calls them,
so the rest of the code only ever catches these.
"""

from __future__ import annotations


class IntentStreamError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(IntentStreamError):
    """Settings that cannot work together (raised at start-up, with the variable to fix)."""


class TransientError(IntentStreamError):
    """A failure that is expected to go away: retry with backoff, do not commit offsets."""


class StoreUnavailable(TransientError):
    """The session store (Redis) could not be reached or timed out."""


class ScoringTimeout(TransientError):
    """A scoring backend did not answer in time."""


class ModelUnavailable(TransientError):
    """The model backend fails for every input (a known-good probe included)."""


class StoreRefused(IntentStreamError):
    """Redis refuses the worker's commands (missing ACL permission, bad credentials).

    Retrying cannot fix it and dead-lettering would punish healthy sessions: fail fast."""


class PermanentError(IntentStreamError):
    """A failure that retrying cannot fix: route the input to the dead-letter topic."""


class InvalidEvent(PermanentError):
    """A message that is not a valid event.

    ``reason`` is a short, stable, machine-readable code (``not_json``, ``bad_type:price`` ...)
    used as the DLQ reason and as a metrics label; ``detail`` is for humans.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SessionStoreError(PermanentError):
    """A deterministic Redis error on one session's keys: that session is dead-lettered."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ModelLoadError(PermanentError):
    """A model directory that is missing, incomplete or corrupt."""


class ScoringFailed(PermanentError):
    """Inference failed for one session (an exception isolated to it, or a non-finite
    output) while the model scores other input."""
