"""``python -m model_export.gpu_check``: its CPU part runs here, through the real CLI, on a
small sample of real held-out REES46 prefixes (ONNX Runtime vs torch CPU fp32, the same
comparison and timing code the GPU backends go through); its pure parts are checked directly;
a GPU backend named on a machine without one is one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from model_export.gpu_check import (
    Availability,
    GpuCheckError,
    quality,
    resolve_backends,
    stratified_sample,
    within_tolerance,
)
from tests.shared_data import SHARED_REES46

ROOT = Path(__file__).resolve().parents[2]
needs_rees46 = pytest.mark.skipif(not SHARED_REES46.is_file(), reason="shared REES46 log absent")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "model_export.gpu_check", *args],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, **(env or {})},
    )  # fmt: skip


@needs_rees46
def test_cpu_part_of_the_check_runs_end_to_end(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = _cli("--out", str(out), "--backends", "onnx,torch-cpu", "--model-dir", str(model_dir),
                "--events", str(SHARED_REES46), "--max-prefixes", "120", "--batches", "1,8",
                "--seconds", "0.05", "--threads", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    (store,) = report["stores"]
    assert store["store"] == "rees46"
    assert 0 < store["positives"] < store["n"] <= 120 < store["total"]
    assert set(report["backends"]) == {"onnx", "torch-cpu"}
    torch_cpu = report["backends"]["torch-cpu"]["quality"]["all"]
    assert 0.0 < torch_cpu["roc_auc"] < 1.0
    assert torch_cpu["max_abs_dp"] < 1e-4, "fp32 torch and ONNX Runtime score alike"
    assert abs(torch_cpu["d_roc_auc"]) < 1e-3
    assert report["backends"]["torch-cpu"]["ok"]
    assert report["ok"]
    for name in ("onnx", "torch-cpu"):
        cells = {(t["batch"], t["cache"]) for t in report["backends"][name]["timings"]}
        assert cells == {(1, "warm"), (1, "cold"), (8, "warm"), (8, "cold")}
        assert report["backends"][name]["startup"]["start_s"] > 0
    markdown = (out / "gpu_check.md").read_text()
    assert "| torch-cpu | all |" in markdown
    assert "| onnx | 8 | cold |" in markdown
    assert markdown in done.stdout


def test_a_named_gpu_backend_without_a_gpu_is_one_line(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = _cli(
        "--out", str(tmp_path), "--backends", "torch-cuda", env={"CUDA_VISIBLE_DEVICES": ""}
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["gpu_check: error: backend torch-cuda cannot run here: no CUDA GPU is visible"]
    assert not (tmp_path / "gpu_check.json").exists()


def test_a_missing_log_is_one_line(model_dir: Path, tmp_path: Path) -> None:
    done = _cli("--out", str(tmp_path), "--backends", "onnx", "--model-dir", str(model_dir),
                "--events", str(tmp_path / "nowhere.csv"))  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("gpu_check: error: no event log at")


def test_auto_runs_what_the_machine_has_and_says_why_not_the_rest() -> None:
    assert resolve_backends("auto", Availability(cuda=False, tensorrt=False)) == (
        ["onnx"],
        {"torch-cuda": "no CUDA GPU is visible", "tensorrt": "no CUDA GPU is visible"},
    )
    chosen, skipped = resolve_backends("auto", Availability(cuda=True, tensorrt=False))
    assert chosen == ["onnx", "torch-cuda"]
    assert "tensorrt is not installed" in skipped["tensorrt"]
    assert resolve_backends("auto", Availability(cuda=True, tensorrt=True))[0] == [
        "onnx", "torch-cuda", "tensorrt"]  # fmt: skip
    assert resolve_backends("tensorrt,onnx", Availability(True, True))[0] == ["onnx", "tensorrt"]
    with pytest.raises(GpuCheckError, match="tensorrt is not installed"):
        resolve_backends("tensorrt", Availability(cuda=True, tensorrt=False))
    with pytest.raises(GpuCheckError, match="unknown backend"):
        resolve_backends("cuda", Availability(True, True))


def test_stratified_sample_keeps_both_classes_in_proportion() -> None:
    labels = np.array([1] * 30 + [0] * 970)
    keep = stratified_sample(labels, 100, seed=1)
    assert len(keep) == 100
    assert labels[keep].sum() == 3
    assert np.array_equal(keep, stratified_sample(labels, 100, seed=1))
    assert np.all(np.diff(keep) > 0)
    rare = np.array([1] + [0] * 999)
    assert rare[stratified_sample(rare, 10)].sum() == 1, "AUC stays defined"
    assert len(stratified_sample(labels, 5000)) == 1000


def test_quality_compares_aucs_and_probabilities() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=400)
    reference = np.clip(0.3 * y + rng.uniform(0, 0.7, size=400), 0, 1)
    candidate = reference + rng.normal(0, 1e-4, size=400)
    q = quality(y, candidate, reference)
    assert q["roc_auc"] == pytest.approx(roc_auc_score(y, candidate))
    assert q["d_roc_auc"] == pytest.approx(
        roc_auc_score(y, candidate) - roc_auc_score(y, reference)
    )
    assert q["max_abs_dp"] == pytest.approx(np.max(np.abs(candidate - reference)))
    assert within_tolerance(q, 2e-3, 1e-3)
    shifted = quality(y, reference + 0.01, reference)
    assert shifted["d_roc_auc"] == pytest.approx(0.0, abs=1e-12), "a shift keeps the ranking"
    assert not within_tolerance(shifted, 2e-3, 1e-3), "but moves every p by 0.01"
    one_class = quality(np.zeros(5, dtype=np.int64), np.zeros(5), np.zeros(5))
    assert one_class["roc_auc"] is None
    assert one_class["d_pr_auc"] is None
