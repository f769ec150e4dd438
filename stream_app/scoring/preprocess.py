"""Snapshots → padded model inputs, shared by every backend.

Shapes are padded up to a small fixed set of (batch, sequence) buckets so that ONNX Runtime's
memory planner, CUDA graphs and TensorRT profiles only ever see a handful of shapes. Padding
rows repeat the first real row (an all-masked row could produce NaN in fp16 attention) and
padding tokens are masked out, so a padded batch scores exactly like the unpadded one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from stream_app.errors import ModelLoadError
from stream_app.scoring.model_dir import ModelMetadata

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from stream_app.windows import WindowSnapshot


@dataclass(frozen=True)
class EncodedBatch:
    """Model inputs for one bucket; only the first ``n`` rows are real."""

    input_ids: np.ndarray  # int64 [B, T]
    attention_mask: np.ndarray  # int64 [B, T]
    features: np.ndarray  # float32 [B, F]
    n: int

    @property
    def shape(self) -> tuple[int, int]:
        rows, tokens = self.input_ids.shape
        return int(rows), int(tokens)


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


def _features_module() -> ModuleType:
    # Imported at call time: the encoding module is owned by training and must be the same
    # one the model was trained with; importing it here keeps scoring importable on its own.
    import stream_app.features as features

    return features


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
    """Tokenise + featurise + bucket; stateless after construction (thread-safe to call)."""

    def __init__(self, model_dir: Path, metadata: ModelMetadata) -> None:
        self.metadata = metadata
        tokenizer = load_tokenizer(model_dir)
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.tokenizer = frozen_truncating_tokenizer(tokenizer, metadata.max_tokens)
        self.check_features()

    def check_features(self) -> None:
        """The serving encoding must be the one the model was trained on."""
        names = tuple(_features_module().FEATURE_NAMES)
        if names != self.metadata.feature_names:
            raise ModelLoadError(
                f"model expects features {self.metadata.feature_names}, "
                f"stream_app.features provides {names}"
            )

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.tokenizer.encode_batch(list(texts))]

    def encode(self, snapshots: Sequence[WindowSnapshot]) -> list[EncodedBatch]:
        features = _features_module()
        events = self.metadata.text_events
        texts = [features.session_text(s, max_events=events) for s in snapshots]
        matrix = np.stack([features.behaviour_features(s) for s in snapshots]).astype(np.float32)
        return self.encode_texts(texts, matrix)

    def encode_texts(self, texts: Sequence[str], features: np.ndarray) -> list[EncodedBatch]:
        """Split into chunks of at most the largest batch bucket, each padded to buckets."""
        if len(texts) != len(features):
            raise ValueError(f"{len(texts)} texts but {len(features)} feature rows")
        tokens = self.tokenize(texts)
        step = self.metadata.batch_buckets[-1]
        return [
            self._bucket(tokens[i : i + step], features[i : i + step])
            for i in range(0, len(tokens), step)
        ]

    def _bucket(self, tokens: list[list[int]], features: np.ndarray) -> EncodedBatch:
        rows = bucket_for(len(tokens), self.metadata.batch_buckets)
        length = bucket_for(max(len(t) for t in tokens), self.metadata.seq_buckets)
        ids, mask = pad_tokens(tokens, length, self.pad_id)
        return EncodedBatch(
            input_ids=pad_rows(ids, rows),
            attention_mask=pad_rows(mask, rows),
            features=pad_rows(np.ascontiguousarray(features, dtype=np.float32), rows),
            n=len(tokens),
        )


def score_batches(
    batches: Sequence[EncodedBatch], run: Callable[[EncodedBatch], np.ndarray]
) -> np.ndarray:
    """Run each bucket and keep the real rows, in input order, as float32."""
    if not batches:
        return np.zeros(0, dtype=np.float32)
    parts = [np.asarray(run(b), dtype=np.float32).reshape(-1)[: b.n] for b in batches]
    return np.concatenate(parts)


class SnapshotScoring:
    """``score(snapshots)`` for every backend: encode with the shared preprocessor, then run
    the backend's ``score_encoded`` on the bucketed batches."""

    preprocessor: Preprocessor

    def score_encoded(self, batches: Sequence[EncodedBatch]) -> np.ndarray:
        raise NotImplementedError

    def score(self, snapshots: Sequence[WindowSnapshot]) -> np.ndarray:
        if not snapshots:
            return np.zeros(0, dtype=np.float32)
        return self.score_encoded(self.preprocessor.encode(snapshots))
