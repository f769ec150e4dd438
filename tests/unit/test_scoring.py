"""Scoring backends over a real model directory (real MiniLM, seeded random trained parts)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from stream_app.core.config import ModelSettings
from stream_app.core.errors import ModelLoadError
from stream_app.ingest.events import Event
from stream_app.scoring import Scorer, load_scorer
from stream_app.scoring.item_cache import ItemEmbeddingCache
from stream_app.scoring.model_dir import load_metadata, metadata_from_dict, seq_buckets_for
from stream_app.scoring.onnx_backend import OnnxScorer, run_session_model
from stream_app.scoring.preprocess import bucket_for, pad_rows, pad_tokens
from stream_app.scoring.torch_backend import TorchScorer
from stream_app.sessions.windows import WindowRules, WindowSnapshot, expected_window

T0 = 1_700_000_000_000  # fixed UTC epoch ms


@pytest.fixture(scope="module")
def onnx_scorer(model_dir: Path) -> OnnxScorer:
    return OnnxScorer(model_dir)


def _snapshot(session: str, n_events: int, cart_every: int = 0, named: bool = True
              ) -> WindowSnapshot:  # fmt: skip
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
            product_name=f"google tee {i % 5}" if named else "",
            device="mobile" if i % 2 else "",
        )
        for i in range(n_events)
    ]
    return expected_window(session, events, WindowRules())


def _snapshots() -> list[WindowSnapshot]:
    return [_snapshot(f"s{i}", 1 + 5 * i, cart_every=i % 3, named=i % 2 == 0) for i in range(6)]


def test_bucket_for_picks_smallest_holding_bucket() -> None:
    assert [bucket_for(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    with pytest.raises(ValueError, match="exceeds"):
        bucket_for(9, (1, 2, 4, 8))


def test_seq_buckets_end_at_max_tokens() -> None:
    assert seq_buckets_for(32) == (8, 16, 32)
    assert seq_buckets_for(20) == (8, 16, 20)
    assert seq_buckets_for(8) == (8,)


def test_metadata_rejects_bad_buckets_and_foreign_features(model_dir: Path) -> None:
    meta = load_metadata(model_dir)
    raw = {"model_version": "v", "max_tokens": 32, "feature_names": list(meta.feature_names),
           "context_vocab": [list(v) for v in meta.context_vocab]}  # fmt: skip
    assert metadata_from_dict(raw).feature_names == meta.feature_names
    with pytest.raises(ModelLoadError, match="max_tokens"):
        metadata_from_dict({**raw, "seq_buckets": [16, 64]})
    with pytest.raises(ModelLoadError, match="ascending"):
        metadata_from_dict({**raw, "batch_buckets": [4, 2]})
    with pytest.raises(ModelLoadError, match="expects features"):
        metadata_from_dict({**raw, "feature_names": ["a"]})


def test_pad_tokens_and_rows() -> None:
    ids, mask = pad_tokens([[101, 7, 102], [101, 102]], 4, pad_id=0)
    assert ids.tolist() == [[101, 7, 102, 0], [101, 102, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    padded = pad_rows(ids, 4)
    assert padded.shape == (4, 4)
    assert (padded[2:] == ids[0]).all()  # filler repeats row 0, never an all-masked row


def test_bucketed_item_batches_embed_like_unpadded(onnx_scorer: OnnxScorer) -> None:
    texts = ["google men's tee " * 2, "lego", "", "youtube twill cap black"]
    batches = onnx_scorer.preprocessor.item_batches(texts)
    assert [(b.shape, b.n) for _, b in batches] == [((4, 16), 4)]
    bucketed = onnx_scorer.encode_items(texts)
    for i, text in enumerate(texts):
        (tokens,) = onnx_scorer.preprocessor.tokenize([text])
        ids = np.asarray([tokens], dtype=np.int64)
        alone = onnx_scorer.run_items(type(batches[0][1])(ids, np.ones_like(ids), 1))
        np.testing.assert_allclose(bucketed[i], alone[0], atol=1e-5, rtol=0)


def test_padded_session_rows_score_like_unpadded(onnx_scorer: OnnxScorer) -> None:
    arrays = onnx_scorer.preprocessor.encode(_snapshots()[:3])
    items = onnx_scorer.embed(arrays.texts)[arrays.text_index]
    (batch,) = onnx_scorer.preprocessor.session_batches(arrays, items)
    assert (batch.rows, batch.n) == (4, 3)
    unpadded = run_session_model(onnx_scorer.session, (items, arrays.event_types,
                                 arrays.numerics, arrays.mask, arrays.features))  # fmt: skip
    np.testing.assert_allclose(onnx_scorer.run_session(batch)[:3], unpadded, atol=1e-6)


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


def test_item_cache_encodes_only_new_texts(model_dir: Path) -> None:
    scorer = OnnxScorer(model_dir)
    calls: list[int] = []
    run = scorer.run_items
    scorer.run_items = lambda b: (calls.append(b.n), run(b))[1]  # type: ignore[method-assign]
    cold = scorer.score(_snapshots())
    first = sum(calls)
    assert first == len(scorer.item_cache) > 0  # each distinct text encoded exactly once
    warm = scorer.score(_snapshots())
    assert sum(calls) == first  # nothing new: no encoder call at all
    np.testing.assert_allclose(warm, cold, atol=1e-6)
    new = Event("n1", T0, "view", "new", product_id="9", product_name="a never seen item")
    scorer.score([expected_window("new", [new], WindowRules())])
    assert sum(calls) == first + 1


def test_item_cache_is_bounded_lru() -> None:
    cache = ItemEmbeddingCache(dim=2, capacity=2)
    cache.store(["a", "b"], np.ones((2, 2)))
    cache.lookup(["a"])  # "a" is now the most recent
    cache.store(["c"], np.zeros((1, 2)))
    _, missing = cache.lookup(["a", "b", "c"])
    assert missing == [1]
    assert len(cache) == 2


def test_torch_cpu_backend_matches_onnx(model_dir: Path, onnx_scorer: OnnxScorer) -> None:
    torch_scorer = TorchScorer(model_dir, device="cpu")
    snapshots = _snapshots()
    np.testing.assert_allclose(
        torch_scorer.score(snapshots), onnx_scorer.score(snapshots), atol=1e-5, rtol=0
    )
    assert isinstance(torch_scorer, Scorer)
    torch_scorer.close()


def test_load_scorer_picks_the_backend(model_dir: Path) -> None:
    scorer = load_scorer(ModelSettings(dir=model_dir, backend="onnx", threads=1))
    assert isinstance(scorer, Scorer)
    assert scorer.model_version.endswith("onnx-fp32")
    assert scorer.max_tokens == 32
    with pytest.raises(ModelLoadError, match="int8"):
        load_scorer(ModelSettings(dir=model_dir, backend="onnx", variant="int8"))


def _copy_model_dir(model_dir: Path, dest: Path) -> Path:
    shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns("model.pt", "*.int8.onnx"))
    return dest


def test_corrupt_onnx_fails_at_load(model_dir: Path, tmp_path: Path) -> None:
    broken = _copy_model_dir(model_dir, tmp_path / "broken")
    data = (broken / "session_model.onnx").read_bytes()
    (broken / "session_model.onnx").write_bytes(data[: len(data) // 3])  # truncated download
    with pytest.raises(ModelLoadError, match="cannot load ONNX model"):
        load_scorer(ModelSettings(dir=broken, backend="onnx"))


def test_missing_or_mismatched_model_dir_fails_at_load(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a directory"):
        load_scorer(ModelSettings(dir=tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match=r"no metadata\.json"):
        load_scorer(ModelSettings(dir=tmp_path))
    other = _copy_model_dir(model_dir, tmp_path / "other")
    meta = load_metadata(other)
    renamed = meta.to_json().replace('"log_n_events"', '"some_other_feature"')
    (other / "metadata.json").write_text(renamed, encoding="utf-8")
    with pytest.raises(ModelLoadError, match="expects features"):
        OnnxScorer(other)
    (other / "metadata.json").write_text(meta.to_json(), encoding="utf-8")
    with pytest.raises(ModelLoadError, match=r"lacks model\.pt"):
        TorchScorer(other)
    (other / "rates.json").write_text("{", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="rates"):
        OnnxScorer(other)


def test_missing_bundled_build_names_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INTENT_STREAM_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelLoadError, match="intent-stream build-model"):
        load_scorer(ModelSettings(dir=None))


def test_tensorrt_backend_without_gpu_is_a_load_error(model_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; covered by tests/unit/test_gpu.py")
    with pytest.raises(ModelLoadError, match=r"(?i)tensorrt|cuda"):
        load_scorer(ModelSettings(dir=model_dir, backend="tensorrt", device="cuda"))


def test_large_batches_are_split_at_the_largest_bucket(onnx_scorer: OnnxScorer) -> None:
    texts = [f"item {i}" for i in range(130)]
    batches = onnx_scorer.preprocessor.item_batches(texts)
    assert [(b.shape, b.n) for _, b in batches] == [((128, 8), 128), ((2, 8), 2)]
    snapshots = [_snapshot(f"x{i}", 2) for i in range(130)]
    arrays = onnx_scorer.preprocessor.encode(snapshots)
    items = onnx_scorer.embed(arrays.texts)[arrays.text_index]
    sessions = onnx_scorer.preprocessor.session_batches(arrays, items)
    assert [(b.rows, b.n) for b in sessions] == [(128, 128), (2, 2)]


def test_serving_tokenizer_matches_the_training_call(
    onnx_scorer: OnnxScorer, model_dir: Path
) -> None:
    from stream_app.scoring.preprocess import load_tokenizer

    texts = ["Google Men's 100% Cotton Tee", "", "wireless noise cancelling headphones " * 9]
    training = load_tokenizer(model_dir)(texts, truncation=True, max_length=32)["input_ids"]
    assert onnx_scorer.preprocessor.tokenize(texts) == [list(ids) for ids in training]
    assert len(training[2]) == 32


def test_concurrent_scoring_from_threads_is_safe(onnx_scorer: OnnxScorer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    snapshots = _snapshots()
    expected = onnx_scorer.score(snapshots)
    onnx_scorer.item_cache.clear()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(onnx_scorer.score, [snapshots] * 8))
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-6)
