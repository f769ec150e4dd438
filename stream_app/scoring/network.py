"""The intent model's two torch modules (serving owns them; training imports them).

    item text ──tokens──> MiniLM ──mean-pool──> Linear ──> item embedding [d]     (ItemEncoder)
                       (cached per distinct text)

    K newest events: item embedding + event-type embedding + per-event numerics
        ──> LayerNorm/GELU ──> masked attention pooling ‖ newest event ──┐
    window features (behaviour, last product, context, rates) ──standardise─┤
                                                      MLP ──> logit ──> Platt ──> p   (SessionModel)

The item encoder's cost is paid once per distinct item text (the backends cache embeddings),
so the cost of a score grows with what is new in the window, not with the window.
Feature standardisation and Platt scaling are buffers, so exported graphs return calibrated
probabilities from raw features.
"""

from __future__ import annotations

import torch
from torch import nn

from stream_app.sessions.features import EVENT_NUMERIC_NAMES, N_EVENT_TYPES


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average token vectors over real (unpadded) tokens."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[N, T] 0/1 mask → the [N, 1, 1, T] additive mask BERT layers take (eager attention)."""
    inverted = 1.0 - attention_mask[:, None, None, :].to(dtype)
    return inverted * torch.finfo(dtype).min


class ItemEncoder(nn.Module):
    """A BERT encoder, mean pooling and a projection to ``dim``.

    ``tune_layers`` top layers are trainable; ``from_hidden`` runs only those on cached
    hidden states of the frozen layers below (the training shortcut).
    """

    def __init__(self, bert: nn.Module, dim: int, tune_layers: int = 0) -> None:
        super().__init__()
        self.bert = bert
        self.tune_layers = tune_layers
        width: int = bert.config.hidden_size  # type: ignore[union-attr,assignment]
        self.proj = nn.Linear(width, dim)

    @property
    def dim(self) -> int:
        return int(self.proj.out_features)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
        return self.proj(mean_pool(hidden, attention_mask))

    def top_layers(self) -> list[nn.Module]:
        layers: list[nn.Module] = list(self.bert.encoder.layer)  # type: ignore[union-attr,arg-type]
        return layers[len(layers) - self.tune_layers :] if self.tune_layers else []

    def from_hidden(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embeddings from the hidden states entering the top ``tune_layers`` layers."""
        extended = additive_mask(attention_mask, hidden.dtype)
        for layer in self.top_layers():
            hidden = layer(hidden, extended)
        return self.proj(mean_pool(hidden, attention_mask))


class SessionModel(nn.Module):
    """Item sequence + window features → calibrated purchase probability.

    CONTRACT: ``forward(items f32[B,K,d], event_types i64[B,K], numerics f32[B,K,N],
    mask f32[B,K], features f32[B,F]) -> probability f32[B]``; ``logits(...)`` is uncalibrated.
    """

    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    feature_keep: torch.Tensor
    platt_a: torch.Tensor
    platt_b: torch.Tensor

    def __init__(
        self, item_dim: int, n_features: int, hidden: int = 64, mlp_hidden: int = 128,
        dropout: float = 0.1,
    ) -> None:  # fmt: skip
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.register_buffer("feature_keep", torch.ones(n_features))  # 0 = column ablated
        self.register_buffer("platt_a", torch.tensor(1.0))
        self.register_buffer("platt_b", torch.tensor(0.0))
        self.item_in = nn.Linear(item_dim, hidden)
        self.type_in = nn.Embedding(N_EVENT_TYPES, hidden)
        self.numeric_in = nn.Linear(len(EVENT_NUMERIC_NAMES), hidden)
        self.event_norm = nn.LayerNorm(hidden)
        self.attention = nn.Linear(hidden, 1)
        self.wide = nn.Linear(n_features, 1)  # a linear path on the features (a logit prior)
        self.head = nn.Sequential(
            nn.Linear(2 * hidden + n_features, mlp_hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_hidden, 1),
        )

    def logits(
        self, items: torch.Tensor, event_types: torch.Tensor, numerics: torch.Tensor,
        mask: torch.Tensor, features: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        events = self.item_in(items) + self.type_in(event_types) + self.numeric_in(numerics)
        events = nn.functional.gelu(self.event_norm(events))
        scores = self.attention(events).squeeze(-1) + (mask - 1.0) * 1e4
        weights = torch.softmax(scores, dim=-1) * mask
        pooled = (weights.unsqueeze(-1) * events).sum(dim=1)
        newest = events[:, -1] * mask[:, -1:]
        feats = (features - self.feature_mean) / self.feature_std * self.feature_keep
        deep = self.head(torch.cat([pooled, newest, feats], dim=-1))
        return (deep + self.wide(feats)).squeeze(-1)

    def forward(
        self, items: torch.Tensor, event_types: torch.Tensor, numerics: torch.Tensor,
        mask: torch.Tensor, features: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        logit = self.logits(items, event_types, numerics, mask, features)
        return torch.sigmoid(self.platt_a * logit + self.platt_b)
