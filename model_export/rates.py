"""Product/category conversion rates from training sessions, out-of-fold for fitted rows.

A row's rate features must never count its own session: the rates of the rows a model is
fitted on come from the *other* inner folds of the training users (grouped by user), and
the rows it is scored on (a CV fold, the test users, live traffic) use the table built from
every training user. ``stream_app.scoring.rates`` holds the lookup the worker uses.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from model_export.tables import ExampleTable
from stream_app.ingest.events import Event
from stream_app.scoring.rates import RatesTable
from stream_app.sessions.windows import category_of

DEFAULT_STRENGTH = 20.0


def count_rates(sessions: Iterable[Sequence[Event]], strength: float = DEFAULT_STRENGTH
                ) -> RatesTable:  # fmt: skip
    """(sessions, carted, bought) per product and per category over ``sessions``."""
    product: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    category: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for events in sessions:
        for key_of, table in ((lambda e: e.product_id, product), (category_of, category)):
            seen: dict[str, list[int]] = {}
            for event in events:
                key = key_of(event)
                if not key:
                    continue
                flags = seen.setdefault(key, [1, 0, 0])
                flags[1] |= event.event_type == "cart"
                flags[2] |= event.event_type == "purchase"
            for key, flags in seen.items():
                counts = table[key]
                for i in range(3):
                    counts[i] += flags[i]
    totals = np.asarray(list(product.values()) or [[1, 0, 0]], dtype=np.float64).sum(axis=0)
    return RatesTable(
        prior_cart=float(totals[1] / max(totals[0], 1.0)),
        prior_buy=float(totals[2] / max(totals[0], 1.0)),
        strength=strength,
        product={k: (v[0], v[1], v[2]) for k, v in product.items()},
        category={k: (v[0], v[1], v[2]) for k, v in category.items()},
    )


def rate_matrix(table: RatesTable, keys: np.ndarray) -> np.ndarray:
    """float32 [N, len(RATE_FEATURE_NAMES)] for rows with these ``rate_keys``."""
    if len(keys) == 0:
        return np.zeros((0, 7), dtype=np.float32)
    return np.stack([table.features_for_keys(*k) for k in keys])


def user_folds(users: Sequence[str], n_folds: int, seed: int) -> dict[str, int]:
    """A seeded fold number per distinct user."""
    distinct = sorted(set(users))
    order = np.random.default_rng(seed).permutation(len(distinct))
    return {distinct[i]: rank % n_folds for rank, i in enumerate(order)}


def oof_rate_matrix(
    rows: ExampleTable, sessions: Mapping[str, Sequence[Event]], session_user: Mapping[str, str],
    n_folds: int = 5, seed: int = 0, strength: float = DEFAULT_STRENGTH,
) -> np.ndarray:  # fmt: skip
    """Rate features of ``rows`` where each row's table excludes its own user's fold.

    ``sessions`` are the training sessions (keyed ``store:session``) whose users may count;
    ``session_user`` maps each to its (store-qualified) user.
    """
    folds = user_folds(list(session_user.values()), n_folds, seed)
    out = np.zeros((len(rows), 7), dtype=np.float32)
    row_folds = np.asarray([folds.get(u, -1) for u in rows.user])
    for fold in range(n_folds):
        table = count_rates(
            (evs for key, evs in sessions.items() if folds[session_user[key]] != fold), strength
        )
        picked = np.flatnonzero(row_folds == fold)
        out[picked] = rate_matrix(table, rows.keys[picked])
    missing = np.flatnonzero(row_folds == -1)
    if len(missing):
        out[missing] = rate_matrix(count_rates(sessions.values(), strength), rows.keys[missing])
    return out
