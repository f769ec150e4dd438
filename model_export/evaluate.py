"""Evaluate a built model against tuned baselines on the same labelled prefixes.

    intent-stream evaluate --train TRAIN_LOG --events EVAL_LOG --report-json OUT.json
                           [--model-dir DIR]   # default: the shipped model (built if needed)

- The model is scored through the serving path (``OnnxScorer`` on window snapshots), so the
  report measures exactly what the worker publishes.
- Baselines get the model's inputs (features incl. out-of-fold rates and context, and the
  window's words as TF-IDF) and the CV-chosen settings (``train.SHIPPED_BASELINES``); they
  and the "frozen encoder + the same head" model are fitted on ``--train``.
- Evaluation examples: if ``--events`` is the training file itself, only its held-out test
  users (the seeded 20 % split training uses); otherwise every labelled prefix of ``--events``.
- Confidence intervals: percentile bootstrap over users (all prefixes of a resampled user
  travel together), seeded; model-minus-baseline deltas are paired (same resampled users).
  ``session_weighted`` gives each session's prefixes a total weight of 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
)

from model_export.baselines import BaselineSpec, fit_baseline
from model_export.corpus import load_corpus, sample_prefixes, store_name
from model_export.data import Example, build_examples, load_dataset
from model_export.metrics import metrics as weighted_metrics
from model_export.tables import ExampleTable, build_table
from stream_app.core.errors import ConfigError, ModelLoadError
from stream_app.ingest.inputs import check_event_log, check_output_file, check_positive

log = logging.getLogger("model_export.evaluate")

DEFAULT_WEIGHTS = Path(__file__).parent / "weights"
# Prefix-length buckets (events seen so far): 1, 2, 3-4, 5-9, 10+.
PREFIX_BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("1", 1, 1), ("2", 2, 2), ("3-4", 3, 4), ("5-9", 5, 9), ("10+", 10, 10**9),
)  # fmt: skip
Metric = Callable[[np.ndarray, np.ndarray], float]


# ---------------------------------------------------------------------------- metrics


def _two_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < len(y)


METRICS: dict[str, Metric] = {
    "roc_auc": lambda y, p: float(roc_auc_score(y, p)),
    "pr_auc": lambda y, p: float(average_precision_score(y, p)),
    "log_loss": lambda y, p: float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])),
    "brier": lambda y, p: float(brier_score_loss(y, p)),
}


def threshold_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    predicted = p >= threshold
    tp = int((predicted & (y == 1)).sum())
    precision = tp / max(int(predicted.sum()), 1)
    recall = tp / max(int(y.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"threshold": threshold, "precision": precision, "recall": recall, "f1": f1}


def group_indices(groups: Sequence[str]) -> list[np.ndarray]:
    by_group: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        by_group.setdefault(group, []).append(index)
    return [np.asarray(v) for _, v in sorted(by_group.items())]


def _bootstrap(
    stat: Callable[[np.ndarray], float], y: np.ndarray, groups: Sequence[str], reps: int,
    seed: int, alpha: float,
) -> tuple[float, float]:  # fmt: skip
    """Percentile CI of ``stat(rows)`` over resamples of whole groups (users)."""
    clusters = group_indices(groups)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(reps):
        picks = rng.integers(0, len(clusters), size=len(clusters))
        index = np.concatenate([clusters[i] for i in picks])
        if _two_classes(y[index]):  # a resample with one class has no AUC: skip it
            values.append(stat(index))
    if not values:
        return (float("nan"), float("nan"))
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return (float(low), float(high))


def bootstrap_ci(
    y: np.ndarray, p: np.ndarray, groups: Sequence[str], metric: Metric,
    reps: int = 200, seed: int = 13, alpha: float = 0.05,
) -> tuple[float, float]:  # fmt: skip
    """Percentile CI of ``metric`` resampling whole groups (users) with replacement."""
    return _bootstrap(lambda i: metric(y[i], p[i]), y, groups, reps, seed, alpha)


def paired_delta_ci(
    y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, groups: Sequence[str], metric: Metric,
    reps: int = 200, seed: int = 13, alpha: float = 0.05,
) -> tuple[float, float]:  # fmt: skip
    """CI of ``metric(a) - metric(b)`` on the *same* resampled users (a paired comparison)."""
    return _bootstrap(lambda i: metric(y[i], p_a[i]) - metric(y[i], p_b[i]), y, groups, reps,
                      seed, alpha)  # fmt: skip


def deltas_vs(
    y: np.ndarray, p_model: np.ndarray, p_base: np.ndarray, groups: Sequence[str], reps: int,
    seed: int,
) -> dict[str, Any]:  # fmt: skip
    """model minus baseline for each metric, with paired-bootstrap CIs."""
    out: dict[str, Any] = {}
    for name, metric in METRICS.items():
        delta = metric(y, p_model) - metric(y, p_base)
        ci = paired_delta_ci(y, p_model, p_base, groups, metric, reps, seed) if reps else None
        out[name] = {"delta": delta, "ci": list(ci) if ci else None}
    return out


def score_block(
    y: np.ndarray, p: np.ndarray, groups: Sequence[str], reps: int, seed: int
) -> dict[str, Any]:
    """Point metrics + user-bootstrap CIs (``<metric>_ci``) for one set of predictions."""
    out: dict[str, Any] = {"n": len(y), "positives": int(y.sum())}
    for name, metric in METRICS.items():
        if not _two_classes(y):
            out[name] = None
            continue
        out[name] = metric(y, p)
        if reps:
            out[f"{name}_ci"] = list(bootstrap_ci(y, p, groups, metric, reps, seed))
    return out


def prefix_bucket(prefix_len: int) -> str:
    return next(name for name, low, high in PREFIX_BUCKETS if low <= prefix_len <= high)


def by_prefix(
    y: np.ndarray, p: np.ndarray, lengths: np.ndarray, groups: Sequence[str], reps: int,
    seed: int,
) -> dict[str, Any]:  # fmt: skip
    buckets = np.asarray([prefix_bucket(int(n)) for n in lengths])
    out: dict[str, Any] = {}
    for name, _, _ in PREFIX_BUCKETS:
        mask = buckets == name
        sub_groups = [g for g, keep in zip(groups, mask, strict=True) if keep]
        out[name] = score_block(y[mask], p[mask], sub_groups, reps, seed)
    return out


def full_report(
    y: np.ndarray, p: np.ndarray, lengths: np.ndarray, groups: Sequence[str], threshold: float,
    reps: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    report = score_block(y, p, groups, reps, seed)
    report["at_threshold"] = threshold_metrics(y, p, threshold)
    report["by_prefix"] = by_prefix(y, p, lengths, groups, reps, seed)
    return report


# ---------------------------------------------------------------------------- scoring


@dataclass
class EvalData:
    fit: ExampleTable  # rows the baselines are fitted on (<= 4 prefixes per session)
    x_fit: np.ndarray
    events: ExampleTable
    x_events: np.ndarray
    snapshots: list[Any]  # window snapshots of ``events`` rows (the serving path's input)
    events_desc: str
    corpus: Any


def _eval_examples(train_path: Path, events_path: Path, same: bool, corpus: Any
                   ) -> tuple[list[Example], str]:  # fmt: skip
    if same:
        from model_export.tables import store_examples

        dataset = load_dataset(train_path)
        from model_export.corpus import DEFAULT_TEST_FRACTION, SPLIT_SEED
        from model_export.data import split_by_user

        split = split_by_user(dataset, (1 - DEFAULT_TEST_FRACTION, 0.0, DEFAULT_TEST_FRACTION),
                              SPLIT_SEED)  # fmt: skip
        return store_examples(dataset, split.test), "test split (users)"
    return build_examples(load_dataset(events_path)), "all sessions"


def load_eval_data(train_path: Path, events_path: Path, spec: Any) -> EvalData:
    same = load_dataset(train_path).fingerprint == load_dataset(events_path).fingerprint
    corpus = load_corpus([train_path], test_fraction=0.2 if same else 0.0, spec=spec)
    examples, desc = _eval_examples(train_path, events_path, same, corpus)
    events = build_table(store_name(events_path), examples, corpus.spec, corpus.vocab)
    fit_rows = sample_prefixes(corpus.train, 4, 0)
    users = set(corpus.session_user.values())
    x_fit, x_events, _ = corpus.features(fit_rows, events, users, 0)
    return EvalData(corpus.train.take(fit_rows), x_fit, events, x_events,
                    [e.snapshot for e in examples], desc, corpus)  # fmt: skip


def model_probabilities(model_dir: Path, snapshots: list[Any]) -> np.ndarray:
    from stream_app.scoring.onnx_backend import OnnxScorer

    scorer = OnnxScorer(model_dir)
    parts = [scorer.score(snapshots[i : i + 2048]) for i in range(0, len(snapshots), 2048)]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def frozen_head_probabilities(data: EvalData, encoder_dir: Path) -> np.ndarray:
    """The same session model on the frozen encoder, fitted on ``--train`` (no fine-tuning)."""
    from dataclasses import replace

    from model_export.calibrate import fit_platt
    from model_export.fit import fit, predict_logits
    from model_export.item_cache import item_table
    from model_export.select import Candidate, cross_validate, rows_for
    from model_export.train import SHIPPED_HEAD

    cfg = replace(SHIPPED_HEAD, tune_layers=0)
    items = item_table(data.corpus.vocab.texts, encoder_dir)
    cand = Candidate("model", head=cfg)
    oof = cross_validate(data.corpus, items, [cand], 0, 5)[cand.key()]
    platt = fit_platt(oof.values, data.corpus.train.label)
    fitted = fit(rows_for(data.fit, data.x_fit), items, data.corpus.spec.feature_names, cfg)
    return platt.apply(predict_logits(fitted, items, rows_for(data.events, data.x_events)))


def evaluate(
    train_path: str | Path,
    events_path: str | Path,
    report_json: str | Path,
    model_dir: str | Path | None = None,
    bootstrap_reps: int = 200,
    seed: int = 13,
) -> dict[str, Any]:
    """Score the model (serving path) and the baselines; write JSON + PNGs; return it."""
    from model_export.bundle import default_model_dir
    from model_export.train import SHIPPED_BASELINES
    from stream_app.scoring.locate import default_encoder_dir
    from stream_app.scoring.model_dir import load_metadata

    start = time.monotonic()
    directory = Path(model_dir) if model_dir else default_model_dir()
    meta = load_metadata(directory)
    data = load_eval_data(Path(train_path), Path(events_path), meta.spec)
    y = data.events.label
    if not _two_classes(y):
        raise ValueError(f"{events_path}: the evaluation examples need both classes")
    preds = {"model": (model_probabilities(directory, data.snapshots), meta.threshold)}
    for name, params in SHIPPED_BASELINES.items():
        predict = fit_baseline(BaselineSpec(name, params), data.x_fit, data.fit.window_text,
                               data.fit.label)  # fmt: skip
        preds[name] = (predict(data.x_events, data.events.window_text), 0.5)
    preds["frozen_head"] = (frozen_head_probabilities(data, default_encoder_dir()), 0.5)
    users = list(data.events.user)
    report = _assemble(preds, y, data.events.prefix_len, users, bootstrap_reps, seed)
    for name, (p, _) in preds.items():
        block = report["model"] if name == "model" else report["baselines"][name]
        block["session_weighted"] = weighted_metrics(y, p, data.events.session_weight)
    report.update(_provenance(train_path, events_path, data, meta, bootstrap_reps, seed))
    report["seconds"] = round(time.monotonic() - start, 1)
    _write_outputs(report, preds, y, Path(report_json))
    return report


def _assemble(
    preds: dict[str, tuple[np.ndarray, float]], y: np.ndarray, lengths: np.ndarray,
    users: list[str], reps: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    blocks = {name: full_report(y, p, lengths, users, t, reps, seed) for name, (p, t) in
              preds.items()}  # fmt: skip
    for name, (p, _) in preds.items():
        if name != "model":
            blocks[name]["model_minus_this"] = deltas_vs(y, preds["model"][0], p, users, reps,
                                                         seed)  # fmt: skip
    return {
        "base_rate": float(y.mean()),
        "model": blocks.pop("model"),
        "baselines": blocks,
    }


def _provenance(train_path: str | Path, events_path: str | Path, data: EvalData,
                meta: Any, reps: int, seed: int) -> dict[str, Any]:  # fmt: skip
    return {
        "events": {
            "path": str(events_path),
            "examples": data.events_desc,
            "n_sessions": len(set(data.events.session)),
            "n_users": len(set(data.events.user)),
        },
        "train": {"path": str(train_path), "n_fit_rows": len(data.fit)},
        "model_version": meta.model_version,
        "bootstrap": {"reps": reps, "seed": seed, "resample": "users"},
        "prefix_buckets": [name for name, _, _ in PREFIX_BUCKETS],
    }


def _write_outputs(report: dict[str, Any], preds: dict[str, tuple[np.ndarray, float]],
                   y: np.ndarray, report_json: Path) -> None:  # fmt: skip
    report_json.parent.mkdir(parents=True, exist_ok=True)
    report_json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    scores = {name: p for name, (p, _) in preds.items()}
    stem = report_json.with_suffix("")
    plot_pr(scores, y, Path(f"{stem}_pr.png"))
    plot_calibration(scores, y, Path(f"{stem}_calibration.png"))
    print_table(report)


# ---------------------------------------------------------------------------- output


def plot_pr(scores: dict[str, np.ndarray], y: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, p in scores.items():
        precision, recall, _ = precision_recall_curve(y, p)
        ax.plot(recall, precision, label=f"{name} (AP {average_precision_score(y, p):.3f})")
    ax.axhline(float(y.mean()), color="grey", linestyle=":", label=f"base rate {y.mean():.3f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_calibration(scores: dict[str, np.ndarray], y: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    top = 0.05
    for name, p in scores.items():
        # Quantile bins: the scores crowd near 0 at a 4 % base rate.
        frac, mean_p = calibration_curve(y, p, n_bins=8, strategy="quantile")
        ax.plot(mean_p, frac, marker="o", label=name)
        top = max(top, float(frac.max()), float(mean_p.max()))
    ax.plot([0, top], [0, top], color="grey", linestyle=":", label="perfect")
    ax.set_xlim(0, top * 1.05)
    ax.set_ylim(0, top * 1.05)
    ax.set(xlabel="mean predicted probability", ylabel="observed buy rate",
           title="Calibration (quantile bins)")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(block: dict[str, Any], key: str) -> str:
    value = block.get(key)
    if value is None:
        return "-"
    ci = block.get(f"{key}_ci")
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def _delta(block: dict[str, Any]) -> str:
    delta = block.get("model_minus_this", {}).get("pr_auc")
    if not delta:
        return ""
    ci = delta["ci"]
    return f"{delta['delta']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else f"{delta['delta']:+.3f}"


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"base rate {report['base_rate']:.3f} — 95% user-bootstrap CIs")
    for column in (
        "model",
        "ROC-AUC",
        "PR-AUC",
        "log-loss",
        "Brier",
        "F1@thr",
        "model−this PR-AUC",
    ):
        table.add_column(column)
    rows = {"model": report["model"], **report["baselines"]}
    for name, block in rows.items():
        f1 = block["at_threshold"]["f1"]
        table.add_row(name, *(_fmt(block, k) for k in METRICS), f"{f1:.3f}", _delta(block))
    console = Console(width=160)  # wide enough for the CIs even when piped
    console.print(table)
    console.print(_prefix_table(rows))


def _prefix_table(rows: dict[str, dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="PR-AUC by prefix length (events seen) [n / positives]")
    table.add_column("model")
    first = next(iter(rows.values()))["by_prefix"]
    for bucket, block in first.items():
        table.add_column(f"{bucket} [{block['n']}/{block['positives']}]")
    for name, block in rows.items():
        table.add_row(name, *(_fmt(b, "pr_auc") for b in block["by_prefix"].values()))
    return table


# ---------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    from model_export.select import DEFAULT_EVENTS

    p = argparse.ArgumentParser(prog="intent-stream evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--train", default=str(DEFAULT_EVENTS[1]), help="log the baselines fit on")
    p.add_argument("--events", required=True, help="log to evaluate on (CSV(.gz) or JSONL)")
    p.add_argument("--report-json", required=True, help="output JSON (PNGs go next to it)")
    p.add_argument("--model-dir", default=None, help="built model dir (default: the shipped one)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates")
    p.add_argument("--seed", type=int, default=13)
    return p


def _check(a: argparse.Namespace) -> None:
    check_event_log(a.train, "--train")
    check_event_log(a.events, "--events")
    if a.model_dir and not Path(a.model_dir).is_dir():
        raise ConfigError(f"--model-dir {a.model_dir} is not a directory")
    check_positive("--bootstrap", a.bootstrap, allow_zero=True)
    check_output_file("--report-json", a.report_json)


def run_evaluate_cli(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``intent-stream evaluate`` and ``python -m model_export.evaluate``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    a = build_parser().parse_args(argv)
    try:
        _check(a)
        evaluate(a.train, a.events, a.report_json, a.model_dir, a.bootstrap, a.seed)
    except (ConfigError, ModelLoadError) as exc:
        print(f"intent-stream evaluate: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(run_evaluate_cli())
