"""ONNX export, INT8 quantisation, bundle building and TensorRT planning (no GPU needed)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from model_export.bundle import (
    build_model_dir,
    default_encoder_dir,
    source_hash,
    untrained_model,
)
from model_export.export_onnx import (
    ExportValidationError,
    auc_drop,
    check_auc_drop,
    roc_auc,
    sample_batches,
    torch_probabilities,
    validate_onnx,
)
from model_export.tensorrt_build import plan_profiles, profile_shapes, synthetic_batch
from stream_app.errors import ModelLoadError
from stream_app.features import FEATURE_NAMES
from stream_app.scoring.model_dir import load_metadata
from stream_app.scoring.onnx_backend import create_session, run_session
from stream_app.scoring.tensorrt_backend import EngineProfile, import_tensorrt, profile_for
from stream_app.scoring.torch_backend import load_checkpoint


@pytest.fixture(scope="module")
def torch_model(model_dir: Path) -> torch.nn.Module:
    return load_checkpoint(model_dir / "model.pt")


def test_onnx_matches_torch_on_real_text(model_dir: Path, torch_model: torch.nn.Module) -> None:
    batches = sample_batches(model_dir, len(FEATURE_NAMES), seed=7)
    reference = [torch_probabilities(torch_model, b) for b in batches]
    worst = validate_onnx(model_dir / "model.onnx", reference, batches, atol=1e-4)
    assert worst <= 1e-4
    assert {b[0].shape for b in batches} == {(1, 16), (5, 37), (8, 64), (3, 128)}
    assert all(b[1].min() == 0 for b in batches[1:])  # padded rows are exercised


def test_validation_rejects_a_model_that_drifted(
    model_dir: Path, torch_model: torch.nn.Module
) -> None:
    batches = sample_batches(model_dir, len(FEATURE_NAMES), shapes=((4, 32),))
    with torch.no_grad():
        torch_model.get_buffer("platt_b").add_(0.05)  # the graph no longer matches torch
    try:
        reference = [torch_probabilities(torch_model, b) for b in batches]
    finally:
        with torch.no_grad():
            torch_model.get_buffer("platt_b").sub_(0.05)
    with pytest.raises(ExportValidationError, match="max"):
        validate_onnx(model_dir / "model.onnx", reference, batches, atol=1e-4)


def test_exported_graph_is_lean_with_dynamic_axes(model_dir: Path) -> None:
    import onnx

    graph = onnx.load(str(model_dir / "model.onnx")).graph
    ops = Counter(node.op_type for node in graph.node)
    assert ops["IsNaN"] == 0  # eager attention: no SDPA NaN guards
    assert ops["Constant"] == 0  # folded into initializers
    assert ops["LayerNormalization"] == 13  # 6 layers x 2 + embeddings, as fused ops
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in graph.input
    }
    assert dims == {
        "input_ids": ["batch", "tokens"],
        "attention_mask": ["batch", "tokens"],
        "features": ["batch", len(FEATURE_NAMES)],
    }
    assert [o.name for o in graph.output] == ["probability"]


def test_int8_is_smaller_and_close(model_dir: Path) -> None:
    fp32, int8 = (
        create_session(model_dir / "model.onnx"),
        create_session(model_dir / "model.int8.onnx"),
    )
    batches = sample_batches(model_dir, len(FEATURE_NAMES), shapes=((16, 64), (16, 32)), seed=3)
    p32 = np.concatenate([run_session(fp32, *b) for b in batches])
    p8 = np.concatenate([run_session(int8, *b) for b in batches])
    assert float(np.max(np.abs(p32 - p8))) < 0.01
    labels = p32 > np.median(p32)  # a labelling the fp32 model ranks perfectly
    assert roc_auc(p32, labels) == 1.0
    assert auc_drop(p32, p8, labels) <= 0.1  # sanity: int8 still ranks (random head: tiny spread)
    size_ratio = (model_dir / "model.int8.onnx").stat().st_size / (
        model_dir / "model.onnx"
    ).stat().st_size
    assert size_ratio < 0.35


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


def _committed_weights(tmp_path: Path) -> Path:
    """Weights as training commits them: LoRA adapter + head + metadata."""
    from peft import LoraConfig, get_peft_model

    from model_export.model import save_weights

    model = untrained_model(default_encoder_dir(), len(FEATURE_NAMES), seed=5)
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "value"]}
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"])
    model.encoder = get_peft_model(model.encoder, config)  # type: ignore[assignment]
    meta = {"model_version": "test-v1", "max_tokens": 32, "text_events": 6, "lora": lora,
            "feature_names": list(FEATURE_NAMES), "threshold": 0.3, "head_hidden": 128}  # fmt: skip
    save_weights(model, tmp_path / "weights", meta, lora=True)
    return tmp_path / "weights"


def test_build_model_dir_from_committed_weights_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INTENT_STREAM_CACHE", str(tmp_path / "cache"))
    weights = _committed_weights(tmp_path)
    built = build_model_dir(weights)
    digest = source_hash(weights, default_encoder_dir())
    assert built == tmp_path / "cache" / "models" / f"test-v1-{digest}"
    meta = load_metadata(built)
    assert (meta.max_tokens, meta.seq_buckets, meta.text_events) == (32, (16, 32), 6)
    assert meta.threshold == 0.3
    assert meta.source_hash == digest
    stamp = (built / "model.onnx").stat().st_mtime_ns
    assert build_model_dir(weights) == built  # second call reuses the cache
    assert (built / "model.onnx").stat().st_mtime_ns == stamp
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]  # no staging left
    raw = json.loads((weights / "metadata.json").read_text())
    (weights / "metadata.json").write_text(json.dumps({**raw, "threshold": 0.4}))
    assert source_hash(weights, default_encoder_dir()) != digest  # new weights, new directory


def test_tensorrt_profiles_follow_the_buckets() -> None:
    per_bucket = plan_profiles((16, 32, 64), (1, 2, 4, 8))
    assert len(per_bucket) == 12
    assert per_bucket[0] == EngineProfile(16, 1, 1, 1)
    per_seq = plan_profiles((16, 32, 64), (1, 2, 4, 8), mode="seq")
    assert per_seq == [EngineProfile(t, 1, 4, 8) for t in (16, 32, 64)]
    assert profile_for(per_bucket, 4, 32) == per_bucket.index(EngineProfile(32, 4, 4, 4))
    assert profile_for(per_bucket + per_seq, 4, 32) == per_bucket.index(EngineProfile(32, 4, 4, 4))
    assert profile_for(per_seq, 3, 64) == 2
    with pytest.raises(ValueError, match="no TensorRT profile"):
        profile_for(per_seq, 16, 64)
    shapes = profile_shapes(per_seq[1], n_features=19)
    assert shapes["input_ids"] == ((1, 32), (4, 32), (8, 32))
    assert shapes["features"] == ((1, 19), (4, 19), (8, 19))


def test_synthetic_batch_is_bucket_shaped_and_padded() -> None:
    batch = synthetic_batch(8, 32, 19)
    assert batch.shape == (8, 32)
    assert batch.features.shape == (8, 19)
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


@pytest.mark.slow
def test_dynamo_exporter_also_validates(tmp_path: Path) -> None:
    from model_export.bundle import copy_tokenizer
    from model_export.export_onnx import export_onnx

    copy_tokenizer(default_encoder_dir(), tmp_path)
    model = untrained_model(default_encoder_dir(), len(FEATURE_NAMES), seed=2)
    report = export_onnx(model, tmp_path, tmp_path / "m.onnx", exporter="dynamo")
    assert report.max_abs_diff <= 1e-4
    assert report.n_nodes < 400
