"""The shared session → model encoding: deterministic, aligned names, event times only."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import pytest

from model_export.data import snapshots_for_session
from stream_app.ingest.events import Event
from stream_app.sessions.features import (
    FEATURE_NAMES,
    behaviour_features,
    behaviour_matrix,
    event_text,
    price_bucket,
    session_text,
)
from stream_app.sessions.windows import WindowRules, WindowSnapshot

T0 = 1_569_888_000_000  # 2019-10-01T00:00:00Z


def ev(i: int, kind: str, seconds: int, price: float | None = 100.0, **kw: str) -> Event:
    fields = {"product_id": f"p{i % 3}", "category_id": f"c{i % 2}", **kw}
    return Event(event_id=f"e{i}", event_time_ms=T0 + seconds * 1000, event_type=kind,
                 user_session="s1", user_id="u1", price=price, **fields)  # fmt: skip


def snapshot(events: list[Event], max_events: int = 50) -> WindowSnapshot:
    return snapshots_for_session(events, WindowRules(max_events=max_events))[-1]


SESSION = [
    ev(0, "view", 0, 250.0, category_code="electronics.smartphone", brand="samsung"),
    ev(1, "view", 30, 40.0, category_code="apparel.shoes", brand=""),
    ev(2, "cart", 90, 250.0, category_code="electronics.smartphone", brand="samsung"),
    ev(3, "remove_from_cart", 100, 250.0),
    ev(4, "view", 160, None, category_code="kids.toys"),
]


def feature(snap: WindowSnapshot, name: str) -> float:
    return float(behaviour_features(snap)[FEATURE_NAMES.index(name)])


def test_vector_matches_names_and_is_float32() -> None:
    vec = behaviour_features(snapshot(SESSION))
    assert vec.shape == (len(FEATURE_NAMES),)
    assert vec.dtype == np.float32
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert np.all(np.isfinite(vec))


def test_deterministic_and_batch_equals_rows() -> None:
    snap = snapshot(SESSION)
    np.testing.assert_array_equal(behaviour_features(snap), behaviour_features(snap))
    matrix = behaviour_matrix([snap, snapshot(SESSION[:2])])
    np.testing.assert_array_equal(matrix[1], behaviour_features(snapshot(SESSION[:2])))
    assert behaviour_matrix([]).shape == (0, len(FEATURE_NAMES))


def test_uses_event_times_only_not_the_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    before = behaviour_features(snapshot(SESSION))
    text = session_text(snapshot(SESSION))

    def no_clock() -> float:
        raise AssertionError("features must not read the wall clock")

    monkeypatch.setattr(time, "time", no_clock)
    monkeypatch.setattr(time, "time_ns", no_clock)
    # Shifting the whole session by ten days changes nothing: only time differences count.
    shifted = [replace(e, event_time_ms=e.event_time_ms + 10 * 86_400_000) for e in SESSION]
    np.testing.assert_array_equal(behaviour_features(snapshot(shifted)), before)
    assert session_text(snapshot(shifted)) == text


def test_counts_timing_and_cart_values() -> None:
    snap = snapshot(SESSION)
    assert feature(snap, "log_n_events") == pytest.approx(math.log1p(5))
    assert feature(snap, "log_n_view") == pytest.approx(math.log1p(3))
    assert feature(snap, "log_n_cart") == pytest.approx(math.log1p(1))
    assert feature(snap, "has_cart") == 1.0
    assert feature(snap, "log_cart_value") == 0.0  # 250 added then removed
    assert feature(snap, "log_duration_s") == pytest.approx(math.log1p(160), rel=1e-6)
    assert feature(snap, "log_since_prev_event_s") == pytest.approx(math.log1p(60), rel=1e-6)
    assert feature(snap, "log_max_price") == pytest.approx(math.log1p(250), rel=1e-6)
    # The newest event has no price: "last price" is the newest known one.
    assert feature(snap, "log_last_price") == pytest.approx(math.log1p(250), rel=1e-6)
    assert feature(snapshot(SESSION[:3]), "last_is_cart") == 1.0


def test_single_event_session_is_finite() -> None:
    snap = snapshot(SESSION[:1])
    assert feature(snap, "log_since_prev_event_s") == 0.0
    assert feature(snap, "log_duration_s") == 0.0
    assert np.all(np.isfinite(behaviour_features(WindowSnapshot("s", "u"))))


def test_session_text_is_newest_first_and_bounded() -> None:
    text = session_text(snapshot(SESSION), max_events=3)
    expected = [
        "view kids toys",
        "remove from cart $200-500",
        "cart electronics smartphone samsung $200-500",
    ]
    assert text.split(" | ") == expected
    assert session_text(snapshot(SESSION), max_events=0) == ""
    assert session_text(WindowSnapshot("s", "u")) == ""


def test_session_text_uses_the_window_only() -> None:
    # A 2-event window: the aggregates still count all 5 events, the text shows 2.
    snap = snapshot(SESSION, max_events=2)
    assert session_text(snap, max_events=8).count("|") == 1
    assert feature(snap, "log_n_events") == pytest.approx(math.log1p(5))


@pytest.mark.parametrize(
    ("price", "bucket"),
    [(None, ""), (-1.0, ""), (float("nan"), ""), (0.0, "$0-10"), (9.99, "$0-10"),
     (10.0, "$10-50"), (499.0, "$200-500"), (1000.0, "$1000+")],
)  # fmt: skip
def test_price_buckets(price: float | None, bucket: str) -> None:
    assert price_bucket(price) == bucket


def test_event_text_includes_query() -> None:
    search = Event("q1", T0, "search", "s1", query="red running shoes")
    assert event_text(search) == "search red running shoes"


# ---------------------------------------------------------------------------- item sequence


def test_item_text_prefers_the_title_then_category_and_brand_then_the_query() -> None:
    from stream_app.sessions.features import item_text

    named = ev(0, "view", 0, product_name="  Google Men's  Tee ", category_code="a.b", brand="g")
    assert item_text(named) == "google men's tee"
    assert item_text(ev(1, "view", 0, category_code="electronics.smart_phone", brand="Apple")) == (
        "electronics smart phone apple"
    )
    ga = ev(2, "cart", 0, category_code="Home/Apparel/Men's-T-Shirts/")
    assert item_text(ga) == "home apparel men's t shirts"
    search = ev(3, "search", 0, query="Red Shoes", product_name="ignored")
    assert item_text(search) == "red shoes"


def test_event_numerics_gaps_price_repeats_and_position() -> None:
    from stream_app.sessions.features import EVENT_NUMERIC_NAMES, event_numerics

    events = (ev(0, "view", 0, 100.0), ev(3, "view", 10, 400.0), ev(6, "cart", 70, None))
    values = event_numerics(events)  # products p0, p0, p0; median price 250
    assert values.shape == (3, len(EVENT_NUMERIC_NAMES))
    np.testing.assert_allclose(values[:, 0], np.log1p([0, 10, 60]), rtol=1e-6)
    np.testing.assert_allclose(values[:, 1], [math.log(100 / 250), math.log(400 / 250), 0.0],
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(values[:, 2], np.log1p([0, 1, 2]), rtol=1e-6)
    np.testing.assert_allclose(values[:, 3], np.log1p([2, 1, 0]), rtol=1e-6)


def test_last_product_features_and_context() -> None:
    from stream_app.sessions.features import (
        LAST_PRODUCT_FEATURE_NAMES,
        context_values,
        last_product_features,
    )

    events = [ev(0, "view", 0, device="Mobile"), ev(1, "view", 30), ev(3, "cart", 90),
              ev(4, "view", 100, channel="Direct")]  # fmt: skip
    snap = snapshot(events)  # last product p1: viewed at 30 s, last event at 100 s
    values = dict(zip(LAST_PRODUCT_FEATURE_NAMES, last_product_features(snap), strict=True))
    assert values["last_product_log_views"] == pytest.approx(math.log1p(2))
    assert values["last_product_carted"] == 0.0
    assert values["last_product_log_dwell_s"] == pytest.approx(math.log1p(70))
    assert values["log_window_carted_products"] == pytest.approx(math.log1p(1))
    assert context_values(snap) == ("mobile", "direct", "")


def test_windows_are_right_aligned_with_the_newest_event_last() -> None:
    from stream_app.scoring.inputs import InputSpec, encode_windows
    from stream_app.scoring.rates import RatesTable
    from stream_app.sessions.features import EVENT_TYPE_IDS

    spec = InputSpec(max_events=4, context_vocab=(("mobile",), (), ()))
    short = snapshot([ev(0, "view", 0, product_name="a"), ev(1, "cart", 5, product_name="b")])
    long = snapshot([ev(i, "view", i, product_name=f"t{i}") for i in range(6)])
    arrays = encode_windows([short, long], spec, RatesTable())
    assert arrays.mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert arrays.event_types[0].tolist() == [0, 0, EVENT_TYPE_IDS["view"], EVENT_TYPE_IDS["cart"]]
    assert [arrays.texts[i] for i in arrays.text_index[1]] == ["t2", "t3", "t4", "t5"]
    assert arrays.features.shape == (2, len(spec.feature_names))
    assert spec.feature_names[-7:][0] == "last_product_cart_rate"


def test_rates_are_smoothed_toward_the_prior() -> None:
    from stream_app.scoring.rates import RatesTable

    table = RatesTable(prior_cart=0.1, prior_buy=0.02, strength=20.0,
                       product={"hot": (180, 90, 45)})  # fmt: skip
    cart, buy, _logn = table.rates(table.product["hot"])
    assert 1 / (1 + math.exp(-cart)) == pytest.approx((90 + 2) / 200)
    assert 1 / (1 + math.exp(-buy)) == pytest.approx((45 + 0.4) / 200)
    unseen = table.rates(None)
    assert 1 / (1 + math.exp(-unseen[1])) == pytest.approx(0.02)
    assert unseen[2] == 0.0
