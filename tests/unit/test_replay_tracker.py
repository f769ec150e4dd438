"""Matching sent events to scores and dead letters, with the worker's own rules."""

from __future__ import annotations

import dataclasses
import math
from itertools import count
from pathlib import Path

import numpy as np
import orjson
import pytest
from pydantic import SecretStr

from stream_app.core.config import KafkaSettings
from stream_app.ingest.dlq import dead_letter_record
from stream_app.replay.producer import Delivered, kafka_client_config, producer_config
from stream_app.replay.tracker import Latencies, ScoreTracker, percentile
from stream_app.scoring.scores import ScoreRecord
from stream_app.sessions.windows import WindowRules

START_MS = 1_764_000_000_000
GAP_MS = 60_000
_offsets = count()


def sent(session: str, time_ms: int, produced_ms: int, **extra: object) -> Delivered:
    fields = {
        "event_time": time_ms,
        "event_type": "view",
        "product_id": "p1",
        "user_session": session,
        **extra,
    }
    return raw_sent(orjson.dumps(fields), produced_ms, key=session.encode())


def raw_sent(value: bytes, produced_ms: int, key: bytes | None = None) -> Delivered:
    return Delivered(key, value, produced_ms, partition=0, offset=next(_offsets))


def score(
    session: str, session_events: int, value: float = 0.5, ingest_ms: int = START_MS
) -> ScoreRecord:
    return ScoreRecord(
        session_id=session,
        user_id="u",
        score=value,
        model_version="test",
        window_events=session_events,
        session_events=session_events,
        last_event_time="",
        last_event_time_ms=0,
        scored_at=ingest_ms,
        ingest_ms=ingest_ms,
        oldest_ingest_ms=ingest_ms,
    )


@pytest.fixture
def tracker() -> ScoreTracker:
    return ScoreTracker(rules=WindowRules(session_gap_ms=GAP_MS), start_ms=START_MS)


def test_each_event_is_covered_by_the_first_score_that_counts_it(tracker: ScoreTracker) -> None:
    for i in range(3):
        tracker.record_sent(
            sent("s", START_MS + i, produced_ms=START_MS + 10 * i, event_id=f"e{i}")
        )
    tracker.record_score(score("s", 1), received_ms=START_MS + 50)
    assert not tracker.done()
    tracker.record_score(score("s", 3), received_ms=START_MS + 100)
    assert tracker.done()
    assert [lat for _, lat in tracker.latencies] == [50, 90, 80]
    summary = tracker.summary()
    assert (summary.sessions, summary.sessions_scored, summary.events_valid) == (1, 1, 3)
    assert summary.latency.max == 90
    # scored_at of the test scores is START_MS: the worker's share is negative here
    assert tracker.to_scored_ms == [0, -10, -20]


def test_duplicate_events_and_redelivered_scores_count_once(tracker: ScoreTracker) -> None:
    tracker.record_sent(sent("s", START_MS, START_MS, event_id="a"))
    tracker.record_sent(sent("s", START_MS + 5, START_MS + 5, event_id="a"))  # same id
    tracker.record_sent(sent("s", START_MS + 9, START_MS + 9, event_id="b"))
    for received in (START_MS + 20, START_MS + 30):  # at-least-once: the same score twice
        tracker.record_score(score("s", 2), received_ms=received)
    summary = tracker.summary()
    assert (summary.events_valid, summary.duplicates, summary.dlq_expected) == (2, 1, 0)
    assert summary.sessions_scored == 1
    assert summary.scores_received == 2
    assert [lat for _, lat in tracker.latencies] == [20, 11]


def test_late_events_are_excluded_and_expected_in_the_dlq(tracker: ScoreTracker) -> None:
    tracker.record_sent(sent("s", START_MS, START_MS))
    tracker.record_sent(sent("s", START_MS - GAP_MS - 1, START_MS + 1))  # session had ended
    tracker.record_sent(sent("s", START_MS - GAP_MS, START_MS + 2))  # exactly at the gap: ok
    tracker.record_score(score("s", 2), received_ms=START_MS + 40)
    summary = tracker.summary()
    assert (summary.events_valid, summary.late, summary.dlq_expected) == (2, 1, 1)
    assert tracker.done()
    assert summary.sessions_scored == 1


def test_malformed_lines_are_invalid_and_expected_in_the_dlq(tracker: ScoreTracker) -> None:
    tracker.record_sent(raw_sent(b"{not json", START_MS))
    tracker.record_sent(sent("s", START_MS, START_MS, price=-3))
    summary = tracker.summary()
    assert summary.invalid_reasons == {"not_json": 1, "bad_price": 1}
    assert (summary.events_sent, summary.events_valid, summary.dlq_expected) == (2, 0, 2)
    assert summary.sessions == 0
    assert tracker.done()  # nothing valid to wait for


def test_event_times_are_judged_at_produce_time(tracker: ScoreTracker) -> None:
    too_far = START_MS + 25 * 3600 * 1000
    tracker.record_sent(sent("s", too_far, START_MS))
    assert tracker.summary().invalid_reasons == {"time_in_future": 1}


def test_a_score_may_arrive_before_the_delivery_report(tracker: ScoreTracker) -> None:
    tracker.record_score(score("s", 2), received_ms=START_MS + 30)
    tracker.record_sent(sent("s", START_MS, START_MS, event_id="a"))
    tracker.record_sent(sent("s", START_MS + 1, START_MS + 10, event_id="b"))
    assert tracker.done()
    assert [lat for _, lat in tracker.latencies] == [30, 20]


def test_sessions_scored_needs_the_exact_count(tracker: ScoreTracker) -> None:
    tracker.record_sent(sent("a", START_MS, START_MS))
    tracker.record_sent(sent("b", START_MS, START_MS))
    tracker.record_sent(sent("c", START_MS, START_MS))
    tracker.record_score(score("a", 1), START_MS + 1)
    tracker.record_score(score("b", 4), START_MS + 1)  # events we did not send: not 'scored'
    assert tracker.sessions_scored() == 1
    assert tracker.sessions_seen() == 3
    assert not tracker.done()  # c has no score


def test_scores_from_an_earlier_run_are_ignored(tracker: ScoreTracker) -> None:
    tracker.record_sent(sent("s", START_MS, START_MS))
    tracker.record_score(score("s", 1, ingest_ms=START_MS - 1), START_MS + 5)
    assert not tracker.done()
    assert tracker.summary().scores_stale == 1


def test_dead_letters_match_our_offsets_only(tracker: ScoreTracker) -> None:
    bad = raw_sent(b"oops", START_MS)
    good = sent("s", START_MS, START_MS + 1)
    tracker.record_sent(bad)
    tracker.record_sent(good)

    def letter(offset: int, topic: str = "user-events", reason: str = "not_json") -> bytes:
        return dead_letter_record(b"oops", reason, "", topic, 0, offset, None, START_MS)

    assert not tracker.dlq_done()
    tracker.record_dead_letter(letter(bad.offset), START_MS + 5)
    tracker.record_dead_letter(letter(bad.offset), START_MS + 6)  # redelivered: once
    assert tracker.dlq_done()
    tracker.record_dead_letter(letter(bad.offset, topic="other"), START_MS + 5)
    tracker.record_dead_letter(b"not a dead letter", START_MS + 5)
    tracker.record_dead_letter(letter(bad.offset - 1), START_MS + 5)  # before our first
    tracker.record_dead_letter(letter(10**9), START_MS - 1)  # before the run: ignored
    tracker.record_dead_letter(letter(good.offset, reason="store"), START_MS + 5)
    summary = tracker.summary()
    assert (summary.dlq, summary.dlq_expected, summary.dlq_other) == (2, 1, 3)
    assert summary.dlq_unexpected == 1  # the valid event the worker rejected anyway
    assert summary.dlq_reasons == {"not_json": 1, "store": 1}


def test_top_sessions_by_latest_score(tracker: ScoreTracker) -> None:
    for name in ("a", "b", "c"):
        tracker.record_sent(sent(name, START_MS, START_MS))
    tracker.record_score(score("a", 1, 0.2), START_MS + 1)
    tracker.record_score(score("b", 1, 0.9), START_MS + 1)
    tracker.record_score(score("c", 1, 0.5), START_MS + 1)
    tracker.record_score(score("a", 1, 0.95), START_MS + 2)  # newer score for a
    top = tracker.top_sessions(2)
    assert [(v.session_id, v.score) for v in top] == [("a", 0.95), ("b", 0.9)]
    assert top[0].expected_events == 1


def test_sessions_that_bought_are_counted_and_left_out_of_the_top(
    tracker: ScoreTracker,
) -> None:
    for name in ("buyer", "browser"):
        tracker.record_sent(sent(name, START_MS, START_MS))
    tracker.record_sent(sent("buyer", START_MS + 1, START_MS + 1, event_type="purchase"))
    tracker.record_score(score("browser", 1, 0.3), START_MS + 2)
    tracker.record_score(score("buyer", 1, 0.6), START_MS + 2)
    assert [v.session_id for v in tracker.top_sessions(5)] == ["buyer", "browser"]
    bought = dataclasses.replace(score("buyer", 2, 1.0), purchased=True)
    tracker.record_score(bought, START_MS + 3)
    assert [v.session_id for v in tracker.top_sessions(5)] == ["browser"]
    assert tracker.summary().sessions_purchased == 1
    assert tracker.summary().sessions_scored == 2


def test_session_alias_maps_sent_ids_to_scored_ids() -> None:
    tracker = ScoreTracker(start_ms=START_MS, session_alias=lambda s: f"p-{s}")
    tracker.record_sent(sent("s", START_MS, START_MS))
    tracker.record_score(score("p-s", 1), START_MS + 7)
    assert tracker.done()
    assert tracker.sessions_scored() == 1


@pytest.mark.parametrize("q", [0, 1, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    values = sorted([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 100.0])
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentiles_of_edge_samples() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([4.0], 99) == 4.0
    lat = Latencies.of(list(range(1, 101)))
    assert (lat.count, lat.p50, lat.max) == (100, 50.5, 100)
    assert lat.p99 == pytest.approx(99.01)


def test_client_config_carries_security_settings(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    settings = KafkaSettings(
        bootstrap_servers="broker:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="replay",
        sasl_password=SecretStr("s3cret"),
        ssl_cafile=ca,
    )
    config = kafka_client_config(settings)
    assert config["bootstrap.servers"] == "broker:9093"
    assert config["security.protocol"].upper() == "SASL_SSL"
    assert (config["sasl.mechanism"], config["sasl.username"]) == ("SCRAM-SHA-512", "replay")
    assert config["sasl.password"] == "s3cret"
    assert config["ssl.ca.location"] == str(ca)
    producer = producer_config(settings, compression="none", idempotent=False)
    assert (producer["acks"], producer["compression.type"]) == ("all", "none")
    assert producer["enable.idempotence"] is False
    assert producer["sasl.username"] == "replay"


def test_a_session_idle_for_a_gap_starts_afresh_like_the_store(tracker: ScoreTracker) -> None:
    tracker.record_sent(sent("s", START_MS, START_MS, event_id="a"))
    tracker.record_score(score("s", 1), START_MS + 10)
    # One gap of processing time later the store has forgotten the session: the same id is
    # accepted again (not a duplicate) and the count restarts at 1.
    later = START_MS + GAP_MS
    tracker.record_sent(sent("s", START_MS - 5 * GAP_MS, later, event_id="a"))
    assert (tracker.events_valid, tracker.summary().duplicates) == (2, 0)
    assert not tracker.done()
    tracker.record_score(score("s", 1), later + 20)
    assert tracker.done()
    assert tracker.sessions_scored() == 1
    assert [lat for _, lat in tracker.latencies] == [10, 20]
