"""TensorRT backend: one serialized engine per ONNX graph (item encoder, session model).

The engines (built by ``model_export.tensorrt_build``) live in the model directory next to
the ONNX graphs they came from; ``metadata.json["tensorrt"]`` names them and lists each
one's optimization profiles, which match the preprocessor's buckets. Device buffers
are torch CUDA tensors, so no extra CUDA binding package is needed. ``tensorrt`` is imported
only when this backend is chosen; without it, or without CUDA, loading is a
``ModelLoadError`` that says what is missing.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from stream_app.errors import ModelLoadError
from stream_app.scoring.item_cache import DEFAULT_CAPACITY, ItemEmbeddingCache
from stream_app.scoring.model_dir import load_metadata
from stream_app.scoring.preprocess import (
    ITEM_INPUTS,
    SESSION_INPUTS,
    EncodedBatch,
    Preprocessor,
    SessionBatch,
    SnapshotScoring,
)

ENGINES = {"items": (ITEM_INPUTS, "item_embedding"), "session": (SESSION_INPUTS, "probability")}


@dataclass(frozen=True)
class EngineProfile:
    """Shape range of one optimization profile: batch in [min, max] at exactly ``tokens``
    (item tokens for the item encoder; window events K for the session model)."""

    tokens: int
    min_batch: int
    opt_batch: int
    max_batch: int

    def covers(self, rows: int, tokens: int) -> bool:
        return tokens == self.tokens and self.min_batch <= rows <= self.max_batch

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def profiles_from_metadata(raw: list[dict[str, Any]]) -> list[EngineProfile]:
    try:
        return [EngineProfile(**{k: int(v) for k, v in p.items()}) for p in raw]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"invalid tensorrt profiles in metadata: {exc!r}") from exc


def profile_for(profiles: Sequence[EngineProfile], rows: int, tokens: int) -> int:
    """Index of the narrowest profile that covers (rows, tokens)."""
    fitting = [i for i, p in enumerate(profiles) if p.covers(rows, tokens)]
    if not fitting:
        raise ValueError(f"no TensorRT profile covers batch {rows} x {tokens} tokens")
    return min(fitting, key=lambda i: profiles[i].max_batch - profiles[i].min_batch)


def import_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except ImportError as exc:
        raise ModelLoadError(
            "TensorRT engines need the `tensorrt` package (pip install 'intent-stream[gpu]')"
        ) from exc
    return tensorrt


def _require_cuda(device: str) -> Any:
    import torch

    if not torch.cuda.is_available():
        raise ModelLoadError("MODEL_BACKEND=tensorrt needs a CUDA GPU; none is available")
    resolved = torch.device(device if device.startswith("cuda") else "cuda")
    return resolved


def load_engine(trt: ModuleType, path: Path) -> Any:
    if not path.is_file():
        raise ModelLoadError(
            f"no TensorRT engine at {path}: run `python -m model_export.tensorrt_build build "
            f"--model-dir {path.parent}` on this GPU"
        )
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:  # wrong TensorRT version or GPU architecture, or a corrupt file
        raise ModelLoadError(f"cannot deserialize TensorRT engine {path} (built elsewhere?)")
    return engine


class _Engine:
    """One engine, its profiles and one execution context per profile (made on first use)."""

    def __init__(self, trt: ModuleType, path: Path, profiles: list[EngineProfile], kind: str,
                 device: Any) -> None:  # fmt: skip
        import torch

        self.engine = load_engine(trt, path)
        self.profiles = profiles
        self.inputs, self.output = ENGINES[kind]
        self.device = device
        self.stream = torch.cuda.Stream(device=device)
        self._contexts: dict[int, Any] = {}

    def _context(self, index: int) -> Any:
        context = self._contexts.get(index)
        if context is None:
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(index, self.stream.cuda_stream)
            self._contexts[index] = context
        return context

    def run(self, arrays: Sequence[np.ndarray], out_shape: tuple[int, ...]) -> np.ndarray:
        import torch

        rows, tokens = int(arrays[0].shape[0]), int(arrays[0].shape[1])
        context = self._context(profile_for(self.profiles, rows, tokens))
        with torch.cuda.stream(self.stream):
            tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=True)
                       for a in arrays]  # fmt: skip
            out = torch.empty(out_shape, dtype=torch.float32, device=self.device)
            for name, tensor in zip(self.inputs, tensors, strict=True):
                context.set_input_shape(name, tuple(tensor.shape))
                context.set_tensor_address(name, tensor.data_ptr())
            context.set_tensor_address(self.output, out.data_ptr())
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed for shape {arrays[0].shape}")
            result = out.cpu()  # synchronises the stream
        return np.asarray(result.numpy(), dtype=np.float32)


class TensorRTScorer(SnapshotScoring):
    """Synchronous; calls are serialised by a lock."""

    def __init__(self, model_dir: Path, device: str = "cuda",
                 cache_size: int = DEFAULT_CAPACITY) -> None:  # fmt: skip
        trt = import_tensorrt()
        self.device = _require_cuda(device)
        self.metadata = load_metadata(model_dir)
        info = self.metadata.tensorrt
        if not info:
            raise ModelLoadError(f"{model_dir}: metadata has no tensorrt section; build engines")
        try:
            self.engines = {
                kind: _Engine(trt, Path(model_dir) / str(info["engines"][kind]),
                              profiles_from_metadata(info["profiles"][kind]), kind, self.device)
                for kind in ENGINES
            }  # fmt: skip
        except (KeyError, TypeError) as exc:
            raise ModelLoadError(f"{model_dir}: invalid tensorrt metadata: {exc!r}") from exc
        self.preprocessor = Preprocessor(model_dir, self.metadata)
        self.item_cache = ItemEmbeddingCache(self.metadata.item_dim, cache_size)
        self._lock = threading.Lock()
        self.model_version = f"{self.metadata.model_version}-tensorrt-{info.get('precision', '')}"
        self.max_tokens = self.metadata.max_tokens

    def run_items(self, batch: EncodedBatch) -> np.ndarray:
        with self._lock:
            return self.engines["items"].run((batch.input_ids, batch.attention_mask),
                                             (batch.shape[0], self.metadata.item_dim))  # fmt: skip

    def run_session(self, batch: SessionBatch) -> np.ndarray:
        with self._lock:
            return self.engines["session"].run(batch.arrays(), (batch.rows,))

    def close(self) -> None:
        self.engines.clear()
