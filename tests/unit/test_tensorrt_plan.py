"""The TensorRT backend's and builder's pure logic, without a GPU: which shapes get a profile,
a context binding and a CUDA graph at start-up, the buffers they share, the warm-up inputs, the
FP32 pinning rule, and that the GPU modules import each other in one direction only.

The shapes are checked against what the real ``Preprocessor`` emits over a real model
directory, and the warm-up inputs are run through the real ONNX graphs, so a drift between
the preprocessor, the builder's profiles and the backend's buffers fails here, not on a GPU.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import numpy as np
import pytest

from model_export.tensorrt_build import (
    engine_plans,
    fp32_layer,
    plan_profiles,
    profile_shapes,
    session_profile_shapes,
)
from stream_app.core.errors import ModelLoadError
from stream_app.scoring.model_dir import load_metadata
from stream_app.scoring.onnx_backend import OnnxScorer
from stream_app.scoring.preprocess import EncodedBatch, SessionBatch
from stream_app.scoring.tensorrt_backend import (
    ENGINES,
    EngineProfile,
    GraphKey,
    bucket_shapes,
    buffer_elements,
    capture_plan,
    io_shapes,
    replay_order,
    torch_dtype_name,
    warm_inputs,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def onnx_scorer(model_dir: Path) -> OnnxScorer:
    return OnnxScorer(model_dir)


def test_bucket_profiles_give_one_key_per_shape_and_one_profile_each(model_dir: Path) -> None:
    meta = load_metadata(model_dir)
    plans = engine_plans(meta, "bucket")
    items = capture_plan(plans["items"], bucket_shapes("items", meta))
    assert len(items) == len(meta.seq_buckets) * len(meta.batch_buckets)
    assert len({k.profile for k in items}) == len(items), "an exact profile per shape"
    assert {(k.rows, k.tokens) for k in items} == set(bucket_shapes("items", meta))
    for key in items:
        profile = plans["items"][key.profile]
        assert (profile.min_batch, profile.max_batch, profile.tokens) == (key.rows, key.rows,
                                                                          key.tokens)  # fmt: skip
    session = capture_plan(plans["session"], bucket_shapes("session", meta))
    assert [(k.rows, k.tokens) for k in session] == [(b, meta.max_events)
                                                     for b in meta.batch_buckets]  # fmt: skip


def test_seq_profiles_share_a_profile_per_token_bucket_and_plan_is_grouped() -> None:
    profiles = plan_profiles((8, 16, 32), (1, 2, 4, 8), mode="seq")
    shapes = [(b, t) for t in (32, 8, 16) for b in (8, 1, 4, 2)]
    plan = capture_plan(profiles, shapes)
    assert plan == sorted(plan), "grouped by profile: fewest switches while capturing"
    assert [k.profile for k in plan] == [0] * 4 + [1] * 4 + [2] * 4
    assert [k.rows for k in plan[:4]] == [1, 2, 4, 8]
    order = replay_order(plan)
    assert sorted(order) == plan
    assert order[0] != plan[-1], "the first replay follows a bind to another key"
    assert all(a.profile != b.profile for a, b in itertools.pairwise(order))
    single = capture_plan([EngineProfile(16, 1, 4, 8)], [(1, 16), (8, 16)])
    assert replay_order(single)[0] != single[-1]


def test_a_shape_without_a_profile_fails_at_start_up() -> None:
    profiles = [EngineProfile(8, 1, 4, 8), EngineProfile(16, 1, 4, 8)]
    with pytest.raises(ModelLoadError, match=r"do not cover.*\(16, 8\).*build-engines"):
        capture_plan(profiles, [(1, 8), (16, 8)])


def test_narrowest_profile_serves_an_overlapping_shape() -> None:
    profiles = [EngineProfile(8, 1, 64, 128), EngineProfile(8, 4, 4, 4)]
    assert capture_plan(profiles, [(4, 8), (2, 8)]) == [GraphKey(0, 2, 8), GraphKey(1, 4, 8)]


def test_io_shapes_are_what_the_preprocessor_emits(onnx_scorer: OnnxScorer) -> None:
    from tests.unit.test_scoring import _snapshots

    meta = onnx_scorer.metadata
    dims = (meta.item_dim, len(meta.feature_names))
    pre = onnx_scorer.preprocessor
    arrays = pre.encode(_snapshots())
    for _, batch in pre.item_batches(list(arrays.texts)):
        shapes = io_shapes("items", *batch.shape, *dims)
        assert shapes["input_ids"] == batch.input_ids.shape == batch.attention_mask.shape
        assert onnx_scorer.run_items(batch).shape == shapes["item_embedding"]
    items = onnx_scorer.embed(arrays.texts)[arrays.text_index]
    (session,) = pre.session_batches(arrays, items)
    shapes = io_shapes("session", session.rows, meta.max_events, *dims)
    inputs, output = ENGINES["session"]
    assert [shapes[n] for n in inputs] == [a.shape for a in session.arrays()]
    assert onnx_scorer.run_session(session).shape == shapes[output]


def test_builder_profiles_use_the_same_shapes(model_dir: Path) -> None:
    meta = load_metadata(model_dir)
    dims = (meta.item_dim, len(meta.feature_names))
    profile = EngineProfile(16, 1, 8, 128)
    low, opt, high = profile_shapes(profile, meta.item_dim)["input_ids"]
    assert (low, opt, high) == ((1, 16), (8, 16), (128, 16))
    k = meta.max_events
    shapes = session_profile_shapes(EngineProfile(k, 2, 2, 2), meta)
    assert set(shapes) == set(ENGINES["session"][0]), "inputs only, every one"
    assert shapes["items"][2] == io_shapes("session", 2, k, *dims)["items"]


def test_buffers_hold_the_largest_shape_of_the_plan() -> None:
    plan = [GraphKey(0, 1, 8), GraphKey(1, 128, 8), GraphKey(2, 4, 32)]
    sizes = buffer_elements("items", plan, 64, 0)
    assert sizes == {"input_ids": 128 * 8, "attention_mask": 128 * 8, "item_embedding": 128 * 64}
    session = buffer_elements("session", [GraphKey(0, 8, 16)], 64, 40)
    assert session["items"] == 8 * 16 * 64
    assert session["probability"] == 8


def test_warm_inputs_are_valid_model_inputs(onnx_scorer: OnnxScorer) -> None:
    """Captured with these: they must run through the real graphs and give finite outputs."""
    meta = onnx_scorer.metadata
    dims = (meta.item_dim, len(meta.feature_names))
    ids, mask = warm_inputs("items", 8, 16, *dims, seed=3)
    assert ids.dtype == mask.dtype == np.int64
    assert not mask[4:, 8:].any()
    assert mask[:4].all()
    embedding = onnx_scorer.run_items(EncodedBatch(ids, mask, 8))
    assert embedding.shape == (8, meta.item_dim)
    assert np.all(np.isfinite(embedding))
    arrays = warm_inputs("session", 4, meta.max_events, *dims, seed=3)
    expected = io_shapes("session", 4, meta.max_events, *dims)
    assert [a.shape for a in arrays] == [expected[n] for n in ENGINES["session"][0]]
    probability = onnx_scorer.run_session(SessionBatch(*arrays, n=4))
    assert probability.shape == (4,)
    assert np.all((probability > 0) & (probability < 1))
    again = warm_inputs("items", 8, 16, *dims, seed=3)
    assert np.array_equal(again[0], ids), "seeded: the self-check replays the same inputs"


def test_engine_dtypes_map_to_torch_or_fail_clearly() -> None:
    assert torch_dtype_name(np.float32) == "float32"
    assert torch_dtype_name(np.dtype("int64")) == "int64"
    assert torch_dtype_name(np.int32) == "int32"
    with pytest.raises(ModelLoadError, match="complex64"):
        torch_dtype_name(np.complex64)


def test_fp32_pinning_rule() -> None:
    wide = {"attention_mask_constant"}
    assert fp32_layer("NORMALIZATION", [], wide)
    assert fp32_layer("SOFTMAX", ["x"], wide)
    assert fp32_layer("REDUCE", ["x"], wide)
    assert fp32_layer("ELEMENTWISE", ["x", "attention_mask_constant"], wide)
    assert not fp32_layer("ELEMENTWISE", ["x", "y"], wide)
    assert not fp32_layer("MATRIX_MULTIPLY", ["x"], wide)


def _imports(module: str) -> set[str]:
    """Every module ``module`` imports, at top level or inside functions."""
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_gpu_modules_import_in_one_direction_only() -> None:
    """gpu_check -> engine_cache -> tensorrt_build -> stream_app: no loop back."""
    modules = ("model_export.gpu_check", "model_export.engine_cache", "model_export.tensorrt_build")
    graph = {m: _imports(m) & set(modules) for m in modules}
    assert "model_export.gpu_check" not in graph["model_export.tensorrt_build"]
    assert "model_export.gpu_check" not in graph["model_export.engine_cache"]
    assert "model_export.engine_cache" not in graph["model_export.tensorrt_build"]
    serving = _imports("stream_app.scoring.tensorrt_backend") | _imports(
        "stream_app.scoring.torch_backend"
    )
    assert not [m for m in serving if m.startswith("model_export")], "serving never imports it"
