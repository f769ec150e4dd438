"""PyTorch backend: CPU fp32, or CUDA fp16 autocast replayed through CUDA graphs.

On CUDA, one graph is captured per (batch, tokens) bucket the first time that bucket is
seen; later batches copy into the graph's static input tensors and replay it, which removes
the per-kernel launch cost that dominates a 6-layer encoder at small batch sizes. All graphs
share one memory pool, and the buckets bound how many graphs can ever exist.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stream_app.errors import ModelLoadError
from stream_app.scoring.model_dir import load_metadata, require_files
from stream_app.scoring.preprocess import (
    EncodedBatch,
    Preprocessor,
    SnapshotScoring,
    score_batches,
)

if TYPE_CHECKING:
    import torch


CHECKPOINT_FORMAT = 1


def checkpoint_dict(model: Any) -> dict[str, Any]:
    """What ``model.pt`` holds: enough to rebuild an ``IntentModel`` without any hub."""
    return {
        "format": CHECKPOINT_FORMAT,
        "n_features": int(model.feature_mean.shape[0]),
        "hidden": int(model.head[0].out_features),
        "encoder_config": model.encoder.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def load_checkpoint(path: Path) -> torch.nn.Module:
    """Rebuild the model from ``model.pt`` (weights-only unpickling: no code runs)."""
    import torch
    from transformers import AutoConfig, AutoModel

    from model_export.model import IntentModel

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
        config_dict = dict(ckpt["encoder_config"])
        config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
        model = IntentModel(AutoModel.from_config(config), ckpt["n_features"], ckpt["hidden"])
        model.load_state_dict(ckpt["state_dict"])
    except Exception as exc:  # torch/pickle/shape errors all mean "unusable checkpoint"
        raise ModelLoadError(f"cannot load torch checkpoint {path}: {exc}") from exc
    return model.eval()


@dataclass
class _CapturedGraph:
    graph: Any
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    features: torch.Tensor
    probability: torch.Tensor


class TorchScorer(SnapshotScoring):
    """Synchronous; calls are serialised by a lock (CUDA graphs share static buffers)."""

    def __init__(
        self, model_dir: Path, device: str = "cpu", threads: int = 0, cuda_graphs: bool = True
    ) -> None:
        import torch

        self.metadata = load_metadata(model_dir)
        require_files(model_dir, [self.metadata.torch])
        self.device = _resolve_device(device)
        if threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.model = load_checkpoint(Path(model_dir) / self.metadata.torch).to(self.device)
        self.preprocessor = Preprocessor(model_dir, self.metadata)
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self._graphs: dict[tuple[int, int], _CapturedGraph] = {}
        self._pool: Any = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._lock = threading.Lock()
        suffix = "cuda-fp16" if self.device.type == "cuda" else "cpu-fp32"
        self.model_version = f"{self.metadata.model_version}-torch-{suffix}"
        self.max_tokens = self.metadata.max_tokens

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            if self.device.type != "cuda":
                return self.model(ids, mask, feats)
            # No autocast weight cache: cached casts made during capture would be freed
            # memory the replayed graph still reads (PyTorch's CUDA-graph caveat).
            with torch.autocast("cuda", dtype=torch.float16, cache_enabled=False):
                return self.model(ids, mask, feats).float()

    def _capture(self, rows: int, tokens: int) -> _CapturedGraph:
        import torch

        dev = self.device
        ids = torch.zeros((rows, tokens), dtype=torch.int64, device=dev)
        mask = torch.ones((rows, tokens), dtype=torch.int64, device=dev)
        feats = torch.zeros((rows, len(self.metadata.feature_names)), device=dev)
        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm-up (autotuning, lazy init) off the capture
            for _ in range(2):
                self._forward(ids, mask, feats)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._forward(ids, mask, feats)
        return _CapturedGraph(graph, ids, mask, feats, out)

    def _run_graph(self, batch: EncodedBatch) -> np.ndarray:
        import torch

        captured = self._graphs.get(batch.shape)
        if captured is None:
            captured = self._graphs[batch.shape] = self._capture(*batch.shape)
        captured.input_ids.copy_(torch.from_numpy(batch.input_ids), non_blocking=True)
        captured.attention_mask.copy_(torch.from_numpy(batch.attention_mask), non_blocking=True)
        captured.features.copy_(torch.from_numpy(batch.features), non_blocking=True)
        captured.graph.replay()
        return np.asarray(captured.probability.cpu().numpy(), dtype=np.float32)

    def _run(self, batch: EncodedBatch) -> np.ndarray:
        import torch

        if self.cuda_graphs:
            return self._run_graph(batch)
        tensors = (
            torch.from_numpy(a).to(self.device)
            for a in (batch.input_ids, batch.attention_mask, batch.features)
        )
        return np.asarray(self._forward(*tensors).float().cpu().numpy(), dtype=np.float32)

    def score_encoded(self, batches: Sequence[EncodedBatch]) -> np.ndarray:
        with self._lock:
            return score_batches(batches, self._run)

    def close(self) -> None:
        self._graphs.clear()
        self.model = None  # type: ignore[assignment]


def _resolve_device(device: str) -> torch.device:
    import torch

    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"invalid MODEL_DEVICE {device!r}: {exc}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"MODEL_DEVICE={device} but CUDA is not available")
    return resolved
