"""GPU backends: torch CUDA fp16 + CUDA graphs, TensorRT. Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_export.tensorrt_build import FP16_TOLERANCE, build_engines, synthetic_batch
from stream_app.scoring.onnx_backend import OnnxScorer
from stream_app.scoring.torch_backend import TorchScorer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> OnnxScorer:
    return OnnxScorer(model_dir)


def _shapes() -> list[tuple[int, int]]:
    return [(1, 16), (8, 32), (32, 64), (5, 64)]


def test_torch_cuda_fp16_graphs_match_onnx(model_dir: Path, reference: OnnxScorer) -> None:
    scorer = TorchScorer(model_dir, device="cuda")
    assert scorer.cuda_graphs
    for rows, tokens in _shapes():
        batch = synthetic_batch(rows, tokens, len(reference.metadata.feature_names), seed=rows)
        first = scorer.score_encoded([batch])
        again = scorer.score_encoded([batch])  # replayed graph, same static buffers
        np.testing.assert_array_equal(first, again)
        expected = reference.score_encoded([batch])
        assert float(np.max(np.abs(first - expected))) <= FP16_TOLERANCE
    assert set(scorer._graphs) == {(1, 16), (8, 32), (32, 64), (5, 64)}
    scorer.close()


def test_tensorrt_engine_matches_onnx(
    model_dir: Path, reference: OnnxScorer, tmp_path: Path
) -> None:
    pytest.importorskip("tensorrt")
    from stream_app.scoring.tensorrt_backend import TensorRTScorer

    build_engines(model_dir, mode="seq", timing_cache=tmp_path / "timing.cache")
    assert (tmp_path / "timing.cache").stat().st_size > 0
    scorer = TensorRTScorer(model_dir)
    for rows, tokens in [(1, 16), (8, 32), (32, 64)]:
        batch = synthetic_batch(rows, tokens, len(reference.metadata.feature_names))
        diff = scorer.score_encoded([batch]) - reference.score_encoded([batch])
        assert float(np.max(np.abs(diff))) <= FP16_TOLERANCE
    scorer.close()
