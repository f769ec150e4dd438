"""model_export.heldout writes exactly the held-out test users' rows (the evaluate split)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_export.corpus import DEFAULT_TEST_FRACTION, SPLIT_SEED
from model_export.data import load_dataset, split_by_user, user_key
from model_export.heldout import main
from stream_app.ingest.sources import iter_rees46_csv
from tests.shared_data import SHARED_DATA

REES46 = SHARED_DATA / "rees46_multicategory" / "2019-Oct_head_users_a.csv"


@pytest.mark.skipif(not REES46.is_file(), reason="shared data folder not present")
def test_heldout_rows_are_the_test_users_of_the_training_split(tmp_path: Path) -> None:
    out = tmp_path / "artifacts" / "heldout.csv.gz"  # a folder a fresh clone does not have yet
    assert main(["--events", str(REES46), "--out", str(out)]) == 0
    split = split_by_user(
        load_dataset(REES46), (1 - DEFAULT_TEST_FRACTION, 0.0, DEFAULT_TEST_FRACTION), SPLIT_SEED
    )
    heldout = load_dataset(out)
    users = {user_key(events[0]) for events in heldout.sessions.values()}
    assert users == split.test
    assert not users & (split.train | split.val)
    expected = [r for r in iter_rees46_csv(REES46) if r["user_id"] in split.test]
    assert list(iter_rees46_csv(out)) == expected


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--events", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
