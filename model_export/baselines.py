"""Baselines with the model's inputs and the same tuning budget.

Every baseline sees what the model sees: the window's feature vector (behaviour, last
product, context one-hots, out-of-fold product/category rates) and its words (event types,
item texts, category path, brand, price band, context) as TF-IDF:

- ``logreg``: logistic regression on standardised features ‖ TF-IDF (sparse).
- ``hgb``: gradient-boosted trees on features ‖ a 32-d SVD of the TF-IDF.

Each has a small grid (``GRIDS``) tuned by the same user-grouped CV as the model
(``model_export.select``); the model's "frozen encoder + the same head" comparison is the
session model with ``tune_layers = 0`` (``model_export.fit``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.decomposition import TruncatedSVD
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (features, texts) -> P(buy)


@dataclass(frozen=True)
class BaselineSpec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.name}({inner})"


GRIDS: dict[str, list[dict[str, Any]]] = {
    "logreg": [{"C": 0.05}, {"C": 0.5}],
    "hgb": [
        {"learning_rate": 0.05, "max_leaf_nodes": 31, "max_iter": 300, "min_samples_leaf": 50},
        {"learning_rate": 0.1, "max_leaf_nodes": 15, "max_iter": 150, "min_samples_leaf": 100},
    ],
}


def _tfidf() -> TfidfVectorizer:
    words = r"[^\s]+"  # whitespace-separated tokens (keeps "t_cart", "ctx_device_mobile")
    return TfidfVectorizer(
        min_df=3, max_features=20_000, sublinear_tf=True, token_pattern=words, dtype=np.float32
    )


def fit_logreg(x: np.ndarray, text: np.ndarray, y: np.ndarray, params: dict[str, Any],
               seed: int) -> Predict:  # fmt: skip
    scaler, tfidf = StandardScaler(), _tfidf()
    design = sparse.hstack([sparse.csr_matrix(scaler.fit_transform(x)),
                            tfidf.fit_transform(text)]).tocsr()  # fmt: skip
    model = LogisticRegression(C=params.get("C", 0.5), max_iter=3000, random_state=seed)
    model.fit(design, y)

    def predict(xs: np.ndarray, texts: np.ndarray) -> np.ndarray:
        rows = sparse.hstack([sparse.csr_matrix(scaler.transform(xs)),
                              tfidf.transform(texts)]).tocsr()  # fmt: skip
        return np.asarray(model.predict_proba(rows)[:, 1])

    return predict


def fit_hgb(x: np.ndarray, text: np.ndarray, y: np.ndarray, params: dict[str, Any],
            seed: int) -> Predict:  # fmt: skip
    tfidf = _tfidf()
    svd = TruncatedSVD(n_components=32, random_state=seed)
    design = np.hstack([x, svd.fit_transform(tfidf.fit_transform(text))])
    model = HistGradientBoostingClassifier(l2_regularization=1.0, early_stopping=False,
                                           random_state=seed, **params)  # fmt: skip
    model.fit(design, y)

    def predict(xs: np.ndarray, texts: np.ndarray) -> np.ndarray:
        rows = np.hstack([xs, svd.transform(tfidf.transform(texts))])
        return np.asarray(model.predict_proba(rows)[:, 1])

    return predict


FITTERS = {"logreg": fit_logreg, "hgb": fit_hgb}


def fit_baseline(spec: BaselineSpec, x: np.ndarray, text: np.ndarray, y: np.ndarray,
                 seed: int = 0) -> Predict:  # fmt: skip
    return FITTERS[spec.name](x, text, y, spec.params, seed)
