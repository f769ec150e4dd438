"""The replay producer and score/DLQ consumer against a real broker.

No worker runs here: ``FakeWorker`` reads the events topic and answers with score and
dead-letter records built with the real pure rules (``parse_event``, ``apply_events``), so the
matching is exercised end to end through Kafka without the model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition

from stream_app.core.config import KafkaSettings
from stream_app.core.errors import InvalidEvent
from stream_app.core.topics import read_all
from stream_app.ingest.dlq import dead_letter_record
from stream_app.ingest.events import parse_event
from stream_app.replay.consumer import prepare_topics
from stream_app.replay.runner import ReplayConfig, run_replay
from stream_app.replay.timing import TimingConfig
from stream_app.scoring.scores import ScoreRecord
from stream_app.sessions.windows import LATE_REASON, WindowRules, WindowState, apply_events

pytestmark = pytest.mark.integration

RULES = WindowRules(session_gap_ms=60_000)
N_SESSIONS = 6


def write_log(path: Path) -> Path:
    """N_SESSIONS x 3 events, one repeated event id, one late event, two malformed lines."""
    t0 = 1_570_000_000_000
    lines = []
    for s in range(N_SESSIONS):
        for i in range(3):
            line = {"event_id": f"s{s}-e{i}", "event_time": t0 + 1000 * i, "event_type": "view"}
            lines.append({**line, "product_id": f"p{i}", "user_session": f"s{s}"})
    lines.append(dict(lines[0]))  # duplicate of s0-e0
    late = {**lines[1], "event_id": "s0-late", "event_time": t0 - 10 * 60_000}
    lines.append(late)
    raw = [orjson.dumps(line) for line in lines] + [b'{"event_type": "view"', b"[1, 2]"]
    path.write_bytes(b"\n".join(raw) + b"\n")
    return path


class FakeWorker(threading.Thread):
    """Scores every accepted event at once; dead-letters invalid and late ones."""

    def __init__(self, settings: KafkaSettings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.stop = threading.Event()
        self.states: dict[str, WindowState] = {}
        self.timestamps: list[tuple[int, int]] = []  # (record timestamp type, ms)
        bootstrap = settings.bootstrap_servers
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "fake", "enable.auto.commit": False}
        )
        topic = settings.events_topic
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])

    def run(self) -> None:
        while not self.stop.is_set():
            for message in self.consumer.consume(100, timeout=0.1):
                if message.error() is None:
                    self.handle(message)
            self.producer.poll(0)
        self.producer.flush(10)
        self.consumer.close()

    def handle(self, message: Message) -> None:
        kind, ingest_ms = message.timestamp()
        self.timestamps.append((kind, ingest_ms))
        raw = message.value() or b""
        try:
            event = parse_event(raw, now_ms=int(time.time() * 1000))
        except InvalidEvent as exc:
            self.dead_letter(message, raw, exc.reason)
            return
        state = self.states.get(event.user_session) or WindowState.empty(event.user_session)
        outcome = apply_events(state, [event], RULES)
        assert outcome.state is not None
        self.states[event.user_session] = outcome.state
        if outcome.late:
            self.dead_letter(message, raw, LATE_REASON)
            return
        n = outcome.state.tallies.n_events  # duplicates re-publish (at-least-once)
        record = ScoreRecord(event.user_session, "", 0.5, "fake", n, n, "", 0,
                             int(time.time() * 1000), ingest_ms, ingest_ms)  # fmt: skip
        self.producer.produce(self.settings.scores_topic, record.to_json(), record.session_id)

    def dead_letter(self, message: Message, raw: bytes, reason: str) -> None:
        letter = dead_letter_record(
            raw, reason, "", message.topic() or "", message.partition() or 0,
            message.offset() or 0, message.key(), int(time.time() * 1000),
        )  # fmt: skip
        self.producer.produce(self.settings.dlq_topic, letter)


@pytest.fixture
def kafka(kafka_bootstrap: str, unique_name: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        events_topic=f"{unique_name}-ev",
        scores_topic=f"{unique_name}-sc",
        dlq_topic=f"{unique_name}-dlq",
        partitions=2,
    )


@pytest.fixture
def worker(kafka: KafkaSettings) -> Iterator[FakeWorker]:
    prepare_topics(kafka)
    fake = FakeWorker(kafka)
    fake.start()
    yield fake
    fake.stop.set()
    fake.join(timeout=20)


def replay_config(kafka: KafkaSettings, log: Path, **timing: object) -> ReplayConfig:
    return ReplayConfig(
        source=log,
        kafka=kafka,
        timing=TimingConfig(**timing),  # type: ignore[arg-type]
        rules=RULES,
        drain_timeout_s=30.0,
        progress_bar=False,
        progress_interval_s=0.1,
    )


@pytest.mark.timeout(120)
def test_replay_matches_scores_and_dead_letters(
    kafka: KafkaSettings, worker: FakeWorker, tmp_path: Path
) -> None:
    log = write_log(tmp_path / "log.jsonl")
    lines = len(log.read_bytes().splitlines())
    seen_top: list[int] = []
    # shift keeps the recorded 10-minute lag of the late event (compress would shrink it).
    config = replay_config(
        kafka, log, rate=100.0, loop=True, limit=2 * lines, times="shift", run_tag="#t"
    )
    # The fake worker commits nothing, so its group's lag is everything produced so far.
    config = ReplayConfig(**{**_fields(config), "lag_group": "fake", "lag_interval_s": 0.1})
    result = run_replay(
        config, on_progress=lambda p: seen_top.append(len(p.tracker.top_sessions(3)))
    )
    s = result.summary
    assert result.events_failed == 0
    assert (s.events_sent, s.events_invalid, s.duplicates, s.late) == (2 * lines, 4, 2, 2)
    assert s.events_valid == 2 * 3 * N_SESSIONS
    assert s.sessions == s.sessions_scored == 2 * N_SESSIONS  # passes did not merge
    assert result.done
    assert (s.dlq, s.dlq_expected) == (6, 6)
    assert s.dlq_reasons == {"not_json": 2, "not_object": 2, "late_event": 2}
    assert s.latency.count == s.events_valid
    assert 0 <= s.latency.p50 <= s.latency.max < 30_000
    # Records carry the produce time (CreateTime) within the run: the worker's ingest_ms.
    assert {kind for kind, _ in worker.timestamps} == {1}
    assert all(result.started_ms <= ms <= result.produce_done_ms for _, ms in worker.timestamps)
    assert max(seen_top, default=0) > 0
    assert result.lag_samples
    assert 0 < max(lag for _, lag in result.lag_samples) <= s.events_sent


@pytest.mark.timeout(120)
def test_earlier_scores_are_not_counted(
    kafka: KafkaSettings, worker: FakeWorker, tmp_path: Path
) -> None:
    log = write_log(tmp_path / "log.jsonl")
    first = run_replay(replay_config(kafka, log, speed=None, run_tag="#same"))
    assert first.done
    worker.stop.set()  # nobody answers the second run
    worker.join(timeout=20)
    config = replay_config(kafka, log, speed=None, run_tag="#same")
    second = run_replay(ReplayConfig(**{**_fields(config), "drain_timeout_s": 2.0}))
    assert not second.done
    assert second.summary.scores_received == 0
    assert second.summary.sessions_scored == 0
    assert second.summary.dlq == 0


def _fields(config: ReplayConfig) -> dict[str, object]:
    return {name: getattr(config, name) for name in ReplayConfig.__dataclass_fields__}


@pytest.mark.timeout(120)
def test_produce_only_keys_and_rewritten_times(kafka: KafkaSettings, tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.jsonl")
    config = replay_config(kafka, log, rate=200.0, times="send", run_tag="#x")
    result = run_replay(ReplayConfig(**{**_fields(config), "wait_for_scores": False}))
    lines = len(log.read_bytes().splitlines())
    assert result.summary.events_sent == lines
    assert result.produce_done_ms - result.started_ms >= (lines - 1) / 200 * 1000 * 0.9
    records = read_all(kafka.bootstrap_servers, kafka.events_topic, expected=lines)
    assert len(records) == lines
    for record in records:
        value = record.value() or b""
        try:
            event = parse_event(value, now_ms=int(time.time() * 1000))
        except InvalidEvent:
            assert value in (b'{"event_type": "view"', b"[1, 2]")
            continue
        assert record.key() == event.user_session.encode()
        assert event.user_session.endswith("#x")
        # --times send: the event time is the send time, which is the record timestamp
        assert abs(event.event_time_ms - record.timestamp()[1]) < 50


@pytest.mark.timeout(120)
def test_cli_writes_report_and_plot_and_checks_the_slo(
    kafka: KafkaSettings, worker: FakeWorker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from stream_app.replay.runner import add_replay_arguments, main_replay

    for name in ("events_topic", "scores_topic", "dlq_topic"):
        monkeypatch.setenv(f"KAFKA_{name.upper()}", getattr(kafka, name))
    monkeypatch.setenv("WINDOW_SESSION_GAP_S", str(RULES.session_gap_ms // 1000))
    parser = argparse.ArgumentParser()
    add_replay_arguments(parser)
    log = write_log(tmp_path / "log.jsonl")
    report, plot = tmp_path / "out" / "report.json", tmp_path / "out" / "replay.png"
    argv = [str(log), "--bootstrap-servers", kafka.bootstrap_servers, "--speed", "max",
            "--report-json", str(report), "--plot", str(plot), "--no-progress",
            "--drain-timeout", "30"]  # fmt: skip
    assert main_replay(parser.parse_args([*argv, "--slo-p99-ms", "30000"])) == 0
    data = orjson.loads(report.read_bytes())
    assert data["sessions_scored"] == data["sessions"] == N_SESSIONS
    assert data["latency_ms_p99"] is not None
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # An impossible objective fails the run (exit 1) but still reports.
    assert main_replay(parser.parse_args([*argv, "--slo-p99-ms", "0.0001"])) == 1
