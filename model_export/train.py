"""Train the intent model on one or more event logs.

    intent-stream train --events LOG [--events LOG2] --out DIR      # a shop's own model
    intent-stream train --update-shipped                            # the committed weights

Per store a seeded 20 % of users (``--test-fraction``) is held out and never used; the model
is fitted on the other users with the configuration ``model_export.select`` chose by CV
(``SHIPPED_HEAD``). Platt scaling is fitted on out-of-fold logits (5 user-grouped folds of
the training users), never on rows the calibrated model was fitted on. Product/category
rates for the fitted rows are out-of-fold too; the shipped table counts every training user.
Serve the result with ``MODEL_DIR=$(intent-stream build-model --weights DIR)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_export.baselines import GRIDS
from model_export.calibrate import best_f1_threshold, fit_platt
from model_export.corpus import DEFAULT_TEST_FRACTION, SPLIT_SEED, Corpus, load_corpus
from model_export.corpus import sample_prefixes as sample
from model_export.fit import Fitted, HeadConfig, fit
from model_export.item_cache import ITEM_MAX_TOKENS, ItemTable, item_table
from model_export.metrics import both_weightings
from model_export.model import build_encoder, load_encoder, save_weights
from model_export.select import DEFAULT_EVENTS, PER_SESSION, Candidate, cross_validate, rows_for
from stream_app.core.errors import ConfigError
from stream_app.ingest.inputs import check_event_log
from stream_app.scoring.network import ItemEncoder

log = logging.getLogger("model_export.train")

DEFAULT_OUT = Path(__file__).parent / "weights"
MODEL_VERSION = "intent-seq-v1"
# Chosen by `python -m model_export.select` (docs/model_card.md quotes the run).
SHIPPED_HEAD = HeadConfig(epochs=3, lr=1e-3, hidden=32, mlp_hidden=64, dropout=0.3,
                          weight_decay=1e-2)  # fmt: skip
SHIPPED_BASELINES: dict[str, dict[str, Any]] = {"logreg": GRIDS["logreg"][0],
                                                "hgb": GRIDS["hgb"][0]}  # fmt: skip


def _assemble_encoder(fitted: Fitted, encoder_dir: Path) -> ItemEncoder:
    """Base encoder with the fitted projection and top layers (the served item encoder)."""
    state = {f"proj.{k}": v for k, v in fitted.item_head.proj.state_dict().items()}
    for i, layer in enumerate(fitted.item_head.top):
        state.update({f"top.{i}.{k}": v for k, v in layer.state_dict().items()})
    return build_encoder(encoder_dir, fitted.config.item_dim, fitted.config.tune_layers, state)


@torch.no_grad()
def item_embeddings(encoder: ItemEncoder, items: ItemTable, batch: int = 256) -> np.ndarray:
    """The served encoder's embedding of every item text (row i = items.texts[i])."""
    parts = []
    for start in range(0, len(items.texts), batch):
        ids = torch.from_numpy(items.input_ids[start : start + batch])
        mask = torch.from_numpy(items.attention_mask[start : start + batch])
        parts.append(encoder(ids, mask).numpy())
    return np.concatenate(parts)


@torch.no_grad()
def served_probabilities(fitted: Fitted, embeddings: np.ndarray, rows: Any) -> np.ndarray:
    """Calibrated probabilities as the served graphs compute them (full encoder embeddings)."""
    out = []
    for start in range(0, len(rows), 4096):
        part = slice(start, start + 4096)
        items = torch.from_numpy(embeddings[rows.text_index[part]])
        if not fitted.config.use_items:
            items = torch.zeros_like(items)
        arrays = (rows.event_types[part], rows.numerics[part], rows.mask[part],
                  rows.features[part])  # fmt: skip
        out.append(fitted.model(items, *(torch.from_numpy(a) for a in arrays)).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _bert_layers(encoder_dir: Path, cfg: HeadConfig) -> list[Any] | None:
    if not cfg.tune_layers:
        return None
    return list(load_encoder(encoder_dir).encoder.layer)  # type: ignore[union-attr,arg-type]


def train(
    paths: Sequence[str | Path], out: Path, cfg: HeadConfig = SHIPPED_HEAD,
    test_fraction: float = DEFAULT_TEST_FRACTION, encoder_dir: Path | None = None,
    calibration_folds: int = 5,
) -> dict[str, Any]:  # fmt: skip
    """Fit, calibrate out-of-fold, record test metrics, save the small weights to ``out``."""
    from model_export.bundle import default_encoder_dir

    start = time.monotonic()
    encoder_dir = encoder_dir or default_encoder_dir()
    corpus = load_corpus(paths, test_fraction)
    items = item_table(corpus.vocab.texts, encoder_dir, cfg.tune_layers)
    layers = _bert_layers(encoder_dir, cfg)
    cand = Candidate("model", head=cfg)
    oof = cross_validate(corpus, items, [cand], 0, calibration_folds, layers)[cand.key()]
    platt = fit_platt(oof.values, corpus.train.label)
    everyone = set(corpus.session_user.values())
    fit_rows = sample(corpus.train, PER_SESSION, 0)
    x_fit, x_test, rates = corpus.features(fit_rows, corpus.test, everyone, 0)
    fitted = fit(rows_for(corpus.train.take(fit_rows), x_fit), items, corpus.spec.feature_names,
                 cfg, layers)  # fmt: skip
    fitted.model.platt_a.fill_(platt.a)
    fitted.model.platt_b.fill_(platt.b)
    encoder = _assemble_encoder(fitted, encoder_dir)
    embeddings = item_embeddings(encoder, items)
    test_p = served_probabilities(fitted, embeddings, rows_for(corpus.test, x_test))
    oof_p = platt.apply(oof.values)
    meta = _metadata(corpus, cfg, platt.a, platt.b, best_f1_threshold(oof_p, corpus.train.label))
    meta["cv_oof_metrics"] = _per_store(corpus, corpus.train, oof_p)
    meta["test_metrics"] = _per_store(corpus, corpus.test, test_p) if len(corpus.test) else {}
    meta["train_seconds"] = round(time.monotonic() - start, 1)
    save_weights(encoder, fitted.model, rates.to_json(), Path(out), meta)
    log.info("saved %s: %s", out, json.dumps(meta["test_metrics"]))
    return meta


def _per_store(corpus: Corpus, table: Any, p: np.ndarray) -> dict[str, Any]:
    out = {}
    for store in corpus.stores:
        rows = table.store == store
        if rows.any():
            out[store] = {"n": int(rows.sum()), "positives": int(table.label[rows].sum()),
                          **both_weightings(table.label[rows], p[rows],
                                            table.session_weight[rows])}  # fmt: skip
    return out


def _metadata(corpus: Corpus, cfg: HeadConfig, a: float, b: float, threshold: float
              ) -> dict[str, Any]:  # fmt: skip
    return {
        "model_version": MODEL_VERSION,
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "max_tokens": ITEM_MAX_TOKENS,
        "item_dim": cfg.item_dim,
        "max_events": corpus.spec.max_events,
        "context_vocab": [list(v) for v in corpus.spec.context_vocab],
        "feature_names": list(corpus.spec.feature_names),
        "tune_layers": cfg.tune_layers,
        "architecture": {"hidden": cfg.hidden, "mlp_hidden": cfg.mlp_hidden},
        "threshold": threshold,
        "calibration": {
            "method": "platt",
            "a": a,
            "b": b,
            "fitted_on": "out-of-fold logits, 5 user-grouped folds of the training users",
        },
        "head_config": {**asdict(cfg), "drop_features": list(cfg.drop_features)},
        "baselines": SHIPPED_BASELINES,
        "training_data": {
            "stores": list(corpus.stores),
            "sha256": corpus.fingerprints,
            "train_rows": len(corpus.train),
            "test_rows": len(corpus.test),
            "distinct_item_texts": len(corpus.vocab.positions),
        },
        "split": {
            "test_fraction_per_store": _fraction(corpus),
            "seed": SPLIT_SEED,
            "by": "user, stratified by has-a-buying-session",
        },
    }


def _fraction(corpus: Corpus) -> float:
    users_test = len(set(corpus.test.user))
    return round(users_test / max(1, users_test + len(set(corpus.session_user.values()))), 3)


# ---------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="intent-stream train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--events", "--data", action="append", dest="events",
                   help="event log (REES46-style CSV(.gz) or JSONL); repeat for several stores "
                        "(default: the two shared logs)")  # fmt: skip
    p.add_argument("--out", default=None, help="where the small weights go")
    p.add_argument("--update-shipped", "--force", action="store_true", dest="update_shipped",
                   help=f"write the committed weights ({DEFAULT_OUT})")  # fmt: skip
    p.add_argument(
        "--test-fraction",
        type=float,
        default=DEFAULT_TEST_FRACTION,
        help="users held out per store, never trained on (0 = train on all)",
    )
    p.add_argument("--encoder", default=None, help="local HF BERT dir (default: MiniLM wheel)")
    p.add_argument("--epochs", type=int, default=SHIPPED_HEAD.epochs)
    p.add_argument("--tune-layers", type=int, default=SHIPPED_HEAD.tune_layers)
    p.add_argument("--seed", type=int, default=SHIPPED_HEAD.seed)
    return p


def check_args(a: argparse.Namespace) -> tuple[list[Path], Path]:
    """Bad input → ``ConfigError`` with a one-line message (exit 2)."""
    for name in ("epochs", "tune_layers", "seed"):
        if getattr(a, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0")
    if not 0 <= a.test_fraction < 1:
        raise ConfigError("--test-fraction must be in [0, 1)")
    events = [Path(p) for p in (a.events or [str(p) for p in DEFAULT_EVENTS])]
    for path in events:
        check_event_log(path, "--events")
    if a.out is None and not a.update_shipped:
        raise ConfigError(f"training would overwrite the shipped weights in {DEFAULT_OUT}; "
                          "pass --out DIR for new weights, or --update-shipped")  # fmt: skip
    return events, Path(a.out) if a.out else DEFAULT_OUT


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        events, out = check_args(args)
    except ConfigError as exc:
        print(f"intent-stream train: {exc}", file=sys.stderr)
        return 2
    cfg = replace(SHIPPED_HEAD, epochs=args.epochs, tune_layers=args.tune_layers, seed=args.seed)
    meta = train(events, out, cfg, args.test_fraction,
                 Path(args.encoder) if args.encoder else None)  # fmt: skip
    print(json.dumps({"test_metrics": meta["test_metrics"], "weights": str(out)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
