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

from pathlib import Path

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
