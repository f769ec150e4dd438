"""ONNX Runtime CPU backend: the item encoder and the session model graphs (fp32)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stream_app.core.errors import ModelLoadError
from stream_app.scoring.item_cache import DEFAULT_CAPACITY, ItemEmbeddingCache
from stream_app.scoring.model_dir import ModelMetadata, load_metadata, require_files
from stream_app.scoring.preprocess import (
    ITEM_INPUTS,
    SESSION_INPUTS,
    EncodedBatch,
    Preprocessor,
    SessionBatch,
    SnapshotScoring,
)

if TYPE_CHECKING:
    import onnxruntime as ort


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


def run_items(session: ort.InferenceSession, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    (embedding,) = session.run(["item_embedding"], {"input_ids": ids, "attention_mask": mask})
    return np.asarray(embedding, dtype=np.float32)


def run_session_model(session: ort.InferenceSession, arrays: tuple[np.ndarray, ...]
                      ) -> np.ndarray:  # fmt: skip
    feeds = dict(zip(SESSION_INPUTS, arrays, strict=True))
    (probability,) = session.run(["probability"], feeds)
    return np.asarray(probability, dtype=np.float32)


def check_signature(
    session: ort.InferenceSession, path: Path, inputs: tuple[str, ...], output: str
) -> None:
    names = {i.name for i in session.get_inputs()}
    if names != set(inputs):
        raise ModelLoadError(f"{path}: inputs {sorted(names)} != {sorted(inputs)}")
    if [o.name for o in session.get_outputs()] != [output]:
        raise ModelLoadError(f"{path}: output must be {output!r}")


def _check_features(session: ort.InferenceSession, path: Path, meta: ModelMetadata) -> None:
    width = next(i.shape[1] for i in session.get_inputs() if i.name == "features")
    if isinstance(width, int) and width != len(meta.feature_names):
        raise ModelLoadError(f"{path}: {width} features, metadata lists {len(meta.feature_names)}")


class OnnxScorer(SnapshotScoring):
    """Synchronous; call it from a worker thread (ONNX Runtime sessions are thread-safe)."""

    def __init__(
        self, model_dir: Path, variant: str = "fp32", threads: int = 0,
        cache_size: int = DEFAULT_CAPACITY,
    ) -> None:  # fmt: skip
        self.metadata: ModelMetadata = load_metadata(model_dir)
        if variant == "session" or variant not in self.metadata.onnx:
            raise ModelLoadError(f"model directory {model_dir} has no {variant!r} ONNX graph")
        names = [self.metadata.onnx[variant], self.metadata.onnx["session"]]
        require_files(model_dir, names)
        item_path, session_path = (Path(model_dir) / n for n in names)
        self.items_session = create_session(item_path, threads)
        check_signature(self.items_session, item_path, ITEM_INPUTS, "item_embedding")
        self.session = create_session(session_path, threads)
        check_signature(self.session, session_path, SESSION_INPUTS, "probability")
        _check_features(self.session, session_path, self.metadata)
        self.preprocessor = Preprocessor(model_dir, self.metadata)
        self.item_cache = ItemEmbeddingCache(self.metadata.item_dim, cache_size)
        self.model_version = f"{self.metadata.model_version}-onnx-{variant}"
        self.max_tokens = self.metadata.max_tokens
        warm_up(self, model_dir)

    def run_items(self, batch: EncodedBatch) -> np.ndarray:
        return run_items(self.items_session, batch.input_ids, batch.attention_mask)

    def run_session(self, batch: SessionBatch) -> np.ndarray:
        return run_session_model(self.session, batch.arrays())

    def close(self) -> None:
        self.session = None
        self.items_session = None


def warm_up(scorer: SnapshotScoring, model_dir: Path) -> None:
    """One real run of both graphs, so a model that loads but cannot execute fails at start."""
    from stream_app.ingest.events import Event
    from stream_app.sessions.windows import WindowSnapshot

    event = Event("warm-up", 0, "view", "warm-up", product_name="warm up item", price=1.0)
    try:
        probability = scorer.score([WindowSnapshot("warm-up", "", (event,))])
        scorer.item_cache.clear()
    except Exception as exc:
        raise ModelLoadError(f"{model_dir}: warm-up inference failed: {exc}") from exc
    if probability.shape != (1,) or not np.all(np.isfinite(probability)):
        raise ModelLoadError(f"{model_dir}: warm-up produced {probability!r}")
