"""PyTorch backend: CPU fp32, or CUDA (item encoder under fp16 autocast).

``model.pt`` holds both modules' weights and the encoder config, so the backend rebuilds the
model without any hub or training code (weights-only unpickling: no code runs on load).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stream_app.errors import ModelLoadError
from stream_app.scoring.item_cache import DEFAULT_CAPACITY, ItemEmbeddingCache
from stream_app.scoring.model_dir import load_metadata, require_files
from stream_app.scoring.network import ItemEncoder, SessionModel
from stream_app.scoring.preprocess import (
    EncodedBatch,
    Preprocessor,
    SessionBatch,
    SnapshotScoring,
)

if TYPE_CHECKING:
    import torch

CHECKPOINT_FORMAT = 2


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


class TorchScorer(SnapshotScoring):
    """Synchronous; calls are serialised by a lock."""

    def __init__(
        self, model_dir: Path, device: str = "cpu", threads: int = 0,
        cache_size: int = DEFAULT_CAPACITY,
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

    def _tensors(self, arrays: tuple[np.ndarray, ...]) -> list[torch.Tensor]:
        import torch

        return [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays]

    def run_items(self, batch: EncodedBatch) -> np.ndarray:
        import torch

        ids, mask = self._tensors((batch.input_ids, batch.attention_mask))
        with self._lock, torch.inference_mode():
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    return np.asarray(self.encoder(ids, mask).float().cpu().numpy())
            return np.asarray(self.encoder(ids, mask).cpu().numpy())

    def run_session(self, batch: SessionBatch) -> np.ndarray:
        import torch

        tensors = self._tensors(batch.arrays())
        with self._lock, torch.inference_mode():
            return np.asarray(self.model(*tensors).float().cpu().numpy(), dtype=np.float32)

    def close(self) -> None:
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
