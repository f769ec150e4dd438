"""Platt scaling: ``p = sigmoid(a * logit + b)``, fitted on validation logits.

Training with a positive-class weight shifts the logits (the model over-predicts the rare
class on purpose); Platt scaling maps them back to frequencies observed on held-out data.
The two numbers live in ``IntentModel.platt_a`` / ``platt_b`` so every backend applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression


@dataclass(frozen=True, slots=True)
class Platt:
    a: float
    b: float

    def apply(self, logits: np.ndarray) -> np.ndarray:
        z = self.a * np.asarray(logits, dtype=np.float64) + self.b
        return 1.0 / (1.0 + np.exp(-z))


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> Platt:
    """Maximum-likelihood (a, b); needs both classes present."""
    y = np.asarray(labels).astype(int)
    if y.min() == y.max():
        raise ValueError("Platt scaling needs both classes in the calibration set")
    # A huge C is (almost) unregularised logistic regression on the single logit input.
    lr = LogisticRegression(C=1e6, max_iter=1000)
    lr.fit(np.asarray(logits, dtype=np.float64).reshape(-1, 1), y)
    return Platt(a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))


def best_f1_threshold(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Probability threshold with the highest F1 (ties: the lowest threshold)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    order = np.argsort(-p, kind="stable")
    tp = np.cumsum(y[order])
    predicted = np.arange(1, len(p) + 1)
    f1 = 2 * tp / (predicted + y.sum())
    # Only cut where the score changes, so a threshold never splits tied scores.
    distinct = np.r_[p[order][1:] != p[order][:-1], True]
    best = int(np.argmax(np.where(distinct, f1, -1.0)))
    return float(p[order][best])
