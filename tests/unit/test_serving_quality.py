"""The committed model, served exactly as the worker serves it, on real labelled sessions.

* Serving = training: the ONNX scorer (worker path: snapshot -> features.py -> tokenizer ->
  ONNX) reproduces the validation ROC-AUC recorded at training time (torch path).
* INT8: the quantised variant loses at most 0.005 ROC-AUC on the same examples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from model_export.data import build_examples, load_dataset, sessions_of, split_by_user
from model_export.export_onnx import check_auc_drop, roc_auc
from stream_app.config import ModelSettings
from stream_app.scoring import load_scorer
from tests.shared_data import SHARED_REES46

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED_REES46.exists(), reason="shared REES46 data not present"),
]

WEIGHTS = Path(__file__).resolve().parents[2] / "model_export" / "weights"


@pytest.fixture(scope="module")
def validation() -> tuple[list, np.ndarray]:  # type: ignore[type-arg]
    metadata = orjson.loads((WEIGHTS / "metadata.json").read_bytes())
    dataset = load_dataset(SHARED_REES46)
    config = metadata["train_config"]
    split = split_by_user(dataset, tuple(config["split_fractions"]), config["seed"])
    examples = build_examples(dataset, session_ids=sessions_of(dataset, split.val))
    return [e.snapshot for e in examples], np.array([e.label for e in examples])


@pytest.fixture(scope="module")
def recorded_val_auc() -> float:
    return float(orjson.loads((WEIGHTS / "metadata.json").read_bytes())["val_metrics"]["roc_auc"])


def test_serving_path_reproduces_the_training_validation_auc(
    validation: tuple[list, np.ndarray],  # type: ignore[type-arg]
    recorded_val_auc: float,
) -> None:
    snapshots, labels = validation
    scorer = load_scorer(ModelSettings(backend="onnx", variant="fp32"))
    auc = roc_auc(scorer.score(snapshots), labels)
    assert auc == pytest.approx(recorded_val_auc, abs=2e-3)


def test_int8_loses_at_most_half_a_point_of_auc(
    validation: tuple[list, np.ndarray],  # type: ignore[type-arg]
) -> None:
    snapshots, labels = validation
    fp32 = load_scorer(ModelSettings(backend="onnx", variant="fp32")).score(snapshots)
    int8 = load_scorer(ModelSettings(backend="onnx", variant="int8")).score(snapshots)
    assert check_auc_drop(fp32, int8, labels, max_drop=0.005) <= 0.005
