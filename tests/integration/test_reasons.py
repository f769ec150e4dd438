"""Reason codes are faithful to the shipped model, on sessions it never trained on.

The current model was trained on REES46; ga_merch (when the shared data is present) is
unseen data, else the bundled REES46 sample stands in. Among the highest-scoring sessions
(the ones a rule would fire on), removing the events of the top reason must lower the score
more than removing as many random window events.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from model_export.heldout import heldout_users, write_heldout
from stream_app.replay.backtest import load_sessions
from stream_app.scoring.onnx_backend import OnnxScorer
from stream_app.sessions.windows import WindowRules
from stream_app.triggers.faithfulness import faithfulness
from tests.shared_data import BUNDLED_SAMPLE, SHARED_DATA

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

GA_MERCH = SHARED_DATA / "ga_merch" / "2016-Aug-Oct_users_a.csv.gz"


def test_top_reason_matters_more_than_random_events(model_dir: Path, tmp_path: Path) -> None:
    source = GA_MERCH if GA_MERCH.exists() else BUNDLED_SAMPLE
    if source == GA_MERCH:
        heldout = tmp_path / "ga_merch_heldout.csv.gz"
        write_heldout(GA_MERCH, heldout, heldout_users(GA_MERCH))
        source = heldout
    scorer = OnnxScorer(model_dir)
    sessions = load_sessions(source, max_sessions=600)
    snapshots = []
    for session in sessions:
        prefixes = list(session.prefixes(WindowRules()))
        if len(prefixes) >= 3:
            snapshots.append(prefixes[-1])  # the last window before any purchase
    scores = scorer.score(snapshots)
    ranked = sorted(zip(scores, range(len(snapshots)), strict=True), reverse=True)
    top = [snapshots[i] for _, i in ranked[:80]]
    result = faithfulness(top, scorer)
    print(f"faithfulness on {source.name}: {result}")
    assert result["compared"] >= 30
    assert result["mean_drop_top"] > result["mean_drop_random"]
    assert result["top_beats_random"] >= 0.6
