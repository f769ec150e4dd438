"""The intent model: BERT text encoder fused with behaviour features.

    session text ──tokens──> BERT ──mean-pool──┐
                                               ├─ concat ─> MLP ─> logit ─> calibrate ─> p
    behaviour features ──standardise───────────┘

Feature standardisation and the calibration (Platt scaling: ``sigmoid(a * logit + b)``) are
buffers inside the module, so the exported ONNX graph / TensorRT engine produce calibrated
probabilities from raw features and serving has nothing extra to get wrong.

CONTRACT: ``forward(input_ids int64[B,T], attention_mask int64[B,T], features float32[B,F])
-> probability float32[B]``; ``logits(...)`` returns the uncalibrated logit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel


def load_encoder(encoder_dir: str | Path) -> PreTrainedModel:
    """Load any local Hugging Face BERT-style encoder directory (never touches a hub)."""
    return AutoModel.from_pretrained(str(encoder_dir), local_files_only=True)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average token embeddings over real (unpadded) tokens."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class IntentModel(nn.Module):
    # Buffers (declared so type checkers know they are tensors, not sub-modules).
    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    platt_a: torch.Tensor
    platt_b: torch.Tensor

    def __init__(
        self,
        encoder: PreTrainedModel,
        n_features: int,
        hidden: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        width = int(encoder.config.hidden_size)
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.register_buffer("platt_a", torch.tensor(1.0))
        self.register_buffer("platt_b", torch.tensor(0.0))
        self.head = nn.Sequential(
            nn.Linear(width + n_features, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        text = mean_pool(hidden, attention_mask)
        feats = (features - self.feature_mean) / self.feature_std
        return self.head(torch.cat([text, feats.to(text.dtype)], dim=-1)).squeeze(-1)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        logit = self.logits(input_ids, attention_mask, features)
        return torch.sigmoid(self.platt_a * logit + self.platt_b)


# ---------------------------------------------------------------------------- weights I/O
#
# The committed weights are only the small trained parts: the LoRA adapter (or, for full
# fine-tuning, the whole encoder, which is too big to commit), the head and the buffers.
# ``load_trained_model`` rebuilds the full model from the base encoder deterministically.

HEAD_FILE = "head.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
ENCODER_FILE = "encoder.safetensors"
METADATA_FILE = "metadata.json"
_HEAD_BUFFERS = ("feature_mean", "feature_std", "platt_a", "platt_b")


def _head_state(model: IntentModel) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    keys = [k for k in state if k.startswith("head.") or k in _HEAD_BUFFERS]
    return {k: state[k].detach().contiguous().clone() for k in keys}


def save_weights(model: IntentModel, out_dir: Path, metadata: dict[str, Any], lora: bool) -> None:
    """Write head + buffers, the LoRA adapter (or full encoder) and ``metadata.json``."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(_head_state(model), str(out_dir / HEAD_FILE))
    if lora:
        adapter = get_peft_model_state_dict(model.encoder)
        save_file({k: v.contiguous() for k, v in adapter.items()}, str(out_dir / ADAPTER_FILE))
    else:
        encoder = {k: v.contiguous() for k, v in model.encoder.state_dict().items()}
        save_file(encoder, str(out_dir / ENCODER_FILE))
    text = json.dumps(metadata, indent=2, sort_keys=True, default=float)
    (out_dir / METADATA_FILE).write_text(text + "\n", encoding="utf-8")


def _merged_lora_encoder(encoder_dir: str | Path, weights: Path, spec: dict[str, Any]) -> nn.Module:
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    config = LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=spec["dropout"],
                        target_modules=spec["target_modules"], bias="none")  # fmt: skip
    wrapped = get_peft_model(load_encoder(encoder_dir), config)
    set_peft_model_state_dict(wrapped, load_file(str(weights / ADAPTER_FILE)))
    return wrapped.merge_and_unload()  # plain BertModel again: nothing peft-specific to export


def load_trained_model(weights_dir: str | Path, encoder_dir: str | Path) -> IntentModel:
    """Base encoder + committed weights → full ``IntentModel`` (LoRA merged, eval mode)."""
    from safetensors.torch import load_file

    weights = Path(weights_dir)
    metadata = json.loads((weights / METADATA_FILE).read_text(encoding="utf-8"))
    if metadata.get("lora"):
        encoder = _merged_lora_encoder(encoder_dir, weights, metadata["lora"])
    else:
        encoder = load_encoder(encoder_dir)
        encoder.load_state_dict(load_file(str(weights / ENCODER_FILE)))
    model = IntentModel(encoder, n_features=len(metadata["feature_names"]),  # type: ignore[arg-type]
                        hidden=int(metadata.get("head_hidden", 128)))  # fmt: skip
    missing = model.load_state_dict(load_file(str(weights / HEAD_FILE)), strict=False)
    if missing.unexpected_keys or any(not k.startswith("encoder.") for k in missing.missing_keys):
        raise ValueError(f"head weights do not match the model: {missing}")
    return model.eval()
