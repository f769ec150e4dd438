"""ONNX Runtime CPU backend (fp32 or dynamic-INT8 graph)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stream_app.errors import ModelLoadError
from stream_app.scoring.model_dir import ModelMetadata, load_metadata, require_files
from stream_app.scoring.preprocess import (
    EncodedBatch,
    Preprocessor,
    SnapshotScoring,
    score_batches,
)

if TYPE_CHECKING:
    import onnxruntime as ort


EXPECTED_INPUTS = ("input_ids", "attention_mask", "features")


def create_session(
    path: Path,
    threads: int = 0,
    level: Any = None,
    save_to: Path | None = None,
) -> ort.InferenceSession:
    """A CPU session with all graph optimizations (unless ``level`` says otherwise).

    Errors from a missing or corrupt file become ``ModelLoadError`` here, at load time.
    ``save_to`` writes the optimized graph (used by export to fold constants offline).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level is None else level
    )
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if save_to is not None:
        options.optimized_model_filepath = str(save_to)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        raise ModelLoadError(f"cannot load ONNX model {path}: {exc}") from exc


def run_session(
    session: ort.InferenceSession,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    features: np.ndarray,
) -> np.ndarray:
    feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "features": features}
    (probability,) = session.run(["probability"], feeds)
    return np.asarray(probability, dtype=np.float32)


def _check_signature(session: ort.InferenceSession, path: Path, n_features: int) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    if set(inputs) != set(EXPECTED_INPUTS):
        raise ModelLoadError(f"{path}: inputs {sorted(inputs)} != {sorted(EXPECTED_INPUTS)}")
    width = inputs["features"].shape[1]
    if isinstance(width, int) and width != n_features:
        raise ModelLoadError(f"{path}: {width} features, metadata lists {n_features}")
    if [o.name for o in session.get_outputs()] != ["probability"]:
        raise ModelLoadError(f"{path}: output must be 'probability'")


class OnnxScorer(SnapshotScoring):
    """Synchronous; call it from a worker thread."""

    def __init__(self, model_dir: Path, variant: str = "fp32", threads: int = 0) -> None:
        self.metadata: ModelMetadata = load_metadata(model_dir)
        if variant not in self.metadata.onnx:
            raise ModelLoadError(f"model directory {model_dir} has no {variant!r} ONNX graph")
        path = Path(model_dir) / self.metadata.onnx[variant]
        require_files(model_dir, [self.metadata.onnx[variant]])
        self.session = create_session(path, threads)
        _check_signature(self.session, path, len(self.metadata.feature_names))
        self.preprocessor = Preprocessor(model_dir, self.metadata)
        self.model_version = f"{self.metadata.model_version}-onnx-{variant}"
        self.max_tokens = self.metadata.max_tokens
        self._warm_up(path)

    def _warm_up(self, path: Path) -> None:
        # One real run so a graph that loads but cannot execute fails at start-up.
        batch = self.preprocessor.encode_texts(
            ["view"], np.zeros((1, len(self.metadata.feature_names)), dtype=np.float32)
        )[0]
        try:
            probability = self._run(batch)
        except Exception as exc:
            raise ModelLoadError(f"{path}: warm-up inference failed: {exc}") from exc
        if probability.shape != (1,) or not np.all(np.isfinite(probability)):
            raise ModelLoadError(f"{path}: warm-up produced {probability!r}")

    def _run(self, batch: EncodedBatch) -> np.ndarray:
        return run_session(self.session, batch.input_ids, batch.attention_mask, batch.features)

    def score_encoded(self, batches: Sequence[EncodedBatch]) -> np.ndarray:
        return score_batches(batches, self._run)

    def close(self) -> None:
        self.session = None
