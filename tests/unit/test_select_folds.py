"""The CV protocol's folds (model_export.select.iter_folds): user-grouped, no leakage.

Every choice behind the model card and the history probe is made on these folds, so they must
keep a user's prefixes on one side, fit on sampled prefixes of the other users only, and score
every prefix of the fold's users.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from model_export.baselines import BaselineSpec
from model_export.corpus import Corpus, load_corpus
from model_export.select import PER_SESSION, Candidate, cross_validate, iter_folds
from tests.shared_data import SHARED_DATA

REES46 = SHARED_DATA / "rees46_multicategory" / "2019-Oct_head_users_a.csv"
pytestmark = pytest.mark.skipif(not REES46.is_file(), reason="shared data folder not present")


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return load_corpus([REES46])


def test_folds_are_user_grouped_and_cover_every_training_prefix_once(corpus: Corpus) -> None:
    train = corpus.train
    scored = np.zeros(len(train), dtype=int)
    for data in iter_folds(corpus, n_folds=5, seed=0):
        fit_users, eval_users = set(train.user[data.fit_rows]), set(train.user[data.eval_rows])
        assert not fit_users & eval_users, "a user on both sides of a fold"
        scored[data.eval_rows] += 1
        per_session = Counter(zip(train.store[data.fit_rows], train.session[data.fit_rows],
                                  strict=True))  # fmt: skip
        assert max(per_session.values()) <= PER_SESSION
        assert data.x_fit.shape[0] == len(data.fit_rows) == len(data.fit_t)
        assert data.x_eval.shape[0] == len(data.eval_rows) == len(data.eval_t)
    assert (scored == 1).all(), "every training prefix is scored by exactly one fold"
    assert not set(train.user) & set(corpus.test.user), "held-out users leaked into CV"


def test_cross_validate_fills_out_of_fold_predictions(corpus: Corpus) -> None:
    candidate = Candidate("logreg", baseline=BaselineSpec("logreg", {"C": 0.05}))
    oof = cross_validate(corpus, items=None, candidates=[candidate], seed=0)  # type: ignore[arg-type]
    values = oof[candidate.key()].values
    assert np.isfinite(values).all()
    assert ((values > 0) & (values < 1)).all()
