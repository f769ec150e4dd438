"""Scoring: the ``Scorer`` protocol and ``load_scorer`` (onnx | torch | tensorrt).

Backends are synchronous and do their own preprocessing (``preprocess.Preprocessor``); the
worker calls ``score`` from a thread. Each backend loads, validates and warms up its model in
its constructor, so a bad model directory is a ``ModelLoadError`` at start-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from stream_app.core.errors import ModelLoadError
from stream_app.core.extras import require_extra

if TYPE_CHECKING:
    from stream_app.core.config import ModelSettings
    from stream_app.sessions.windows import WindowSnapshot

__all__ = ["Scorer", "load_scorer", "resolve_model_dir"]


@runtime_checkable
class Scorer(Protocol):
    model_version: str
    max_tokens: int

    def score(self, snapshots: Sequence[WindowSnapshot]) -> np.ndarray:
        """Calibrated purchase probabilities, float32, one per snapshot, in input order."""
        ...

    def close(self) -> None: ...


def resolve_model_dir(settings: ModelSettings) -> Path:
    """``MODEL_DIR`` if set, else the bundled model's built directory (never builds it)."""
    if settings.dir is not None:
        if not Path(settings.dir).is_dir():
            raise ModelLoadError(f"MODEL_DIR {settings.dir} is not a directory")
        return Path(settings.dir)
    from stream_app.scoring.locate import bundled_model_dir

    return bundled_model_dir()


def require_backend_packages(settings: ModelSettings) -> None:
    """A backend whose packages are missing is an installation fault: say so in one line
    before anything connects anywhere (``MissingExtra``)."""
    if settings.backend == "torch":
        require_extra("torch", "MODEL_BACKEND=torch")


def load_scorer(settings: ModelSettings) -> Scorer:
    """Build the backend ``settings.backend`` names over the resolved model directory."""
    require_backend_packages(settings)
    model_dir = resolve_model_dir(settings)
    if settings.backend == "onnx":
        from stream_app.scoring.onnx_backend import OnnxScorer

        return OnnxScorer(model_dir, variant=settings.variant, threads=settings.threads)
    if settings.backend == "torch":
        from stream_app.scoring.torch_backend import TorchScorer

        return TorchScorer(model_dir, device=settings.device, threads=settings.threads)
    if settings.backend == "tensorrt":
        from stream_app.scoring.tensorrt_backend import TensorRTScorer

        return TensorRTScorer(model_dir, device=settings.device)
    raise ModelLoadError(f"unknown MODEL_BACKEND {settings.backend!r}")
