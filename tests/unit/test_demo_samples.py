"""The bundled demo samples: readable by the replay, valid to the worker, and (ga_merch) made
of complete sessions with carts and purchases, which the demo and the campaign triggers need."""

from __future__ import annotations

import csv
import gzip
from collections import Counter, defaultdict

import pytest

from stream_app.ingest.events import Event, parse_event
from stream_app.ingest.sources import iter_messages
from stream_app.local.demo import DEFAULT_SAMPLE, SAMPLES, bundled_sample
from tests.shared_data import SHARED_GA_MERCH


def sample_events(name: str) -> list[Event]:
    events = []
    for key, value in iter_messages(bundled_sample(name)):
        event = parse_event(value, now_ms=1_800_000_000_000)  # every row valid
        assert key == event.user_session.encode()
        events.append(event)
    return events


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_row_of_each_sample_is_a_valid_event(name: str) -> None:
    assert len(sample_events(name)) >= 2_000


def test_ga_merch_is_the_default_with_carts_purchases_text_and_context() -> None:
    assert DEFAULT_SAMPLE == "ga_merch"
    events = sample_events("ga_merch")
    kinds: dict[str, set[str]] = defaultdict(set)
    for event in events:
        kinds[event.user_session].add(event.event_type)
    assert sum("purchase" in k for k in kinds.values()) >= 40
    assert sum("cart" in k for k in kinds.values()) >= 150
    products = [e for e in events if e.product_id]
    assert all(e.product_name for e in products)
    assert all(e.device and e.channel for e in events)
    assert any(e.query for e in events if e.event_type == "search")


def test_ga_merch_sessions_are_in_time_order_so_replays_keep_them() -> None:
    last: dict[str, int] = {}
    for event in sample_events("ga_merch"):
        assert event.event_time_ms >= last.get(event.user_session, 0)
        last[event.user_session] = event.event_time_ms


@pytest.mark.skipif(not SHARED_GA_MERCH.exists(), reason="needs ../shared/data/ga_merch")
def test_ga_merch_sessions_are_complete() -> None:
    in_sample = Counter(e.user_session for e in sample_events("ga_merch"))
    with gzip.open(SHARED_GA_MERCH, "rt", newline="") as handle:
        in_log = Counter(
            row["user_session"]
            for row in csv.DictReader(handle)
            if row["user_session"] in in_sample
        )
    assert in_log == in_sample
