"""The stores' logs → training/test tables, rate inputs and the item texts, built once.

Per store, a seeded user-level test split (``test_fraction``, stratified by "has a buying
session") is held out of every decision; ``train`` holds every labelled prefix of the
other users of all stores, ``test`` those of the test users. Rows keep their store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_export.data import Dataset, load_dataset, sessions_of, split_by_user, user_key
from model_export.rates import DEFAULT_STRENGTH, count_rates, oof_rate_matrix, rate_matrix
from model_export.tables import (
    ExampleTable,
    TextVocab,
    build_table,
    concat,
    context_vocab,
    store_examples,
)
from stream_app.ingest.events import Event
from stream_app.scoring.inputs import DEFAULT_MAX_EVENTS, InputSpec
from stream_app.scoring.rates import RatesTable

log = logging.getLogger(__name__)
SPLIT_SEED = 13
DEFAULT_TEST_FRACTION = 0.2


_KNOWN_STORES = {"ga_merch": "ga_merch", "rees46_multicategory": "rees46"}


def store_name(path: str | Path) -> str:
    """``ga_merch`` / ``rees46`` for the shared logs' folders; else the file's stem."""
    p = Path(path)
    return _KNOWN_STORES.get(p.parent.name, p.name.split(".")[0])


@dataclass
class Corpus:
    spec: InputSpec
    vocab: TextVocab
    train: ExampleTable
    test: ExampleTable
    sessions: dict[str, list[Event]]  # training users' sessions, keyed "store:session"
    session_user: dict[str, str]  # same keys → "store:user"
    stores: tuple[str, ...]
    fingerprints: dict[str, str]

    def rows_of_users(self, table: ExampleTable, users: set[str]) -> np.ndarray:
        return np.flatnonzero(np.isin(table.user, list(users)))

    def features(
        self, fit_rows: np.ndarray, eval_table: ExampleTable, fit_users: set[str], seed: int,
    ) -> tuple[np.ndarray, np.ndarray, RatesTable]:  # fmt: skip
        """(fit features with inner-OOF rates, eval features, the fit users' rates table)."""
        keys = [k for k, u in self.session_user.items() if u in fit_users]
        sessions = {k: self.sessions[k] for k in keys}
        users = {k: self.session_user[k] for k in keys}
        fit = self.train.take(fit_rows)
        fit_rates = oof_rate_matrix(fit, sessions, users, seed=seed)
        table = count_rates(sessions.values(), DEFAULT_STRENGTH)
        eval_rates = rate_matrix(table, eval_table.keys)
        return (np.hstack([fit.static, fit_rates]), np.hstack([eval_table.static, eval_rates]),
                table)  # fmt: skip


def _split(dataset: Dataset, test_fraction: float) -> tuple[frozenset[str], frozenset[str]]:
    if test_fraction <= 0:
        return frozenset(user_key(e[0]) for e in dataset.sessions.values()), frozenset()
    split = split_by_user(dataset, (1 - test_fraction, 0.0, test_fraction), SPLIT_SEED)
    return split.train | split.val, split.test


def load_corpus(
    paths: Sequence[str | Path], test_fraction: float = DEFAULT_TEST_FRACTION,
    max_events: int = DEFAULT_MAX_EVENTS, spec: InputSpec | None = None,
) -> Corpus:  # fmt: skip
    start = time.monotonic()
    loaded = []
    for path in paths:
        dataset = load_dataset(path)
        train_users, test_users = _split(dataset, test_fraction)
        loaded.append((store_name(path), dataset, train_users, test_users))
    if spec is None:
        vocab = context_vocab([(ds, users) for _, ds, users, _ in loaded])
        spec = InputSpec(max_events=max_events, context_vocab=vocab)
    texts = TextVocab()
    train, test = [], []
    sessions: dict[str, list[Event]] = {}
    session_user: dict[str, str] = {}
    for name, dataset, train_users, test_users in loaded:
        train.append(build_table(name, store_examples(dataset, train_users), spec, texts))
        test.append(build_table(name, store_examples(dataset, test_users), spec, texts))
        for sid in sessions_of(dataset, train_users):
            sessions[f"{name}:{sid}"] = dataset.sessions[sid]
            session_user[f"{name}:{sid}"] = f"{name}:{user_key(dataset.sessions[sid][0])}"
    log.info("corpus: %d train rows, %d test rows, %d item texts (%.0f s)",
             sum(len(t) for t in train), sum(len(t) for t in test), len(texts.positions),
             time.monotonic() - start)  # fmt: skip
    stores = tuple(n for n, *_ in loaded)
    prints = {n: d.fingerprint for n, d, *_ in loaded}
    return Corpus(spec, texts, concat(train), concat(test), sessions, session_user, stores, prints)


def sample_prefixes(table: ExampleTable, per_session: int, seed: int) -> np.ndarray:
    """Row indices keeping at most ``per_session`` evenly spread prefixes per session."""
    del seed  # evenly spread (first and last always kept): deterministic
    by_session: dict[str, list[int]] = {}
    for row, sid in enumerate(table.session):
        by_session.setdefault(f"{table.store[row]}:{sid}", []).append(row)
    keep: list[int] = []
    for rows in by_session.values():
        rows.sort(key=lambda r: table.prefix_len[r])
        if len(rows) <= per_session:
            keep.extend(rows)
        else:
            picks = np.linspace(0, len(rows) - 1, num=per_session).round().astype(int)
            keep.extend(rows[i] for i in sorted(set(picks.tolist())))
    return np.asarray(sorted(keep), dtype=np.int64)
