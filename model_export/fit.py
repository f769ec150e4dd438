"""Fit the session model (and optionally the item encoder's top layers) on table rows.

One function, ``fit``, serves the CV loop, the ablations and the final training, so what
the card reports is what ships. The item encoder's frozen part comes from the item cache;
with ``tune_layers = 0`` only its projection is trained (the "frozen encoder + the same
head" comparison), with ``n > 0`` its top ``n`` BERT layers are trained end-to-end through
the session loss, run only on the distinct item texts of each batch.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from model_export.item_cache import ItemTable
from stream_app.scoring.network import SessionModel, additive_mask, mean_pool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadConfig:
    item_dim: int = 64
    hidden: int = 64
    mlp_hidden: int = 128
    dropout: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-4
    epochs: int = 6
    batch_size: int = 256
    tune_layers: int = 0
    encoder_lr: float = 5e-5
    use_items: bool = True
    drop_features: tuple[str, ...] = ()  # feature-name prefixes zeroed (ablations)
    seed: int = 0

    def short(self) -> dict[str, Any]:
        defaults = HeadConfig()
        return {k: v for k, v in self.__dict__.items() if v != getattr(defaults, k)}


@dataclass
class Rows:
    """Model inputs of a set of table rows (features already include the rates columns)."""

    text_index: np.ndarray
    event_types: np.ndarray
    numerics: np.ndarray
    mask: np.ndarray
    features: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class ItemHead(nn.Module):
    """What training changes in the item encoder: the top layers (maybe none) + projection."""

    def __init__(self, bert_layers: list[nn.Module], width: int, dim: int) -> None:
        nn.Module.__init__(self)
        self.top = nn.ModuleList(bert_layers)
        self.proj = nn.Linear(width, dim)

    def embed(self, items: ItemTable, which: torch.Tensor) -> torch.Tensor:
        if not len(self.top):
            return self.proj(torch.from_numpy(items.pooled)[which])
        assert items.hidden is not None
        mask = torch.from_numpy(items.attention_mask)[which]
        width = max(int(mask.sum(dim=1).max()), 1)
        mask = mask[:, :width]
        hidden = torch.from_numpy(items.hidden[which.numpy(), :width]).float()
        extended = additive_mask(mask, hidden.dtype)
        for layer in self.top:
            hidden = layer(hidden, extended)
        return self.proj(mean_pool(hidden, mask))


@dataclass
class Fitted:
    item_head: ItemHead
    model: SessionModel
    config: HeadConfig
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def feature_keep(names: tuple[str, ...], drop: tuple[str, ...]) -> torch.Tensor:
    return torch.tensor([0.0 if any(n.startswith(d) for d in drop) else 1.0 for n in names])


def _logits(fitted: Fitted, items: ItemTable, rows: Rows, index: np.ndarray) -> torch.Tensor:
    text = torch.from_numpy(rows.text_index[index])
    uniq, inverse = torch.unique(text, return_inverse=True)
    embedded = fitted.item_head.embed(items, uniq)[inverse]
    if not fitted.config.use_items:
        embedded = torch.zeros_like(embedded)
    return fitted.model.logits(
        embedded,
        torch.from_numpy(rows.event_types[index]),
        torch.from_numpy(rows.numerics[index]),
        torch.from_numpy(rows.mask[index]),
        torch.from_numpy(rows.features[index]),
    )


def _optimiser(fitted: Fitted, cfg: HeadConfig, steps: int) -> tuple[Any, Any]:
    groups = [{"params": [*fitted.model.parameters(), *fitted.item_head.proj.parameters()],
               "lr": cfg.lr}]  # fmt: skip
    if len(fitted.item_head.top):
        groups.append({"params": list(fitted.item_head.top.parameters()), "lr": cfg.encoder_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:  # linear warm-up, cosine decay
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def fit(
    rows: Rows, items: ItemTable, names: tuple[str, ...], cfg: HeadConfig,
    bert_layers: list[nn.Module] | None = None,
) -> Fitted:  # fmt: skip
    """Train from scratch on ``rows`` (BCE, AdamW, fixed epochs chosen by CV)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    start = time.monotonic()
    layers = copy.deepcopy(bert_layers or [])[-cfg.tune_layers :] if cfg.tune_layers else []
    head = ItemHead(layers, items.pooled.shape[1], cfg.item_dim)
    model = SessionModel(cfg.item_dim, rows.features.shape[1], cfg.hidden, cfg.mlp_hidden,
                         cfg.dropout)  # fmt: skip
    feats = torch.from_numpy(rows.features)
    std = feats.std(dim=0)
    model.feature_mean.copy_(feats.mean(dim=0))
    model.feature_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
    model.feature_keep.copy_(feature_keep(names, cfg.drop_features))
    fitted = Fitted(head, model, cfg)
    steps = cfg.epochs * -(-len(rows) // cfg.batch_size)
    opt, sched = _optimiser(fitted, cfg, steps)
    labels = torch.from_numpy(rows.labels.astype(np.float32))
    loss_fn = nn.BCEWithLogitsLoss()
    for epoch in range(cfg.epochs):
        model.train()
        head.train()
        order = rng.permutation(len(rows))
        losses = []
        for begin in range(0, len(rows), cfg.batch_size):
            index = order[begin : begin + cfg.batch_size]
            loss = loss_fn(_logits(fitted, items, rows, index), labels[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        fitted.history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses))})
        log.debug("epoch %d loss %.4f", epoch + 1, np.mean(losses))
    fitted.seconds = time.monotonic() - start
    model.eval()
    head.eval()
    return fitted


@torch.no_grad()
def predict_logits(fitted: Fitted, items: ItemTable, rows: Rows, batch: int = 2048
                   ) -> np.ndarray:  # fmt: skip
    fitted.model.eval()
    fitted.item_head.eval()
    parts = [
        _logits(fitted, items, rows, np.arange(i, min(i + batch, len(rows)))).numpy()
        for i in range(0, len(rows), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
