"""ONNX export, bundle building and TensorRT planning (no GPU needed)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from model_export.bundle import build_model_dir, default_encoder_dir, source_hash
from model_export.export_onnx import (
    ExportValidationError,
    auc_drop,
    check_auc_drop,
    compare,
    item_samples,
    roc_auc,
    session_samples,
    torch_outputs,
    validate_items,
    validate_session,
)
from model_export.tensorrt_build import plan_profiles, profile_shapes, synthetic_batch
from stream_app.core.errors import ModelLoadError
from stream_app.scoring.model_dir import load_metadata
from stream_app.scoring.network import ItemEncoder, SessionModel
from stream_app.scoring.tensorrt_backend import EngineProfile, import_tensorrt, profile_for
from stream_app.scoring.torch_backend import load_checkpoint


@pytest.fixture(scope="module")
def modules(model_dir: Path) -> tuple[ItemEncoder, SessionModel]:
    return load_checkpoint(model_dir / "model.pt")


def test_item_encoder_onnx_matches_torch_on_real_text(
    model_dir: Path, modules: tuple[ItemEncoder, SessionModel]
) -> None:
    worst = validate_items(model_dir / "item_encoder.onnx", modules[0], model_dir, atol=1e-4)
    assert worst <= 1e-4
    batches = item_samples(model_dir)
    assert {b[0].shape for b in batches} == {(1, 8), (5, 13), (8, 16), (3, 32)}
    assert all(b[1].min() == 0 for b in batches[1:])  # padded rows are exercised


def test_session_model_onnx_matches_torch(
    model_dir: Path, modules: tuple[ItemEncoder, SessionModel]
) -> None:
    worst = validate_session(model_dir / "session_model.onnx", modules[1], 64, atol=1e-5)
    assert worst <= 1e-5
    batch = session_samples(64, len(load_metadata(model_dir).feature_names))[2]
    assert batch[3].sum(axis=1).min() == 1  # one-event windows are exercised


def test_validation_rejects_a_model_that_drifted(
    model_dir: Path, modules: tuple[ItemEncoder, SessionModel]
) -> None:
    model = modules[1]
    batches = session_samples(64, int(model.feature_mean.shape[0]))
    with torch.no_grad():
        model.platt_b.add_(0.05)  # the graph no longer matches torch
    try:
        reference = torch_outputs(model, batches)
    finally:
        with torch.no_grad():
            model.platt_b.sub_(0.05)
    from stream_app.scoring.onnx_backend import create_session, run_session_model

    session = create_session(model_dir / "session_model.onnx")
    got = [run_session_model(session, b) for b in batches]
    with pytest.raises(ExportValidationError, match="max"):
        compare(model_dir / "session_model.onnx", reference, got, atol=1e-4)


def test_exported_graphs_are_lean_with_dynamic_axes(model_dir: Path) -> None:
    import onnx

    def dims(graph: onnx.GraphProto) -> dict[str, list[object]]:
        return {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
                for i in graph.input}  # fmt: skip

    items = onnx.load(str(model_dir / "item_encoder.onnx")).graph
    ops = Counter(node.op_type for node in items.node)
    assert ops["IsNaN"] == 0  # eager attention: no SDPA NaN guards
    assert ops["Constant"] == 0  # folded into initializers
    assert ops["LayerNormalization"] == 13  # 6 layers x 2 + embeddings, as fused ops
    assert dims(items) == {"input_ids": ["rows", "tokens"], "attention_mask": ["rows", "tokens"]}
    assert [o.name for o in items.output] == ["item_embedding"]
    session = onnx.load(str(model_dir / "session_model.onnx")).graph
    n_features = len(load_metadata(model_dir).feature_names)
    assert dims(session) == {"items": ["batch", 16, 64], "event_types": ["batch", 16],
                             "numerics": ["batch", 16, 4], "mask": ["batch", 16],
                             "features": ["batch", n_features]}  # fmt: skip
    assert len(session.node) < 80  # the session model is small


def test_roc_auc_matches_definition() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.random(500) < 0.3
    scores = np.round(rng.random(500) + 0.3 * labels, 2)  # rounding creates ties
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    with pytest.raises(ExportValidationError, match="AUC drop"):
        check_auc_drop(scores, 1.0 - scores, labels)
    assert check_auc_drop(scores, scores, labels) == 0.0
    assert auc_drop(scores, scores, labels) == 0.0


def test_build_model_dir_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no trained weights"):
        build_model_dir(tmp_path / "weights", out_dir=tmp_path / "out")


def test_build_never_replaces_a_directory_that_is_not_a_model(tmp_path: Path) -> None:
    from model_export.bundle import _publish

    (tmp_path / "staging").mkdir()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ModelLoadError, match="refusing"):
        _publish(tmp_path / "staging", precious)
    assert (precious / "notes.txt").read_text() == "keep me"


def _committed_weights(model_dir: Path, modules: tuple[ItemEncoder, SessionModel],
                       tmp_path: Path) -> Path:  # fmt: skip
    """Weights as training commits them: item head + session model + rates + metadata."""
    from model_export.model import save_weights

    meta = json.loads((model_dir / "metadata.json").read_text())
    meta.update({"model_version": "test-v1", "threshold": 0.3,
                 "architecture": {"hidden": 64, "mlp_hidden": 128}})  # fmt: skip
    rates = (model_dir / "rates.json").read_text()
    save_weights(*modules, rates, tmp_path / "weights", meta)
    return tmp_path / "weights"


def test_build_model_dir_from_committed_weights_is_cached_and_served(
    model_dir: Path, modules: tuple[ItemEncoder, SessionModel], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from stream_app.scoring.locate import bundled_model_dir
    from stream_app.scoring.onnx_backend import OnnxScorer

    monkeypatch.setenv("INTENT_STREAM_CACHE", str(tmp_path / "cache"))
    weights = _committed_weights(model_dir, modules, tmp_path)
    total = sum(p.stat().st_size for p in weights.iterdir())
    assert total < 8_000_000  # 1 tuned fp32 layer (7 MB) + projection + session model + tables
    with pytest.raises(ModelLoadError, match="build-model"):
        bundled_model_dir(weights)
    built = build_model_dir(weights)
    digest = source_hash(weights, default_encoder_dir())
    assert (
        built == tmp_path / "cache" / "models" / f"test-v1-{digest}" == bundled_model_dir(weights)
    )
    meta = load_metadata(built)
    assert (meta.threshold, meta.source_hash, meta.tune_layers) == (0.3, digest, 1)
    stamp = (built / "item_encoder.onnx").stat().st_mtime_ns
    assert build_model_dir(weights) == built  # second call reuses the cache
    assert (built / "item_encoder.onnx").stat().st_mtime_ns == stamp
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]  # no staging left
    from tests.unit.test_scoring import _snapshots

    snapshots = _snapshots()
    np.testing.assert_allclose(OnnxScorer(built).score(snapshots),
                               OnnxScorer(model_dir).score(snapshots), atol=1e-5)  # fmt: skip
    raw = json.loads((weights / "metadata.json").read_text())
    (weights / "metadata.json").write_text(json.dumps({**raw, "threshold": 0.4}))
    assert source_hash(weights, default_encoder_dir()) != digest  # new weights, new directory


def test_tensorrt_profiles_follow_the_buckets() -> None:
    per_bucket = plan_profiles((8, 16, 32), (1, 2, 4, 8))
    assert len(per_bucket) == 12
    assert per_bucket[0] == EngineProfile(8, 1, 1, 1)
    per_seq = plan_profiles((8, 16, 32), (1, 2, 4, 8), mode="seq")
    assert per_seq == [EngineProfile(t, 1, 4, 8) for t in (8, 16, 32)]
    assert profile_for(per_bucket, 4, 16) == per_bucket.index(EngineProfile(16, 4, 4, 4))
    assert profile_for(per_seq, 3, 32) == 2
    with pytest.raises(ValueError, match="no TensorRT profile"):
        profile_for(per_seq, 16, 32)
    shapes = profile_shapes(per_seq[1])
    assert shapes["input_ids"] == ((1, 16), (4, 16), (8, 16))


def test_synthetic_batch_is_bucket_shaped_and_padded() -> None:
    batch = synthetic_batch(8, 32)
    assert batch.shape == (8, 32)
    assert batch.attention_mask[:4].all()
    assert not batch.attention_mask[4:, 16:].any()


def test_tensorrt_import_error_is_a_model_load_error() -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(ModelLoadError, match="tensorrt"):
            import_tensorrt()
    else:
        pytest.skip("tensorrt is installed here")
