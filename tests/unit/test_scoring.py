"""Scoring backends over a real model directory (real MiniLM, seeded random head)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from stream_app.config import ModelSettings
from stream_app.errors import ModelLoadError
from stream_app.events import Event
from stream_app.features import FEATURE_NAMES
from stream_app.scoring import Scorer, load_scorer
from stream_app.scoring.model_dir import load_metadata, metadata_from_dict, seq_buckets_for
from stream_app.scoring.onnx_backend import OnnxScorer, run_session
from stream_app.scoring.preprocess import bucket_for, pad_rows, pad_tokens
from stream_app.scoring.torch_backend import TorchScorer
from stream_app.windows import WindowRules, WindowSnapshot, expected_window

T0 = 1_700_000_000_000  # fixed UTC epoch ms


@pytest.fixture(scope="module")
def onnx_scorer(model_dir: Path) -> OnnxScorer:
    return OnnxScorer(model_dir)


def _snapshot(session: str, n_events: int, cart_every: int = 0) -> WindowSnapshot:
    events = [
        Event(
            event_id=f"{session}-{i}",
            event_time_ms=T0 + 7_000 * i,
            event_type="cart" if cart_every and i % cart_every == 0 else "view",
            user_session=session,
            user_id="u1",
            product_id=str(100 + i % 4),
            category_code="electronics.smartphone" if i % 2 else "appliances.kitchen.kettle",
            brand="samsung" if i % 3 else "bosch",
            price=19.99 * (1 + i),
        )
        for i in range(n_events)
    ]
    return expected_window(session, events, WindowRules())


def _snapshots() -> list[WindowSnapshot]:
    return [_snapshot(f"s{i}", 1 + 3 * i, cart_every=i % 3) for i in range(6)]


def test_bucket_for_picks_smallest_holding_bucket() -> None:
    assert [bucket_for(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    with pytest.raises(ValueError, match="exceeds"):
        bucket_for(9, (1, 2, 4, 8))


def test_seq_buckets_end_at_max_tokens() -> None:
    assert seq_buckets_for(64) == (16, 32, 64)
    assert seq_buckets_for(100) == (16, 32, 64, 100)
    assert seq_buckets_for(8) == (8,)


def test_metadata_rejects_buckets_past_max_tokens() -> None:
    raw = {"model_version": "v", "max_tokens": 64, "feature_names": ["a"]}
    with pytest.raises(ModelLoadError, match="max_tokens"):
        metadata_from_dict({**raw, "seq_buckets": [16, 128]})
    with pytest.raises(ModelLoadError, match="ascending"):
        metadata_from_dict({**raw, "batch_buckets": [4, 2]})


def test_pad_tokens_and_rows() -> None:
    ids, mask = pad_tokens([[101, 7, 102], [101, 102]], 4, pad_id=0)
    assert ids.tolist() == [[101, 7, 102, 0], [101, 102, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    padded = pad_rows(ids, 4)
    assert padded.shape == (4, 4)
    assert (padded[2:] == ids[0]).all()  # filler repeats row 0, never an all-masked row


def test_bucketed_batch_scores_like_unpadded(onnx_scorer: OnnxScorer) -> None:
    texts = ["view electronics smartphone samsung $200-500 " * 6] * 5
    tokens = onnx_scorer.preprocessor.tokenize(texts)
    assert {len(t) for t in tokens} == {len(tokens[0])}
    assert 33 <= len(tokens[0]) <= 64
    feats = np.random.default_rng(3).normal(size=(5, len(FEATURE_NAMES))).astype(np.float32)
    (batch,) = onnx_scorer.preprocessor.encode_texts(texts, feats)
    assert batch.shape == (8, 64)
    assert batch.n == 5
    padded = onnx_scorer.score_encoded([batch])
    ids = np.asarray(tokens, dtype=np.int64)
    unpadded = run_session(onnx_scorer.session, ids, np.ones_like(ids), feats)
    np.testing.assert_allclose(padded, unpadded, atol=1e-5, rtol=0)


def test_scorer_returns_one_probability_per_snapshot_in_order(onnx_scorer: OnnxScorer) -> None:
    snapshots = _snapshots()
    scores = onnx_scorer.score(snapshots)
    assert scores.dtype == np.float32
    assert scores.shape == (len(snapshots),)
    assert np.all((scores >= 0) & (scores <= 1))
    assert len(set(scores.tolist())) > 1  # different sessions, different scores
    reversed_scores = onnx_scorer.score(snapshots[::-1])
    np.testing.assert_allclose(reversed_scores[::-1], scores, atol=1e-6)
    singles = np.concatenate([onnx_scorer.score([s]) for s in snapshots])
    np.testing.assert_allclose(singles, scores, atol=1e-5)
    assert onnx_scorer.score([]).shape == (0,)


def test_torch_cpu_backend_matches_onnx(model_dir: Path, onnx_scorer: OnnxScorer) -> None:
    torch_scorer = TorchScorer(model_dir, device="cpu")
    snapshots = _snapshots()
    np.testing.assert_allclose(
        torch_scorer.score(snapshots), onnx_scorer.score(snapshots), atol=1e-4, rtol=0
    )
    assert isinstance(torch_scorer, Scorer)
    torch_scorer.close()


def test_load_scorer_int8_variant_close_to_fp32(model_dir: Path, onnx_scorer: OnnxScorer) -> None:
    scorer = load_scorer(ModelSettings(dir=model_dir, backend="onnx", variant="int8", threads=1))
    assert isinstance(scorer, Scorer)
    assert scorer.model_version.endswith("onnx-int8")
    assert scorer.max_tokens == 64
    snapshots = _snapshots()
    assert np.max(np.abs(scorer.score(snapshots) - onnx_scorer.score(snapshots))) < 0.02
    scorer.close()


def _copy_model_dir(model_dir: Path, dest: Path) -> Path:
    shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns("model.pt", "model.int8.onnx"))
    return dest


def test_corrupt_onnx_fails_at_load(model_dir: Path, tmp_path: Path) -> None:
    broken = _copy_model_dir(model_dir, tmp_path / "broken")
    data = (broken / "model.onnx").read_bytes()
    (broken / "model.onnx").write_bytes(data[: len(data) // 3])  # truncated download
    with pytest.raises(ModelLoadError, match="cannot load ONNX model"):
        load_scorer(ModelSettings(dir=broken, backend="onnx"))


def test_missing_or_mismatched_model_dir_fails_at_load(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a directory"):
        load_scorer(ModelSettings(dir=tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match=r"no metadata\.json"):
        load_scorer(ModelSettings(dir=tmp_path))
    other = _copy_model_dir(model_dir, tmp_path / "other")
    meta = load_metadata(other)
    renamed = meta.to_json().replace(f'"{FEATURE_NAMES[0]}"', '"some_other_feature"')
    (other / "metadata.json").write_text(renamed, encoding="utf-8")
    with pytest.raises(ModelLoadError, match="expects features"):
        OnnxScorer(other)
    with pytest.raises(ModelLoadError, match=r"lacks model\.pt"):
        TorchScorer(other)


def test_tensorrt_backend_without_gpu_is_a_load_error(model_dir: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; covered by tests/unit/test_gpu.py")
    with pytest.raises(ModelLoadError, match=r"(?i)tensorrt|cuda"):
        load_scorer(ModelSettings(dir=model_dir, backend="tensorrt", device="cuda"))


def test_large_batches_are_split_at_the_largest_bucket(onnx_scorer: OnnxScorer) -> None:
    texts = [f"view item {i}" for i in range(130)]
    feats = np.zeros((130, len(FEATURE_NAMES)), dtype=np.float32)
    batches = onnx_scorer.preprocessor.encode_texts(texts, feats)
    assert [(b.shape, b.n) for b in batches] == [((128, 16), 128), ((2, 16), 2)]


def test_serving_tokenizer_matches_the_training_call(
    onnx_scorer: OnnxScorer, model_dir: Path
) -> None:
    from stream_app.scoring.preprocess import load_tokenizer

    texts = [
        "Cart Electronics Smartphone SAMSUNG $200-500 | view apparel shoes",
        "",
        "search " + "wireless noise cancelling headphones " * 20,  # truncated at 64
    ]
    training = load_tokenizer(model_dir)(texts, truncation=True, max_length=64)["input_ids"]
    assert onnx_scorer.preprocessor.tokenize(texts) == [list(ids) for ids in training]
    assert len(training[2]) == 64


def test_concurrent_scoring_from_threads_is_safe(onnx_scorer: OnnxScorer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    snapshots = _snapshots()
    expected = onnx_scorer.score(snapshots)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(onnx_scorer.score, [snapshots] * 8))
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-6)
