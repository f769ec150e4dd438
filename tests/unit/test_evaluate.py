"""Metric maths (bootstrap CIs, prefix buckets, thresholds, Platt) and a training smoke run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_export.calibrate import Platt, best_f1_threshold, fit_platt
from model_export.evaluate import (
    METRICS,
    PREFIX_BUCKETS,
    bootstrap_ci,
    by_prefix,
    deltas_vs,
    prefix_bucket,
    score_block,
    threshold_metrics,
)


def synthetic(n_users: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Scores that carry signal; 3 correlated rows per user."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n_users * 3) < 0.2).astype(int)
    p = np.clip(0.15 + 0.4 * y + rng.normal(0, 0.2, size=y.shape), 0.001, 0.999)
    users = [f"u{i // 3}" for i in range(len(y))]
    return y, p, users


@pytest.mark.parametrize("name", sorted(METRICS))
def test_bootstrap_ci_brackets_the_point_estimate(name: str) -> None:
    y, p, users = synthetic()
    point = METRICS[name](y, p)
    low, high = bootstrap_ci(y, p, users, METRICS[name], reps=200, seed=1)
    assert low <= point <= high
    assert low < high
    assert bootstrap_ci(y, p, users, METRICS[name], reps=200, seed=1) == (low, high)


def test_bootstrap_ci_narrows_with_more_users() -> None:
    metric = METRICS["roc_auc"]
    small = bootstrap_ci(*synthetic(40), metric, reps=200, seed=2)
    large = bootstrap_ci(*synthetic(1000), metric, reps=200, seed=2)
    assert large[1] - large[0] < small[1] - small[0]


def test_paired_deltas() -> None:
    y, p, users = synthetic()
    noisy = np.clip(p + np.random.default_rng(5).normal(0, 0.3, size=p.shape), 0.001, 0.999)
    same = deltas_vs(y, p, p, users, reps=50, seed=0)
    assert same["roc_auc"] == {"delta": 0.0, "ci": [0.0, 0.0]}
    better = deltas_vs(y, p, noisy, users, reps=200, seed=0)["roc_auc"]
    assert better["delta"] > 0
    assert better["ci"][0] <= better["delta"] <= better["ci"][1]


@pytest.mark.parametrize(
    ("length", "bucket"),
    [(1, "1"), (2, "2"), (3, "3-4"), (4, "3-4"), (5, "5-9"), (9, "5-9"), (10, "10+"), (50, "10+")],
)
def test_prefix_buckets(length: int, bucket: str) -> None:
    assert prefix_bucket(length) == bucket


def test_by_prefix_partitions_the_examples() -> None:
    y, p, users = synthetic()
    lengths = np.arange(len(y)) % 12 + 1
    result = by_prefix(y, p, lengths, users, reps=0, seed=0)
    assert list(result) == [name for name, _, _ in PREFIX_BUCKETS]
    assert sum(block["n"] for block in result.values()) == len(y)
    assert sum(block["positives"] for block in result.values()) == int(y.sum())
    assert result["1"]["n"] == int((lengths == 1).sum())


def test_single_class_block_has_no_auc() -> None:
    block = score_block(np.zeros(5, dtype=int), np.full(5, 0.1), ["u"] * 5, reps=10, seed=0)
    assert block["roc_auc"] is None
    assert block["n"] == 5


def test_threshold_metrics_by_hand() -> None:
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([0.9, 0.4, 0.6, 0.1, 0.8])
    m = threshold_metrics(y, p, 0.5)  # predicted: 0.9, 0.6, 0.8 -> tp=2, fp=1, fn=1
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)


def test_best_f1_threshold_by_hand() -> None:
    y = np.array([1, 1, 0, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    # Cut at 0.6: tp=3, fp=1 -> F1 = 6/7, better than any other cut.
    assert best_f1_threshold(p, y) == pytest.approx(0.6)


def test_platt_recovers_known_parameters() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, size=20_000)
    truth = Platt(a=0.5, b=-2.0)
    y = (rng.random(logits.shape) < truth.apply(logits)).astype(int)
    fitted = fit_platt(logits, y)
    assert fitted.a == pytest.approx(0.5, abs=0.08)
    assert fitted.b == pytest.approx(-2.0, abs=0.15)
    with pytest.raises(ValueError, match="both classes"):
        fit_platt(logits[:3], np.zeros(3))


# ---------------------------------------------------------------------------- training smoke


def _tiny_log(path: Path) -> Path:
    """16 sessions of 16 users; buyers cart a named product, non-buyers only view."""
    rows = ["event_time,event_type,product_id,category_id,category_code,brand,price,user_id,"
            "user_session,product_name,device"]  # fmt: skip
    for s in range(16):
        kind = "cart" if s % 2 else "view"
        name = "google tee" if s % 2 else "youtube mug"
        for step, event in enumerate(("view", kind, "purchase" if s % 2 else "view")):
            rows.append(f"2019-10-01 00:{s:02d}:0{step} UTC,{event},{s % 3},,home.apparel,g,"
                        f"5.0,u{s},s{s},{name},{'mobile' if s % 4 else 'desktop'}")  # fmt: skip
    rows.append("2019-10-01 01:00:00 UTC,view,9,,home,g,5.0,late,late,x,desktop")  # log end
    path.write_text("\n".join(rows) + "\n")
    return path


def test_training_smoke_writes_small_weights_that_serve_the_same(tmp_path: Path) -> None:
    from model_export.bundle import build_model_dir
    from model_export.fit import HeadConfig
    from model_export.train import train
    from stream_app.scoring.onnx_backend import OnnxScorer

    log = _tiny_log(tmp_path / "tiny.csv")
    cfg = HeadConfig(epochs=30, lr=1e-2, batch_size=8, hidden=16, mlp_hidden=16)
    meta = train([log], tmp_path / "w", cfg, test_fraction=0.0, calibration_folds=2)
    assert sum(p.stat().st_size for p in (tmp_path / "w").iterdir()) < 1_000_000
    assert meta["calibration"]["method"] == "platt"
    oof = meta["cv_oof_metrics"]["tiny"]["prefix"]
    assert oof["roc_auc"] > 0.5  # out-of-fold: the cart/product signal was learnt
    built = build_model_dir(tmp_path / "w", out_dir=tmp_path / "built")
    from model_export.data import build_examples, load_dataset

    examples = build_examples(load_dataset(log))
    served = OnnxScorer(built).score([e.snapshot for e in examples])
    labels = np.array([e.label for e in examples])
    assert served[labels == 1].mean() > served[labels == 0].mean()
