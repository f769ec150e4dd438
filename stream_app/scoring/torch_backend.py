"""PyTorch backend: CPU fp32, or CUDA (item encoder fp16, CUDA graphs).

``model.pt`` holds both modules' weights and the encoder config, so the backend rebuilds the
model without any hub or training code (weights-only unpickling: no code runs on load).

On CUDA the item encoder runs under fp16 autocast (matmuls in fp16; LayerNorm, softmax and
reductions stay fp32, autocast's own policy: the same split the TensorRT builder pins), the
session model (a few small layers) in fp32. At start-up, for every (rows, tokens) bucket the
preprocessor can emit for each graph (``tensorrt_backend.bucket_shapes``), the backend runs
the module on seeded valid inputs on a side stream, captures a CUDA graph of it with static
input and output tensors, and checks one replay against the eager result. A live batch then
copies into the bucket's static inputs, replays, and copies the output back: no kernel
selection, allocation or capture happens in the first live batch. A capture failure or a
replay mismatch turns graphs off (logged) and the backend runs eagerly, still correct.

Threading: one inference thread calls ``score`` (the worker's single-thread executor). The
static tensors are shared state, so a lock covers each copy→replay→copy-out sequence.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stream_app.core.errors import ModelLoadError
from stream_app.scoring.item_cache import DEFAULT_CAPACITY, ItemEmbeddingCache
from stream_app.scoring.model_dir import load_metadata, require_files
from stream_app.scoring.network import ItemEncoder, SessionModel
from stream_app.scoring.preprocess import (
    EncodedBatch,
    Preprocessor,
    SessionBatch,
    SnapshotScoring,
)
from stream_app.scoring.tensorrt_backend import bucket_shapes, warm_inputs

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = 2
GRAPH_ATOL = 1e-3  # a replay must reproduce its eager run (fp16 encoder outputs)


def checkpoint_dict(encoder: ItemEncoder, model: SessionModel) -> dict[str, Any]:
    """What ``model.pt`` holds: enough to rebuild both modules without any hub."""
    return {
        "format": CHECKPOINT_FORMAT,
        "encoder_config": encoder.bert.config.to_dict(),  # type: ignore[union-attr,operator]
        "item_dim": encoder.dim,
        "tune_layers": encoder.tune_layers,
        "n_features": int(model.feature_mean.shape[0]),
        "hidden": int(model.item_in.out_features),
        "mlp_hidden": int(model.head[-1].in_features),  # type: ignore[arg-type]
        "item_encoder": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
        "session_model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def load_checkpoint(path: Path) -> tuple[ItemEncoder, SessionModel]:
    """Rebuild (item encoder, session model) from ``model.pt``, in eval mode."""
    import torch
    from transformers import AutoConfig, AutoModel

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
        config_dict = dict(ckpt["encoder_config"])
        config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
        config._attn_implementation = "eager"
        encoder = ItemEncoder(AutoModel.from_config(config), int(ckpt["item_dim"]),
                              int(ckpt.get("tune_layers", 0)))  # fmt: skip
        encoder.load_state_dict(ckpt["item_encoder"])
        model = SessionModel(int(ckpt["item_dim"]), int(ckpt["n_features"]),
                             int(ckpt["hidden"]), int(ckpt["mlp_hidden"]))  # fmt: skip
        model.load_state_dict(ckpt["session_model"])
    except Exception as exc:  # torch/pickle/shape errors all mean "unusable checkpoint"
        raise ModelLoadError(f"cannot load torch checkpoint {path}: {exc}") from exc
    return encoder.eval(), model.eval()


class CudaGraphs:
    """One captured CUDA graph per (rows, tokens) bucket of one module, with its static
    input and output tensors. Built at start-up; ``run`` only copies and replays."""

    def __init__(self, name: str, forward: Callable[..., torch.Tensor], device: torch.device
                 ) -> None:  # fmt: skip
        self.name, self.forward, self.device = name, forward, device
        self.graphs: dict[tuple[int, int], tuple[Any, list[torch.Tensor], torch.Tensor]] = {}

    def capture(self, key: tuple[int, int], arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Warm up on a side stream, capture, replay once; the eager output (for the check)."""
        import torch

        static = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays]
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # kernel selection and the caching allocator settle here
                eager = self.forward(*static).float().cpu().numpy()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self.forward(*static)
        self.graphs[key] = (graph, static, output)
        return np.asarray(eager, dtype=np.float32)

    def run(self, key: tuple[int, int], arrays: Sequence[np.ndarray]) -> np.ndarray | None:
        entry = self.graphs.get(key)
        if entry is None:
            return None
        import torch

        graph, static, output = entry
        for target, array in zip(static, arrays, strict=True):
            target.copy_(torch.from_numpy(np.ascontiguousarray(array)))
        graph.replay()
        return np.asarray(output.float().cpu().numpy(), dtype=np.float32)  # synchronises

    def reset(self) -> None:
        for graph, _, _ in self.graphs.values():
            graph.reset()
        self.graphs.clear()


class TorchScorer(SnapshotScoring):
    """Synchronous; meant for one inference thread (calls are serialised by a lock)."""

    def __init__(
        self, model_dir: Path, device: str = "cpu", threads: int = 0,
        cache_size: int = DEFAULT_CAPACITY, cuda_graphs: bool = True,
    ) -> None:  # fmt: skip
        import torch

        self.metadata = load_metadata(model_dir)
        require_files(model_dir, [self.metadata.torch])
        self.device = _resolve_device(device)
        if threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(threads)
        encoder, model = load_checkpoint(Path(model_dir) / self.metadata.torch)
        self.encoder, self.model = encoder.to(self.device), model.to(self.device)
        self.preprocessor = Preprocessor(model_dir, self.metadata)
        self.item_cache = ItemEmbeddingCache(self.metadata.item_dim, cache_size)
        self._lock = threading.Lock()
        suffix = "cuda-fp16" if self.device.type == "cuda" else "cpu-fp32"
        self.model_version = f"{self.metadata.model_version}-torch-{suffix}"
        self.max_tokens = self.metadata.max_tokens
        self.graphs: dict[str, CudaGraphs] = {}
        self.graphs_enabled = False
        if self.device.type == "cuda" and cuda_graphs:
            self._capture_graphs()
        from stream_app.scoring.onnx_backend import warm_up

        warm_up(self, model_dir)  # one real snapshot through tokeniser, both graphs, cache

    def _encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            if self.device.type == "cuda":  # no autocast weight cache: graph capture forbids it
                with torch.autocast("cuda", dtype=torch.float16, cache_enabled=False):
                    return self.encoder(ids, mask)
            return self.encoder(ids, mask)

    def _session(self, *tensors: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            return self.model(*tensors)

    def _capture_graphs(self) -> None:
        import torch

        meta = self.metadata
        dims = (meta.item_dim, len(meta.feature_names))
        forwards: dict[str, Callable[..., torch.Tensor]] = {
            "items": self._encode,
            "session": self._session,
        }
        try:
            with self._lock, torch.cuda.device(self.device):
                for kind, forward in forwards.items():
                    graphs = self.graphs[kind] = CudaGraphs(kind, forward, self.device)
                    for rows, tokens in bucket_shapes(kind, meta):
                        arrays = warm_inputs(kind, rows, tokens, *dims, seed=rows * 1009 + tokens)
                        eager = graphs.capture((rows, tokens), arrays)
                        replayed = graphs.run((rows, tokens), arrays)
                        if replayed is None or not np.allclose(replayed, eager, atol=GRAPH_ATOL):
                            raise RuntimeError(f"{kind} graph replay at {(rows, tokens)} differs")
            self.graphs_enabled = True
        except RuntimeError as exc:  # capture refused, or a replay that does not match
            log.warning("torch CUDA graphs off, running eagerly: %s", exc)
            self._drop_graphs()

    def _drop_graphs(self) -> None:
        for graphs in self.graphs.values():
            graphs.reset()
        self.graphs.clear()
        self.graphs_enabled = False

    def _run(self, kind: str, arrays: tuple[np.ndarray, ...]) -> np.ndarray:
        import torch

        key = (int(arrays[0].shape[0]), int(arrays[0].shape[1]))
        with self._lock:
            if self.graphs_enabled:
                with torch.cuda.device(self.device):
                    out = self.graphs[kind].run(key, arrays)
                if out is not None:
                    return out
            tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays]
            forward = self._encode if kind == "items" else self._session
            return np.asarray(forward(*tensors).float().cpu().numpy(), dtype=np.float32)

    def run_items(self, batch: EncodedBatch) -> np.ndarray:
        return self._run("items", (batch.input_ids, batch.attention_mask))

    def run_session(self, batch: SessionBatch) -> np.ndarray:
        return self._run("session", batch.arrays())

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.device), "graphs_enabled": self.graphs_enabled,
                "cuda_graphs": {k: len(g.graphs) for k, g in self.graphs.items()}}  # fmt: skip

    def close(self) -> None:
        with self._lock:
            self._drop_graphs()
        self.encoder = None  # type: ignore[assignment]
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
