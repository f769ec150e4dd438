"""Logs → sessions → labelled prefixes: labels, prefixes, censoring, user split."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from model_export.data import (
    build_examples,
    load_dataset,
    sessions_of,
    snapshots_for_session,
    split_by_user,
    user_key,
)
from stream_app.sessions.windows import WindowRules, expected_window
from tests.shared_data import SHARED_REES46

HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)


def row(
    hms: str, kind: str, user: str, session: str, product: str = "1", price: str = "10.00"
) -> str:
    return f"2019-10-01 {hms} UTC,{kind},{product},2053013555631882655,electronics.smartphone,apple,{price},{user},{session}"  # noqa: E501


ROWS = [
    row("00:00:00", "view", "u1", "buy"),
    row("00:00:10", "view", "u2", "nobuy", product="2"),
    row("00:00:20", "cart", "u1", "buy"),
    row("00:00:20", "cart", "u1", "buy"),  # exact duplicate row: collapses
    row("00:00:30", "view", "u1", "buy", product="3"),
    row("00:01:00", "purchase", "u1", "buy"),
    row("00:01:30", "view", "u1", "buy"),  # after the purchase: never part of a prefix
    row("00:02:00", "view", "u2", "nobuy"),
    row("00:30:00", "view", "u3", "late_nobuy"),  # within 5 min of the log end: censored
    row("00:31:00", "view", "u4", "late_buy"),
    row("00:31:30", "purchase", "u4", "late_buy"),  # censored too, whatever its label
    row("00:33:00", "view", "u5", "end"),
]


@pytest.fixture
def rees46_csv(tmp_path: Path) -> Path:
    path = tmp_path / "events.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join([HEADER, *ROWS]) + "\n")
    return path


def test_reads_gzip_and_orders_and_dedups(rees46_csv: Path) -> None:
    ds = load_dataset(rees46_csv)
    assert ds.source == "rees46"
    buy = ds.sessions["buy"]
    assert [e.event_time_ms for e in buy] == sorted(e.event_time_ms for e in buy)
    assert len({e.event_id for e in buy}) == len(buy) - 1  # the duplicate row shares its id
    assert buy[0].price == 10.0
    assert buy[0].category_id == "2053013555631882655"  # kept as a string, never a float
    assert buy[0].event_time_ms == 1_569_888_000_000


def test_prefixes_stop_before_the_first_purchase(rees46_csv: Path) -> None:
    ds = load_dataset(rees46_csv)
    examples = {(e.session_id, e.prefix_len): e for e in build_examples(ds)}
    buy = sorted(k for s, k in examples if s == "buy")
    assert buy == [1, 2, 3]  # view, cart, view (duplicate cart dropped), then the purchase
    assert all(examples[("buy", k)].label == 1 for k in buy)
    assert all(e.event_type != "purchase" for e in examples[("buy", 3)].snapshot.events)
    assert [examples[("nobuy", k)].label for k in (1, 2)] == [0, 0]


def test_censoring_drops_sessions_near_the_log_end_whatever_the_label(rees46_csv: Path) -> None:
    ds = load_dataset(rees46_csv)
    kept = {e.session_id for e in build_examples(ds)}
    assert kept == {"buy", "nobuy"}
    uncensored = load_dataset(rees46_csv, censor_minutes=0)
    assert {e.session_id for e in build_examples(uncensored)} == {
        "buy", "nobuy", "late_nobuy", "late_buy", "end"}  # fmt: skip


def test_prefix_snapshots_match_the_prefix(rees46_csv: Path) -> None:
    ds = load_dataset(rees46_csv)
    snaps = snapshots_for_session(ds.sessions["buy"], WindowRules(max_events=2))
    third = snaps[2]
    assert third.aggregates.n_events == 3
    assert third.aggregates.count("cart") == 1
    assert third.aggregates.n_products == 2
    assert len(third.events) == 2  # window trimmed to the newest two
    assert third.events[-1].product_id == "3"
    assert third.aggregates.first_event_ms == ds.sessions["buy"][0].event_time_ms


def test_max_prefixes_keeps_first_and_last(rees46_csv: Path) -> None:
    ds = load_dataset(rees46_csv)
    lens = [e.prefix_len for e in build_examples(ds, max_prefixes=2) if e.session_id == "buy"]
    assert lens == [1, 3]


def test_split_by_user_is_disjoint_complete_and_reproducible(rees46_csv: Path) -> None:
    ds = load_dataset(rees46_csv, censor_minutes=0)
    a = split_by_user(ds, seed=3)
    assert a == split_by_user(ds, seed=3)
    parts = [a.train, a.val, a.test]
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == 5


@pytest.mark.skipif(not SHARED_REES46.exists(), reason="shared data not mounted")
def test_real_file_split_has_no_user_in_two_parts() -> None:
    ds = load_dataset(SHARED_REES46)
    split = split_by_user(ds)
    assert not split.train & split.val
    assert not split.train & split.test
    assert not split.val & split.test
    sessions = [set(sessions_of(ds, p)) for p in (split.train, split.val, split.test)]
    assert sum(len(s) for s in sessions) == len(ds.sessions)
    for part in (split.train, split.val, split.test):
        examples = build_examples(ds, session_ids=sessions_of(ds, part))
        assert {e.user_id for e in examples} <= part
        assert any(e.label for e in examples)  # stratified: buyers in every part
    assert split == split_by_user(ds)
    assert split != split_by_user(ds, seed=99)


def test_diginetica_folder(tmp_path: Path) -> None:
    (tmp_path / "product-categories.csv").write_text("itemId;categoryId\n10;7\n11;8\n")
    (tmp_path / "train-item-views_x.csv").write_text(
        "session_id;user_id;item_id;timeframe;eventdate\n"
        "1;NA;10;500;2016-05-09\n1;NA;11;100;2016-05-09\n2;42;10;0;2016-05-10\n"
    )
    (tmp_path / "train-purchases_x.csv").write_text(
        "sessionId;userId;timeframe;eventdate;ordernumber;itemId\n1;NA;900;2016-05-09;5;10\n"
    )
    ds = load_dataset(tmp_path)
    assert ds.source == "diginetica"
    # Same conventions as the live stream (stream_app.ingest.sources): "dg-" session ids, anonymous
    # users as "", each anonymous session counted as its own user when splitting.
    session = ds.sessions["dg-1"]
    assert [e.product_id for e in session] == ["11", "10", "10"]
    assert session[-1].event_type == "purchase"
    assert session[0].user_id == ""
    assert user_key(session[0]) == "anon:dg-1"
    assert session[0].category_id == "8"
    examples = build_examples(ds)
    assert [(e.session_id, e.prefix_len, e.label) for e in examples] == [
        ("dg-1", 1, 1), ("dg-1", 2, 1), ("dg-2", 1, 0)]  # fmt: skip


def test_replay_ends_where_the_live_window_ends(rees46_csv: Path) -> None:
    # The last prefix snapshot equals what the worker's rules give for the whole session.
    ds = load_dataset(rees46_csv)
    events = ds.sessions["nobuy"]
    rules = WindowRules(max_events=1)
    assert snapshots_for_session(events, rules)[-1] == expected_window("nobuy", events, rules)


def test_oof_rates_never_count_the_rows_own_user() -> None:
    from model_export.data import group_sessions, session_examples
    from model_export.rates import count_rates, oof_rate_matrix
    from model_export.tables import TextVocab, build_table
    from stream_app.ingest.events import Event
    from stream_app.scoring.inputs import InputSpec

    def event(i: int, user: str, kind: str) -> Event:
        return Event(f"{user}{i}", 1_000_000 + i * 1000, kind, f"s-{user}", user, product_id="X")

    events = [event(0, "a", "view"), event(1, "a", "cart"), event(2, "a", "purchase"),
              event(0, "b", "view"), event(1, "b", "view")]  # fmt: skip
    sessions = group_sessions(events)
    examples = session_examples(sessions["s-a"], WindowRules())
    rows = build_table("t", examples, InputSpec(), TextVocab())
    keyed = {f"t:{sid}": evs for sid, evs in sessions.items()}
    users = {f"t:{sid}": f"t:{evs[0].user_id}" for sid, evs in sessions.items()}
    oof = oof_rate_matrix(rows, keyed, users, n_folds=2, seed=0)
    only_b = count_rates([sessions["s-b"]])
    expected = only_b.features_for_keys("X", "", ("X",))
    np.testing.assert_allclose(oof[0], expected, rtol=1e-6)  # a's own purchase is not counted
    assert count_rates(sessions.values()).product["X"] == (2, 1, 1)
