"""Labelled prefixes → one array table (features, item sequences, rate keys), built once.

Everything the CV loop, the final training and the baselines read comes from here, computed
with the serving encoding (``stream_app.scoring.inputs``): a row is exactly what the worker
would feed the model for that window, except the rates columns, which depend on the rates
table of the fold (``model_export.rates``) and are filled in per fit from ``rate_keys``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from model_export.data import Dataset, Example, build_examples, sessions_of, user_key
from stream_app.scoring.inputs import InputSpec, static_features, window_sequence
from stream_app.scoring.rates import rate_keys
from stream_app.sessions.features import CONTEXT_FIELDS, context_values, item_text, price_bucket
from stream_app.sessions.windows import WindowRules, WindowSnapshot


@dataclass(frozen=True)
class ExampleTable:
    store: np.ndarray  # str [N]
    session: np.ndarray  # str [N]
    user: np.ndarray  # str [N] (store-qualified: users never collide across stores)
    prefix_len: np.ndarray  # int [N]
    n_prefixes: np.ndarray  # int [N]: prefixes of this row's session (session weights)
    label: np.ndarray  # int [N]
    static: np.ndarray  # float32 [N, S]
    text_index: np.ndarray  # int64 [N, K] into ``TextVocab.texts``
    event_types: np.ndarray  # int64 [N, K]
    numerics: np.ndarray  # float32 [N, K, E]
    mask: np.ndarray  # float32 [N, K]
    keys: np.ndarray  # object [N]: rate_keys of the window
    window_text: np.ndarray  # object [N]: bag of words for the text baselines

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def take(self, index: np.ndarray) -> ExampleTable:
        return ExampleTable(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @property
    def session_weight(self) -> np.ndarray:
        return 1.0 / self.n_prefixes


class TextVocab:
    """Distinct item texts across every table (their index is the item-cache row)."""

    def __init__(self) -> None:
        self.positions: dict[str, int] = {}

    def index(self, text: str) -> int:
        return self.positions.setdefault(text, len(self.positions))

    @property
    def texts(self) -> list[str]:
        return list(self.positions)


def context_vocab(datasets: Sequence[tuple[Dataset, frozenset[str]]], min_sessions: int = 30
                  ) -> tuple[tuple[str, ...], ...]:  # fmt: skip
    """Context values seen in at least ``min_sessions`` training sessions, per field."""
    counters: list[Counter[str]] = [Counter() for _ in CONTEXT_FIELDS]
    for dataset, users in datasets:
        for sid in sessions_of(dataset, users):
            snap = WindowSnapshot(sid, "", tuple(dataset.sessions[sid][:1]))
            for counter, value in zip(counters, context_values(snap), strict=True):
                if value:
                    counter[value] += 1
    return tuple(tuple(sorted(v for v, n in c.items() if n >= min_sessions)) for c in counters)


def window_words(snapshot: WindowSnapshot, max_events: int) -> str:
    """Event types, item texts, category words, brands and price bands, plus context."""
    words = []
    for event in snapshot.events[-max_events:]:
        category = event.category_code.replace(".", " ").replace("/", " ")
        words.append(f"t_{event.event_type} {item_text(event)} {category} {event.brand} "
                     f"{price_bucket(event.price).replace('$', 'p')}")  # fmt: skip
    context = " ".join(f"ctx_{n}_{v.replace(' ', '_')}" for n, v in
                       zip(CONTEXT_FIELDS, context_values(snapshot), strict=True) if v)  # fmt: skip
    return " ".join(words).lower() + " " + context


def build_table(
    store: str, examples: Sequence[Example], spec: InputSpec, vocab: TextVocab
) -> ExampleTable:
    if not examples:
        return _empty_table(spec)
    per_session = Counter(e.session_id for e in examples)
    k = spec.max_events
    sequences = [window_sequence(e.snapshot, k) for e in examples]
    index = np.zeros((len(examples), k), dtype=np.int64)
    for row, seq in enumerate(sequences):
        index[row, k - seq.n :] = [vocab.index(t) for t in seq.texts]
    return ExampleTable(
        store=np.full(len(examples), store, dtype=object),
        session=np.asarray([e.session_id for e in examples], dtype=object),
        user=np.asarray(
            [f"{store}:{e.user_id or 'anon:' + e.session_id}" for e in examples], dtype=object
        ),
        prefix_len=np.asarray([e.prefix_len for e in examples], dtype=np.int64),
        n_prefixes=np.asarray([per_session[e.session_id] for e in examples], dtype=np.int64),
        label=np.asarray([e.label for e in examples], dtype=np.int64),
        static=np.stack([static_features(e.snapshot, spec) for e in examples]),
        text_index=index,
        event_types=np.stack([s.event_types for s in sequences]),
        numerics=np.stack([s.numerics for s in sequences]),
        mask=np.stack([s.mask for s in sequences]),
        keys=_object_array([rate_keys(e.snapshot) for e in examples]),
        window_text=np.asarray([window_words(e.snapshot, k) for e in examples], dtype=object),
    )


def _empty_table(spec: InputSpec) -> ExampleTable:
    from stream_app.sessions.features import EVENT_NUMERIC_NAMES

    k, none = spec.max_events, np.zeros(0, dtype=object)
    return ExampleTable(
        store=none, session=none, user=none, prefix_len=np.zeros(0, dtype=np.int64),
        n_prefixes=np.zeros(0, dtype=np.int64), label=np.zeros(0, dtype=np.int64),
        static=np.zeros((0, len(spec.static_names)), dtype=np.float32),
        text_index=np.zeros((0, k), dtype=np.int64), event_types=np.zeros((0, k), dtype=np.int64),
        numerics=np.zeros((0, k, len(EVENT_NUMERIC_NAMES)), dtype=np.float32),
        mask=np.zeros((0, k), dtype=np.float32), keys=none, window_text=none,
    )  # fmt: skip


def _object_array(items: list[object]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def concat(tables: Sequence[ExampleTable]) -> ExampleTable:
    return ExampleTable(**{f.name: np.concatenate([getattr(t, f.name) for t in tables])
                           for f in fields(ExampleTable)})  # fmt: skip


def store_examples(dataset: Dataset, users: frozenset[str]) -> list[Example]:
    """Every labelled prefix of ``users``' sessions (censoring as in ``build_examples``)."""
    return build_examples(dataset, WindowRules(), None, sessions_of(dataset, users))


def session_users(dataset: Dataset) -> dict[str, str]:
    return {sid: user_key(evs[0]) for sid, evs in dataset.sessions.items()}
