"""Window snapshots → the session model's arrays (shared by training and every backend).

Per window, the newest ``max_events`` events, right-aligned (the newest event is always in
the last slot, padding in front): their item texts (``features.item_text``), event-type ids
and per-event numerics, a mask, and one feature vector:

    behaviour (19) ‖ last product (11) ‖ context one-hots ‖ product/category rates (7)

The context vocabulary (the device, channel and country values seen in training) and the
rates table are part of the model directory, so the feature layout is fixed by the model,
and ``feature_names`` (checked at load) says exactly what each column is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stream_app.scoring.rates import RATE_FEATURE_NAMES, RatesTable
from stream_app.sessions.features import (
    CONTEXT_FIELDS,
    EVENT_NUMERIC_NAMES,
    EVENT_TYPE_IDS,
    FEATURE_NAMES,
    LAST_PRODUCT_FEATURE_NAMES,
    behaviour_features,
    context_values,
    event_numerics,
    item_text,
    last_product_features,
)
from stream_app.sessions.windows import WindowSnapshot

DEFAULT_MAX_EVENTS = 16
EMPTY, OTHER = "<empty>", "<other>"


@dataclass(frozen=True)
class InputSpec:
    """How windows are encoded for one trained model (stored in its metadata)."""

    max_events: int = DEFAULT_MAX_EVENTS
    # Known values of each context field, in CONTEXT_FIELDS order (others map to OTHER).
    context_vocab: tuple[tuple[str, ...], ...] = ((), (), ())

    def context_names(self) -> tuple[str, ...]:
        return tuple(
            f"{name}={value}"
            for name, vocab in zip(CONTEXT_FIELDS, self.context_vocab, strict=True)
            for value in (EMPTY, OTHER, *vocab)
        )

    @property
    def static_names(self) -> tuple[str, ...]:
        """Columns that do not depend on the rates table."""
        return (*FEATURE_NAMES, *LAST_PRODUCT_FEATURE_NAMES, *self.context_names())

    @property
    def feature_names(self) -> tuple[str, ...]:
        return (*self.static_names, *RATE_FEATURE_NAMES)


def context_onehot(values: Sequence[str], spec: InputSpec) -> np.ndarray:
    parts = []
    for value, vocab in zip(values, spec.context_vocab, strict=True):
        row = np.zeros(len(vocab) + 2, dtype=np.float32)
        row[0 if not value else (vocab.index(value) + 2 if value in vocab else 1)] = 1.0
        parts.append(row)
    return np.concatenate(parts)


def static_features(snapshot: WindowSnapshot, spec: InputSpec) -> np.ndarray:
    """float32 vector aligned with ``spec.static_names``."""
    return np.concatenate([
        behaviour_features(snapshot),
        last_product_features(snapshot),
        context_onehot(context_values(snapshot), spec),
    ])  # fmt: skip


@dataclass(frozen=True)
class WindowSequence:
    """One window's newest events, right-aligned to ``max_events`` slots."""

    texts: tuple[str, ...]  # one per real event (len = n)
    event_types: np.ndarray  # int64 [K], 0 = padding
    numerics: np.ndarray  # float32 [K, N]
    mask: np.ndarray  # float32 [K], 1 = real event

    @property
    def n(self) -> int:
        return len(self.texts)


def window_sequence(snapshot: WindowSnapshot, max_events: int) -> WindowSequence:
    events = snapshot.events[-max_events:]
    pad = max_events - len(events)
    types = np.zeros(max_events, dtype=np.int64)
    types[pad:] = [EVENT_TYPE_IDS.get(e.event_type, 0) for e in events]
    numerics = np.zeros((max_events, len(EVENT_NUMERIC_NAMES)), dtype=np.float32)
    numerics[pad:] = event_numerics(events)
    mask = np.zeros(max_events, dtype=np.float32)
    mask[pad:] = 1.0
    return WindowSequence(tuple(item_text(e) for e in events), types, numerics, mask)


@dataclass(frozen=True)
class SessionArrays:
    """A batch of windows as model inputs; ``text_index`` points into ``texts``."""

    texts: tuple[str, ...]  # distinct item texts of the batch
    text_index: np.ndarray  # int64 [B, K] (padding slots point at 0 and are masked)
    event_types: np.ndarray  # int64 [B, K]
    numerics: np.ndarray  # float32 [B, K, N]
    mask: np.ndarray  # float32 [B, K]
    features: np.ndarray  # float32 [B, F]

    def __len__(self) -> int:
        return int(self.mask.shape[0])


def stack_sequences(sequences: Sequence[WindowSequence], features: np.ndarray) -> SessionArrays:
    """Batch window sequences; distinct texts are listed once (first-seen order)."""
    positions: dict[str, int] = {}
    k = sequences[0].mask.shape[0] if sequences else 0
    index = np.zeros((len(sequences), k), dtype=np.int64)
    for row, seq in enumerate(sequences):
        offset = k - seq.n
        for slot, text in enumerate(seq.texts):
            index[row, offset + slot] = positions.setdefault(text, len(positions))
    empty_k = np.zeros((0, k), dtype=np.float32)
    return SessionArrays(
        texts=tuple(positions),
        text_index=index,
        event_types=np.stack([s.event_types for s in sequences]) if sequences else
        empty_k.astype(np.int64),
        numerics=np.stack([s.numerics for s in sequences]) if sequences else
        np.zeros((0, k, len(EVENT_NUMERIC_NAMES)), dtype=np.float32),
        mask=np.stack([s.mask for s in sequences]) if sequences else empty_k,
        features=np.ascontiguousarray(features, dtype=np.float32),
    )  # fmt: skip


def encode_windows(
    snapshots: Sequence[WindowSnapshot], spec: InputSpec, rates: RatesTable
) -> SessionArrays:
    """The session model's inputs for ``snapshots`` (in order)."""
    sequences = [window_sequence(s, spec.max_events) for s in snapshots]
    width = len(spec.feature_names)
    features = (
        np.stack([np.concatenate([static_features(s, spec), rates.features(s)])
                  for s in snapshots]) if snapshots else np.zeros((0, width), dtype=np.float32)
    )  # fmt: skip
    return stack_sequences(sequences, features)
