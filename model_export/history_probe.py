"""What a shopper's earlier sessions would add: a measurement, not a shipped feature.

    python -m model_export.history_probe --report-json artifacts/history_probe.json

The serving model sees one session. A returning visitor's earlier sessions (how many, how many
had a cart, how many bought) are known to a live site, but the worker keeps no per-user state,
so the model cannot use them. This probe measures how much they would add, with the protocol
of ``model_export.select``: user-grouped 5-fold CV on the training users only (the held-out
users are not read), the CV-chosen ``logreg`` and ``hgb`` refitted per fold with and without
four history columns appended to the same inputs, paired on the same folds.

History of a session = the same user's sessions in the same log that *started before it*:
``log1p(earlier sessions)``, ``log1p(earlier with a cart)``, ``log1p(earlier with a
purchase)``, ``returning`` (any earlier session). Only what happened before the session
began, so nothing leaks from its own future; the serving side would keep these counts per
user in Redis.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model_export.baselines import BaselineSpec, fit_baseline
from model_export.corpus import Corpus, load_corpus, store_name
from model_export.data import load_dataset, user_key
from model_export.metrics import metrics
from model_export.select import DEFAULT_EVENTS, iter_folds
from stream_app.ingest.events import Event

log = logging.getLogger("model_export.history_probe")

CHOSEN = (  # the CV-chosen settings (docs/model_reports/select.json, "chosen")
    BaselineSpec("logreg", {"C": 0.05}),
    BaselineSpec("hgb", {"learning_rate": 0.1, "max_leaf_nodes": 15, "max_iter": 150,
                         "min_samples_leaf": 100}),
)  # fmt: skip
HISTORY_COLUMNS = ("log1p_earlier_sessions", "log1p_earlier_carted", "log1p_earlier_bought",
                   "returning")  # fmt: skip


def session_history(path: str | Path) -> dict[str, np.ndarray]:
    """``"store:session"`` -> the four history columns, for every session of a log."""
    return history_of_sessions(store_name(path), load_dataset(path).sessions)


def history_of_sessions(
    store: str, sessions: Mapping[str, Sequence[Event]]
) -> dict[str, np.ndarray]:
    """``"store:session"`` -> the history columns, from the same user's earlier sessions."""
    by_user: dict[str, list[tuple[int, str, bool, bool]]] = defaultdict(list)
    for sid, events in sessions.items():
        types = {e.event_type for e in events}
        start = min(e.event_time_ms for e in events)
        by_user[user_key(events[0])].append((start, sid, "cart" in types, "purchase" in types))
    history: dict[str, np.ndarray] = {}
    for visits in by_user.values():
        visits.sort()
        earlier = carted = bought = 0
        for _, sid, had_cart, had_purchase in visits:
            history[f"{store}:{sid}"] = np.asarray(
                [np.log1p(earlier), np.log1p(carted), np.log1p(bought), float(earlier > 0)],
                dtype=np.float32,
            )
            earlier, carted, bought = earlier + 1, carted + had_cart, bought + had_purchase
    return history


def history_columns(corpus: Corpus, history: dict[str, np.ndarray]) -> np.ndarray:
    rows = [history[f"{s}:{sid}"] for s, sid in zip(corpus.train.store, corpus.train.session,
                                                    strict=True)]  # fmt: skip
    return np.stack(rows)


def cross_validate(
    corpus: Corpus, extra: np.ndarray, seed: int, n_folds: int
) -> dict[str, np.ndarray]:
    """Out-of-fold predictions per (baseline, with/without history) on the training users."""
    variants = [f"{spec.name}{tag}" for spec in CHOSEN for tag in ("", "+history")]
    oof = {key: np.full(len(corpus.train), np.nan) for key in variants}
    for data in iter_folds(corpus, n_folds, seed):
        fit_rows, eval_rows, fit_t, eval_t = data.fit_rows, data.eval_rows, data.fit_t, data.eval_t
        x_fit, x_eval, fold = data.x_fit, data.x_eval, data.fold
        for spec in CHOSEN:
            for tag, xf, xe in (
                ("", x_fit, x_eval),
                ("+history", np.hstack([x_fit, extra[fit_rows]]),
                 np.hstack([x_eval, extra[eval_rows]])),
            ):  # fmt: skip
                start = time.monotonic()
                predict = fit_baseline(spec, xf, fit_t.window_text, fit_t.label, seed)
                oof[f"{spec.name}{tag}"][eval_rows] = predict(xe, eval_t.window_text)
                log.info("fold %d %s%s %.0fs", fold, spec.name, tag, time.monotonic() - start)
    return oof


def summarise(corpus: Corpus, oof: dict[str, np.ndarray], n_folds: int, seed: int,
              boot: int = 200) -> dict[str, Any]:  # fmt: skip
    """Per store: pooled OOF metrics and the paired user-bootstrap delta (with - without)."""
    train = corpus.train
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {}
    for store in corpus.stores:
        rows = np.flatnonzero(train.store == store)
        y = train.label[rows]
        users = train.user[rows]
        unique, inverse = np.unique(users, return_inverse=True)
        members = [np.flatnonzero(inverse == i) for i in range(len(unique))]
        per_store: dict[str, Any] = {"prefixes": len(rows), "base_rate": float(y.mean())}
        for key, values in oof.items():
            per_store[key] = metrics(y, values[rows])
        for spec in CHOSEN:
            with_h, without = oof[f"{spec.name}+history"][rows], oof[spec.name][rows]
            deltas: dict[str, list[float]] = {"pr_auc": [], "roc_auc": []}
            for _ in range(boot):
                drawn = rng.integers(0, len(unique), len(unique))
                pick = np.concatenate([members[i] for i in drawn])
                if y[pick].min() == y[pick].max():
                    continue
                a, b = metrics(y[pick], with_h[pick]), metrics(y[pick], without[pick])
                for metric in deltas:
                    deltas[metric].append(a[metric] - b[metric])
            per_store[f"{spec.name}_delta"] = {
                m: {"mean": float(np.mean(v)), "lo": float(np.percentile(v, 2.5)),
                    "hi": float(np.percentile(v, 97.5))}
                for m, v in deltas.items()
            }  # fmt: skip
        report[store] = per_store
    return {"folds": n_folds, "seed": seed, "columns": list(HISTORY_COLUMNS), "stores": report}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model_export.history_probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--events", action="append", help="a shared log (repeatable)")
    p.add_argument("--report-json", required=True, type=Path)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    paths = a.events or [str(e) for e in DEFAULT_EVENTS]
    corpus = load_corpus(paths)
    history: dict[str, np.ndarray] = {}
    for path in paths:
        history |= session_history(path)
    oof = cross_validate(corpus, history_columns(corpus, history), a.seed, a.folds)
    report = summarise(corpus, oof, a.folds, a.seed)
    a.report_json.parent.mkdir(parents=True, exist_ok=True)
    a.report_json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
