"""GPU backends: torch CUDA fp16, TensorRT (one engine per graph). Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_export.tensorrt_build import FP16_TOLERANCE, build_engines, sample_windows
from stream_app.scoring.onnx_backend import OnnxScorer
from stream_app.scoring.torch_backend import TorchScorer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> OnnxScorer:
    return OnnxScorer(model_dir)


def test_torch_cuda_matches_onnx(model_dir: Path, reference: OnnxScorer) -> None:
    scorer = TorchScorer(model_dir, device="cuda")
    windows = sample_windows(200)
    for size in (1, 8, 64, 200):
        diff = scorer.score(windows[:size]) - reference.score(windows[:size])
        assert float(np.max(np.abs(diff))) <= FP16_TOLERANCE
    scorer.close()


def test_tensorrt_engines_match_onnx(
    model_dir: Path, reference: OnnxScorer, tmp_path: Path
) -> None:
    pytest.importorskip("tensorrt")
    from stream_app.scoring.tensorrt_backend import TensorRTScorer

    built = build_engines(model_dir, tmp_path / "engines", mode="seq",
                          timing_cache=tmp_path / "timing.cache")  # fmt: skip
    assert (tmp_path / "timing.cache").stat().st_size > 0
    assert (built / "item_encoder.plan").is_file()
    assert (built / "session_model.plan").is_file()
    scorer = TensorRTScorer(built)
    windows = sample_windows(200)
    for size in (1, 8, 64, 200):
        diff = scorer.score(windows[:size]) - reference.score(windows[:size])
        assert float(np.max(np.abs(diff))) <= FP16_TOLERANCE
    scorer.close()
