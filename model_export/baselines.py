"""Baselines the fine-tuned model has to beat, on the same examples and the same encoding.

- ``logreg``: logistic regression on ``behaviour_features`` (standardised).
- ``hgb``: gradient-boosted trees (``HistGradientBoostingClassifier``) on the same features.
- ``frozen_probe``: frozen MiniLM mean-pooled embedding of ``session_text`` ‖ standardised
  features → logistic regression (what fine-tuning adds over an off-the-shelf encoder).

No class weighting: these models are meant to give usable probabilities (log-loss, Brier)
as they are; the decision threshold is chosen on validation like the model's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from model_export.data import Batch, Example, encode_examples, tokenizer_for
from model_export.model import load_encoder, mean_pool
from stream_app.features import behaviour_matrix

Scorer = Callable[[list[Example]], np.ndarray]


@dataclass(frozen=True, slots=True)
class FittedBaseline:
    name: str
    score: Scorer  # examples -> P(buy)


def hand_features(examples: list[Example]) -> np.ndarray:
    return behaviour_matrix([e.snapshot for e in examples]).astype(np.float64)


def _labels(examples: list[Example]) -> np.ndarray:
    return np.asarray([e.label for e in examples], dtype=int)


def fit_logreg(train: list[Example], seed: int = 13) -> FittedBaseline:
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    model.fit(hand_features(train), _labels(train))
    return FittedBaseline("logreg", lambda ex: model.predict_proba(hand_features(ex))[:, 1])


def fit_hgb(train: list[Example], seed: int = 13) -> FittedBaseline:
    # Shallow, regularised trees: ~200 positives do not support deep interactions.
    model = HistGradientBoostingClassifier(
        max_iter=200, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=30,
        l2_regularization=1.0, early_stopping=False, random_state=seed,
    )  # fmt: skip
    model.fit(hand_features(train), _labels(train))
    return FittedBaseline("hgb", lambda ex: model.predict_proba(hand_features(ex))[:, 1])


@torch.no_grad()
def embed(batch: Batch, encoder: torch.nn.Module, size: int = 128) -> np.ndarray:
    """Mean-pooled frozen-encoder embeddings, float64 [N, hidden]."""
    encoder.eval()
    parts = []
    for start in range(0, batch.size, size):
        ids, mask, _ = batch.chunk(start, start + size)
        parts.append(mean_pool(encoder(input_ids=ids, attention_mask=mask)[0], mask))
    return torch.cat(parts).double().numpy()


@dataclass(frozen=True, slots=True)
class FrozenProbe:
    encoder_dir: str
    max_tokens: int
    text_events: int

    def inputs(self, examples: list[Example], encoder: torch.nn.Module) -> np.ndarray:
        tokenizer = tokenizer_for(self.encoder_dir)
        batch = encode_examples(examples, tokenizer, self.max_tokens, self.text_events)
        return np.hstack([embed(batch, encoder), hand_features(examples)])

    def fit(self, train: list[Example], seed: int = 13) -> FittedBaseline:
        encoder = load_encoder(self.encoder_dir)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000,
                                                                   random_state=seed))  # fmt: skip
        model.fit(self.inputs(train, encoder), _labels(train))
        return FittedBaseline(
            "frozen_probe", lambda ex: model.predict_proba(self.inputs(ex, encoder))[:, 1]
        )


def fit_all(
    train: list[Example], encoder_dir: str | Path, max_tokens: int, text_events: int, seed: int
) -> list[FittedBaseline]:
    probe = FrozenProbe(str(encoder_dir), max_tokens, text_events)
    return [fit_logreg(train, seed), fit_hgb(train, seed), probe.fit(train, seed)]
