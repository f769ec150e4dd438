"""Replay pacing and rewriting, driven by a fake clock (no sleeping, no broker)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import orjson
import pytest

from stream_app.events import parse_event
from stream_app.replay.timing import (
    OutgoingMessage,
    RawMessage,
    Schedule,
    TimingConfig,
    inspect,
    rewrite,
)

WALL_START_MS = 1_764_000_000_000  # 2025-11-24T16:00:00Z
T0 = 1_570_000_000_000  # recorded times: October 2019


class FakeClock:
    """Monotonic seconds that only ``sleep`` advances; wall time follows it."""

    def __init__(self) -> None:
        self.now_s = 100.0
        self.sleeps: list[float] = []

    def wall_ms(self) -> int:
        return WALL_START_MS + round((self.now_s - 100.0) * 1000)

    def monotonic(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.sleeps.append(seconds)
            self.now_s += seconds


def event(session: str, offset_ms: int, **extra: object) -> RawMessage:
    fields = {
        "event_time": T0 + offset_ms,
        "event_type": "view",
        "product_id": "p1",
        "user_session": session,
        **extra,
    }
    return session.encode(), orjson.dumps(fields)


LOG: list[RawMessage] = [
    event("s1", 0),
    event("s2", 1_000),
    (None, b'{"event_type": "view", broken'),
    event("s1", 3_000, event_id="e-3"),
    event("s2", 2_500),  # recorded out of order
]


def source(log: Iterable[RawMessage] = LOG) -> Callable[[], Iterable[RawMessage]]:
    return lambda: list(log)


def run(
    config: TimingConfig, log: Iterable[RawMessage] = LOG
) -> tuple[list[OutgoingMessage], FakeClock]:
    clock = FakeClock()
    sent = []
    for message in Schedule(source(log), config, clock):
        assert message.due_s <= clock.monotonic() - 100.0 + 1e-9  # never sent early
        sent.append(message)
    return sent, clock


def fields(message: OutgoingMessage) -> dict[str, object]:
    return dict(orjson.loads(message.value))


def test_speed_divides_recorded_gaps() -> None:
    sent, clock = run(TimingConfig(speed=2.0, times="keep"))
    # gaps 0, 1 s, (malformed: no time), 3 s, 2.5 s -> /2, never earlier than the previous
    assert [m.due_s for m in sent] == [0.0, 0.5, 0.5, 1.5, 1.5]
    assert clock.now_s == pytest.approx(101.5)


def test_max_speed_never_sleeps() -> None:
    sent, clock = run(TimingConfig(speed=None))
    assert len(sent) == len(LOG)
    assert clock.sleeps == []


def test_rate_is_fixed_whatever_the_gaps() -> None:
    sent, _ = run(TimingConfig(rate=4.0))
    assert [m.due_s for m in sent] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_duration_stops_sending() -> None:
    sent, _ = run(TimingConfig(rate=4.0, duration_s=0.6))
    assert len(sent) == 3  # due 0, 0.25, 0.5; the one due at 0.75 is past the duration


def test_limit_stops_sending() -> None:
    sent, _ = run(TimingConfig(speed=None, limit=2))
    assert [m.index for m in sent] == [0, 1]


def test_malformed_lines_are_sent_verbatim() -> None:
    sent, _ = run(TimingConfig(speed=None, run_tag="#rX", loop=True, limit=10))
    broken = [m for m in sent if m.value == LOG[2][1]]
    assert len(broken) == 2  # once per pass, byte for byte
    assert all(m.key is None and m.event_time_ms is None for m in broken)


def test_duplicate_keys_are_not_repaired_by_rewriting() -> None:
    raw = b'{"event_time": 1570000000000, "event_type": "view", "product_id": "p",'
    raw += b' "user_session": "a", "user_session": "b"}'
    assert inspect(b"a", raw).fields is None
    assert rewrite(inspect(b"a", raw), "#L2", 5) == (b"a", raw)


def test_shift_keeps_gaps_and_starts_now() -> None:
    sent, _ = run(TimingConfig(speed=1.0))
    times = [m.event_time_ms for m in sent]
    offsets = [0, 1000, None, 3000, 2500]
    assert times == [None if o is None else WALL_START_MS + o for o in offsets]
    assert [fields(m)["event_time"] for m in sent if m.event_time_ms] == [t for t in times if t]


def test_shift_at_max_speed_preserves_recorded_gaps() -> None:
    sent, _ = run(TimingConfig(speed=None))
    assert fields(sent[3])["event_time"] == WALL_START_MS + 3000


def test_send_mode_stamps_send_time() -> None:
    sent, _ = run(TimingConfig(rate=2.0, times="send"))
    assert fields(sent[1])["event_time"] == WALL_START_MS + 500


def test_keep_times_sends_recorded_messages_unchanged() -> None:
    sent, _ = run(TimingConfig(speed=None, times="keep"))
    assert [(m.key, m.value) for m in sent] == LOG


def test_loop_makes_sessions_and_event_ids_unique_per_pass() -> None:
    sent, _ = run(TimingConfig(speed=None, loop=True, limit=12, times="keep"))
    assert [m.loop for m in sent] == [1] * 5 + [2] * 5 + [3] * 2
    second = [fields(m) for m in sent[5:10] if m.event_time_ms is None and m.key]
    assert {f["user_session"] for f in second} == {"s1#L2", "s2#L2"}
    assert [f["event_id"] for f in second if "event_id" in f] == ["e-3#L2"]
    assert sent[5].key == b"s1#L2"
    # Recorded times kept, so the pass shows up only in the ids.
    assert fields(sent[5])["event_time"] == T0


def test_loop_passes_continue_the_schedule() -> None:
    sent, _ = run(TimingConfig(speed=1.0, loop=True, limit=7, times="keep"))
    assert [m.due_s for m in sent[5:]] == [3.0, 4.0]


def test_loop_shifts_each_pass_to_its_own_now() -> None:
    sent, _ = run(TimingConfig(speed=1.0, loop=True, limit=7))
    assert fields(sent[5])["event_time"] == WALL_START_MS + 3000
    assert fields(sent[6])["event_time"] == WALL_START_MS + 4000


def test_run_tag_suffixes_every_pass() -> None:
    sent, _ = run(TimingConfig(speed=None, loop=True, limit=6, run_tag="#r1"))
    assert sent[0].key == b"s1#r1"
    assert sent[5].key == b"s1#r1#L2"


def test_rewritten_events_still_parse() -> None:
    sent, _ = run(TimingConfig(speed=None, loop=True, limit=10, run_tag="#r1"))
    for message in sent:
        if message.event_time_ms is not None:
            parsed = parse_event(message.value, now_ms=WALL_START_MS)
            assert parsed.user_session.encode() == message.key
            assert parsed.event_time_ms == message.event_time_ms


def test_empty_log_with_loop_ends() -> None:
    sent, _ = run(TimingConfig(loop=True), log=[])
    assert sent == []


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="speed"):
        TimingConfig(speed=0)
    with pytest.raises(ValueError, match="rate"):
        TimingConfig(rate=-1)
    with pytest.raises(ValueError, match="limit"):
        TimingConfig(limit=0)
    with pytest.raises(ValueError, match="duration"):
        TimingConfig(duration_s=0)
