"""The committed model, served exactly as the worker serves it, on real held-out users.

Serving = training: the ONNX scorer (worker path: snapshot -> inputs.py -> item cache /
item encoder graph -> session model graph) reproduces, on the held-out test users of each
store, the ROC-AUC / PR-AUC / Brier that training recorded with the torch modules.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from model_export.corpus import DEFAULT_TEST_FRACTION, SPLIT_SEED
from model_export.data import load_dataset, split_by_user
from model_export.tables import store_examples
from tests.shared_data import SHARED_GA_MERCH, SHARED_REES46

WEIGHTS = Path(__file__).resolve().parents[2] / "model_export" / "weights"
STORES = {"rees46": SHARED_REES46, "ga_merch": SHARED_GA_MERCH}

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def scorer():  # type: ignore[no-untyped-def]
    from model_export.bundle import build_model_dir
    from stream_app.core.config import ModelSettings
    from stream_app.scoring import load_scorer

    return load_scorer(ModelSettings(dir=build_model_dir(), backend="onnx"))


@pytest.mark.parametrize("store", sorted(STORES))
def test_serving_path_reproduces_the_recorded_test_metrics(store: str, scorer) -> None:  # type: ignore[no-untyped-def]
    path = STORES[store]
    if not path.exists():
        pytest.skip(f"shared {store} data not present")
    recorded = orjson.loads((WEIGHTS / "metadata.json").read_bytes())["test_metrics"][store]
    dataset = load_dataset(path)
    fractions = (1 - DEFAULT_TEST_FRACTION, 0.0, DEFAULT_TEST_FRACTION)
    examples = store_examples(dataset, split_by_user(dataset, fractions, SPLIT_SEED).test)
    labels = np.array([e.label for e in examples])
    assert len(labels) == recorded["n"]
    assert labels.sum() == recorded["positives"]
    p = np.concatenate([scorer.score([e.snapshot for e in examples[i : i + 1024]])
                        for i in range(0, len(examples), 1024)])  # fmt: skip
    assert roc_auc_score(labels, p) == pytest.approx(recorded["prefix"]["roc_auc"], abs=2e-3)
    assert average_precision_score(labels, p) == pytest.approx(
        recorded["prefix"]["pr_auc"], abs=3e-3
    )
    assert brier_score_loss(labels, p) == pytest.approx(recorded["prefix"]["brier"], abs=1e-3)
