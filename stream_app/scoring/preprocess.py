"""Snapshots → padded model inputs and the scoring loop shared by every backend.

``SnapshotScoring.score``: windows → ``inputs.encode_windows`` → item texts looked up in the
scorer's LRU cache; only cache misses go through the item encoder, length-sorted and padded
to (batch, tokens) buckets → the session model on batch-bucketed rows → probabilities.

Shapes are padded up to a small fixed set of buckets so that ONNX Runtime's memory planner,
CUDA graphs and TensorRT profiles only ever see a handful of shapes. Padding rows repeat the
first real row (an all-masked row could produce NaN in fp16 attention) and padding tokens
are masked out, so a padded batch scores exactly like the unpadded one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stream_app.core.errors import ModelLoadError
from stream_app.scoring.inputs import SessionArrays, encode_windows
from stream_app.scoring.item_cache import ItemEmbeddingCache
from stream_app.scoring.model_dir import ModelMetadata
from stream_app.scoring.rates import load_rates

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from stream_app.sessions.windows import WindowSnapshot


@dataclass(frozen=True)
class EncodedBatch:
    """Item-encoder inputs for one (rows, tokens) bucket; only the first ``n`` rows are real."""

    input_ids: np.ndarray  # int64 [B, T]
    attention_mask: np.ndarray  # int64 [B, T]
    n: int

    @property
    def shape(self) -> tuple[int, int]:
        rows, tokens = self.input_ids.shape
        return int(rows), int(tokens)


@dataclass(frozen=True)
class SessionBatch:
    """Session-model inputs for one batch bucket; only the first ``n`` rows are real."""

    items: np.ndarray  # float32 [B, K, d]
    event_types: np.ndarray  # int64 [B, K]
    numerics: np.ndarray  # float32 [B, K, E]
    mask: np.ndarray  # float32 [B, K]
    features: np.ndarray  # float32 [B, F]
    n: int

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.items, self.event_types, self.numerics, self.mask, self.features)


SESSION_INPUTS: tuple[str, ...] = ("items", "event_types", "numerics", "mask", "features")
ITEM_INPUTS: tuple[str, ...] = ("input_ids", "attention_mask")


def bucket_for(size: int, buckets: Sequence[int]) -> int:
    """Smallest bucket that holds ``size`` (buckets ascending)."""
    for bucket in buckets:
        if size <= bucket:
            return bucket
    raise ValueError(f"size {size} exceeds the largest bucket {buckets[-1]}")


def pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """Pad axis 0 to ``rows`` by repeating row 0 (keeps padded rows numerically harmless)."""
    missing = rows - array.shape[0]
    if missing <= 0:
        return array
    filler = np.repeat(array[:1], missing, axis=0)
    return np.concatenate([array, filler], axis=0)


def pad_tokens(
    token_lists: Sequence[Sequence[int]], length: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id lists to ``length``: (input_ids, attention_mask), both int64."""
    ids = np.full((len(token_lists), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_lists), length), dtype=np.int64)
    for row, tokens in enumerate(token_lists):
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
    return ids, mask


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    path = Path(model_dir) / "tokenizer.json"
    try:
        return PreTrainedTokenizerFast.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load tokenizer {path}: {exc}") from exc


def frozen_truncating_tokenizer(tokenizer: PreTrainedTokenizerFast, max_tokens: int) -> Tokenizer:
    """The fast tokenizer's Rust core, configured once: truncate at ``max_tokens``, no padding.

    Calling ``PreTrainedTokenizerFast(..., truncation=True)`` re-configures the shared Rust
    object on every call, which fails ("Already borrowed") when two threads tokenise at once;
    a private copy configured up front is only ever read. Same ids as the training call.
    """
    from tokenizers import Tokenizer

    core = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    core.enable_truncation(max_length=max_tokens)
    core.no_padding()
    return core


class Preprocessor:
    """Window encoding + item tokenising + bucketing; read-only after construction."""

    def __init__(self, model_dir: Path, metadata: ModelMetadata) -> None:
        self.metadata = metadata
        self.spec = metadata.spec
        self.rates = load_rates(model_dir)
        tokenizer = load_tokenizer(model_dir)
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.tokenizer = frozen_truncating_tokenizer(tokenizer, metadata.max_tokens)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.tokenizer.encode_batch(list(texts))]

    def encode(self, snapshots: Sequence[WindowSnapshot]) -> SessionArrays:
        return encode_windows(snapshots, self.spec, self.rates)

    def item_batches(self, texts: Sequence[str]) -> list[tuple[np.ndarray, EncodedBatch]]:
        """Length-sorted, bucket-padded encoder batches and the text positions they hold."""
        tokens = self.tokenize(texts)
        order = np.argsort([len(t) for t in tokens], kind="stable")
        step = self.metadata.batch_buckets[-1]
        out = []
        for start in range(0, len(order), step):
            chosen = order[start : start + step]
            out.append((chosen, self._item_bucket([tokens[i] for i in chosen])))
        return out

    def _item_bucket(self, tokens: list[list[int]]) -> EncodedBatch:
        rows = bucket_for(len(tokens), self.metadata.batch_buckets)
        length = bucket_for(max(len(t) for t in tokens), self.metadata.seq_buckets)
        ids, mask = pad_tokens(tokens, length, self.pad_id)
        return EncodedBatch(pad_rows(ids, rows), pad_rows(mask, rows), len(tokens))

    def session_batches(self, arrays: SessionArrays, items: np.ndarray) -> list[SessionBatch]:
        """``items`` = item embeddings [B, K, d]; chunks of at most the largest bucket."""
        step = self.metadata.batch_buckets[-1]
        out = []
        for start in range(0, len(arrays), step):
            part = slice(start, start + step)
            n = len(arrays.mask[part])
            rows = bucket_for(n, self.metadata.batch_buckets)
            fields = (items[part], arrays.event_types[part], arrays.numerics[part],
                      arrays.mask[part], arrays.features[part])  # fmt: skip
            padded = [np.ascontiguousarray(pad_rows(a, rows)) for a in fields]
            out.append(SessionBatch(padded[0], padded[1], padded[2], padded[3], padded[4], n))
        return out


def score_batches(
    batches: Sequence[SessionBatch], run: Callable[[SessionBatch], np.ndarray]
) -> np.ndarray:
    """Run each bucket and keep the real rows, in input order, as float32."""
    if not batches:
        return np.zeros(0, dtype=np.float32)
    parts = [np.asarray(run(b), dtype=np.float32).reshape(-1)[: b.n] for b in batches]
    return np.concatenate(parts)


class SnapshotScoring:
    """``score(snapshots)`` for every backend. A backend provides ``run_items`` (item encoder
    on one bucket) and ``run_session`` (session model on one bucket)."""

    preprocessor: Preprocessor
    item_cache: ItemEmbeddingCache

    def run_items(self, batch: EncodedBatch) -> np.ndarray:
        raise NotImplementedError

    def run_session(self, batch: SessionBatch) -> np.ndarray:
        raise NotImplementedError

    def encode_items(self, texts: Sequence[str]) -> np.ndarray:
        """Item embeddings for ``texts`` straight from the encoder (no cache)."""
        out = np.zeros((len(texts), self.preprocessor.metadata.item_dim), dtype=np.float32)
        for positions, batch in self.preprocessor.item_batches(texts):
            out[positions] = np.asarray(self.run_items(batch), dtype=np.float32)[: batch.n]
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Item embeddings, encoding only the texts the cache does not hold."""
        vectors, missing = self.item_cache.lookup(texts)
        if missing:
            new_texts = [texts[i] for i in missing]
            fresh = self.encode_items(new_texts)
            vectors[missing] = fresh
            self.item_cache.store(new_texts, fresh)
        return vectors

    def score_arrays(self, arrays: SessionArrays) -> np.ndarray:
        if len(arrays) == 0:
            return np.zeros(0, dtype=np.float32)
        items = self.embed(arrays.texts)[arrays.text_index]
        return score_batches(self.preprocessor.session_batches(arrays, items), self.run_session)

    def score(self, snapshots: Sequence[WindowSnapshot]) -> np.ndarray:
        if not snapshots:
            return np.zeros(0, dtype=np.float32)
        return self.score_arrays(self.preprocessor.encode(snapshots))
