"""GPU backends: torch CUDA fp16 with CUDA graphs, TensorRT (one engine per graph, one
execution context per engine, CUDA graphs per bucket). Skipped cleanly without CUDA (and the
TensorRT tests without ``tensorrt``); the pure planning logic is tested without a GPU in
``test_tensorrt_plan.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_export.tensorrt_build import FP16_TOLERANCE, build_engines, sample_windows
from stream_app.scoring import Scorer
from stream_app.scoring.onnx_backend import OnnxScorer
from stream_app.scoring.tensorrt_backend import bucket_shapes
from stream_app.scoring.torch_backend import TorchScorer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> OnnxScorer:
    return OnnxScorer(model_dir)


@pytest.fixture(scope="module")
def engines(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tensorrt")
    out = tmp_path_factory.mktemp("engines")
    return build_engines(model_dir, out / "model", timing_cache=out / "timing.cache")


def _max_diff(scorer: Scorer, reference: OnnxScorer, sizes: tuple[int, ...]) -> float:
    windows = sample_windows(max(sizes))
    return max(
        float(np.max(np.abs(scorer.score(windows[:n]) - reference.score(windows[:n]))))
        for n in sizes
    )


def test_torch_cuda_graphs_are_captured_at_start_and_match_onnx(
    model_dir: Path, reference: OnnxScorer
) -> None:
    scorer = TorchScorer(model_dir, device="cuda")
    meta = scorer.metadata
    assert scorer.graphs_enabled
    assert len(scorer.graphs["items"].graphs) == len(bucket_shapes("items", meta))
    assert len(scorer.graphs["session"].graphs) == len(bucket_shapes("session", meta))
    captured = {k: set(g.graphs) for k, g in scorer.graphs.items()}
    assert _max_diff(scorer, reference, (1, 8, 64, 200)) <= FP16_TOLERANCE
    assert {k: set(g.graphs) for k, g in scorer.graphs.items()} == captured, "none captured live"
    scorer.close()


def test_torch_cuda_without_graphs_scores_the_same(model_dir: Path, reference: OnnxScorer) -> None:
    scorer = TorchScorer(model_dir, device="cuda", cuda_graphs=False)
    assert not scorer.graphs_enabled
    assert _max_diff(scorer, reference, (1, 33)) <= FP16_TOLERANCE
    scorer.close()


def test_tensorrt_one_context_per_engine_graphs_at_start_and_parity(
    engines: Path, reference: OnnxScorer
) -> None:
    from stream_app.scoring.tensorrt_backend import TensorRTScorer

    assert (engines.parent / "timing.cache").stat().st_size > 0
    scorer = TensorRTScorer(engines)
    meta = scorer.metadata
    assert len(meta.tensorrt["profiles"]["items"]) == len(bucket_shapes("items", meta))
    before = scorer.describe()
    for kind, info in before.items():
        assert info["contexts"] == 1, "one execution context per engine, profiles switched"
        assert info["graphs_enabled"], f"{kind}: graphs captured and self-checked at start-up"
        assert info["cuda_graphs"] == info["shapes"] == len(bucket_shapes(kind, meta))
    assert _max_diff(scorer, reference, (1, 8, 64, 200)) <= FP16_TOLERANCE
    assert scorer.describe() == before, "no context, capture or profile built in live batches"
    scorer.close()


def test_tensorrt_eager_path_matches_the_graphs(engines: Path) -> None:
    from stream_app.scoring.tensorrt_backend import TensorRTScorer

    windows = sample_windows(100)
    graphs, eager = TensorRTScorer(engines), TensorRTScorer(engines, cuda_graphs=False)
    assert not any(info["graphs_enabled"] for info in eager.describe().values())
    np.testing.assert_allclose(graphs.score(windows), eager.score(windows), atol=1e-5)
    graphs.close()
    eager.close()
