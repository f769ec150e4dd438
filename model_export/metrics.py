"""Weighted ranking/calibration metrics and their summaries (prefix- and session-weighted).

Prefix-weighted: every labelled prefix counts once (what the worker scores). Session-weighted:
each session's prefixes share a weight of 1, so long sessions do not dominate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

WEIGHTINGS = ("prefix", "session")


def metrics(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> dict[str, float]:
    if not 0 < int(y.sum()) < len(y):
        return {"pr_auc": float("nan"), "roc_auc": float("nan"), "brier": float("nan")}
    return {
        "pr_auc": float(average_precision_score(y, p, sample_weight=w)),
        "roc_auc": float(roc_auc_score(y, p, sample_weight=w)),
        "brier": float(brier_score_loss(y, p, sample_weight=w)),
    }


def both_weightings(y: np.ndarray, p: np.ndarray, session_w: np.ndarray) -> dict[str, Any]:
    return {"prefix": metrics(y, p), "session": metrics(y, p, session_w)}


def mean_ci(values: list[float], alpha: float = 0.05) -> dict[str, float]:
    """Mean and a t-interval over CV fold runs (folds are not independent: indicative)."""
    arr = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if len(arr) < 2:
        return {"mean": float(arr.mean()) if len(arr) else float("nan"), "lo": float("nan"),
                "hi": float("nan"), "n": len(arr)}  # fmt: skip
    half = stats.t.ppf(1 - alpha / 2, len(arr) - 1) * arr.std(ddof=1) / np.sqrt(len(arr))
    return {"mean": float(arr.mean()), "lo": float(arr.mean() - half),
            "hi": float(arr.mean() + half), "n": len(arr)}  # fmt: skip
