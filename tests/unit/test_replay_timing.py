"""Replay pacing and rewriting, driven by a fake clock (no sleeping, no broker)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_app.ingest.events import parse_event
from stream_app.replay.timing import (
    UNPACED_LAG_MS,
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
    sent, _ = run(TimingConfig(speed=None, times="shift"))
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
    sent, _ = run(TimingConfig(speed=1.0, loop=True, limit=7, times="shift"))
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


# ---------------------------------------------------------------------------------------------
# --times compress (the default): live-looking times for logs of any span, at any speed

DAY_MS = 86_400_000


def send_and_check(config: TimingConfig, log: list[RawMessage]) -> list[OutgoingMessage]:
    """Run the schedule; every event time is checked against the clock the moment it is sent,
    and every rewritten event must pass the worker's own parser at that moment."""
    clock = FakeClock()
    sent = []
    for message in Schedule(source(log), config, clock):
        if message.event_time_ms is not None:
            assert message.event_time_ms <= clock.wall_ms(), "event time ahead of the send time"
            parsed = parse_event(message.value, now_ms=clock.wall_ms())
            assert parsed.event_time_ms == message.event_time_ms
        sent.append(message)
    return sent


def per_session(log: list[RawMessage], sent: list[OutgoingMessage]) -> dict[str, list]:
    """Per session, (recorded time, sent time) pairs in send order."""
    pairs: dict[str, list[tuple[int, int]]] = {}
    for (_, raw), message in zip(log, sent, strict=False):
        recorded = orjson.loads(raw)
        assert message.event_time_ms is not None
        pairs.setdefault(recorded["user_session"], []).append(
            (recorded["event_time"], message.event_time_ms)
        )
    return pairs


def days_long_log() -> list[RawMessage]:
    """Three sessions over three days, in ga_merch order (session start, then hit)."""
    return [
        event("a", 0),
        event("a", 40_000),
        event("a", 95_000),
        event("b", DAY_MS),
        event("b", DAY_MS + 1),  # a double hit 1 ms later
        event("c", 3 * DAY_MS),
    ]


def test_compress_divides_every_gap_by_the_speed() -> None:
    sent = send_and_check(TimingConfig(speed=1000.0), days_long_log())
    offsets = [0, 40, 95, DAY_MS // 1000, DAY_MS // 1000 + 1, 3 * DAY_MS // 1000]
    assert [m.event_time_ms for m in sent] == [WALL_START_MS + o for o in offsets]


def test_compress_at_max_speed_stamps_just_before_the_send_time_in_session_order() -> None:
    sent = send_and_check(TimingConfig(speed=None), days_long_log())
    times = [m.event_time_ms for m in sent]
    lagged = WALL_START_MS - UNPACED_LAG_MS
    assert times == [lagged, lagged + 1, lagged + 2, lagged, lagged + 1, lagged]


def test_compress_waits_for_the_clock_rather_than_send_the_future() -> None:
    burst = [event("bot", i) for i in range(UNPACED_LAG_MS + 50)]
    clock = FakeClock()
    sent = list(Schedule(source(burst), TimingConfig(speed=None), clock))
    assert sent[-1].event_time_ms == WALL_START_MS + 49
    assert clock.wall_ms() >= sent[-1].event_time_ms
    assert len(clock.sleeps) == 49  # one millisecond each, only past the lag


def test_the_default_rule_turns_a_months_long_log_at_max_speed_into_live_times() -> None:
    """The issue's case: shifted times of a log spanning days run days ahead at max speed."""
    log = days_long_log()
    assert TimingConfig().times == "compress"
    shifted, clock = run(TimingConfig(speed=None, times="shift"), log)
    ahead = [m for m in shifted if (m.event_time_ms or 0) > WALL_START_MS + 24 * 3_600_000]
    assert len(ahead) == 2  # shift: the days-later events are beyond the future-skew bound
    assert clock.sleeps == []  # and shift does not wait for them
    send_and_check(TimingConfig(speed=None), log)  # compress: all live


def test_equal_recorded_times_stay_equal() -> None:
    log = [event("a", 0), event("a", 500), event("a", 500), event("a", 501)]
    sent = send_and_check(TimingConfig(speed=1e6), log)
    times = [m.event_time_ms for m in sent]
    assert times[1] == times[2] < times[3]


def test_out_of_order_record_is_capped_by_the_session_newest_time() -> None:
    log = [event("a", 0), event("a", 60_000), event("a", 30_000)]
    sent = send_and_check(TimingConfig(speed=10.0), log)
    times = [m.event_time_ms for m in sent]
    assert times == [WALL_START_MS, WALL_START_MS + 6_000, WALL_START_MS + 3_000]


def test_loop_passes_compress_onto_the_continuing_schedule() -> None:
    sent = send_and_check(TimingConfig(speed=2.0, loop=True, limit=10), days_long_log())
    first, second = sent[:6], sent[6:]
    assert second[0].event_time_ms == WALL_START_MS + round(3 * DAY_MS / 2)
    assert all(m.event_time_ms is not None and m.event_time_ms >= first[-1].event_time_ms
               for m in second)  # fmt: skip


@st.composite
def recorded_logs(draw: st.DrawFn, in_order: bool = True) -> list[RawMessage]:
    """Sessions spread over weeks with gaps from 0 ms to days, interleaved at random."""
    gaps = st.one_of(st.integers(0, 3), st.integers(0, 5_000), st.integers(0, 3 * DAY_MS))
    n_sessions = draw(st.integers(1, 5))
    events: list[tuple[str, int]] = []
    for index in range(n_sessions):
        time_ms = draw(st.integers(0, 30 * DAY_MS))
        for gap in draw(st.lists(gaps, min_size=1, max_size=8)):
            time_ms += gap
            events.append((f"s{index}", time_ms))
    if in_order:  # a random interleaving that keeps each session's recorded order
        order = draw(st.permutations([session for session, _ in events]))
        queues = {s: [t for e, t in events if e == s] for s in {e for e, _ in events}}
        events = [(s, queues[s].pop(0)) for s in order]
    else:
        events = draw(st.permutations(events))
    return [event(session, time_ms) for session, time_ms in events]


def stretch(config: TimingConfig) -> float:
    """How much compress can widen a recorded gap: only speeds below 1 do."""
    speed = config.paced_speed
    return 1.0 if speed is None else max(1.0, 1 / speed)


def bound(config: TimingConfig, recorded_gap_ms: int, bumps: int) -> float:
    """The widest a paced in-order gap may become: recorded / speed, plus the bumps. Unpaced
    runs follow the send clock instead (still in order, which is what rules out late)."""
    speed = config.paced_speed
    return math.inf if speed is None else recorded_gap_ms / speed + bumps + 1


paces = st.one_of(
    st.builds(TimingConfig, speed=st.none()),
    st.builds(TimingConfig, speed=st.floats(0.01, 1e7)),
    st.builds(TimingConfig, speed=st.none(), rate=st.floats(1.0, 1e6)),
)


@given(log=recorded_logs(), config=paces)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_compress_is_never_ahead_and_keeps_each_session_order(
    log: list[RawMessage], config: TimingConfig
) -> None:
    sent = send_and_check(config, log)  # never ahead of the send clock; always parses
    for pairs in per_session(log, sent).values():
        for (recorded_a, sent_a), (recorded_b, sent_b) in itertools.pairwise(pairs):
            assert recorded_a <= recorded_b  # the strategy keeps each session in order
            if recorded_a == recorded_b:
                assert sent_a == sent_b
            else:
                assert sent_a < sent_b
            assert sent_b - sent_a <= bound(config, recorded_b - recorded_a, len(pairs))


@given(log=recorded_logs(in_order=False), config=paces)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_compress_of_a_shuffled_log_is_never_ahead_and_never_late(
    log: list[RawMessage], config: TimingConfig
) -> None:
    sent = send_and_check(config, log)
    for pairs in per_session(log, sent).values():
        newest = newest_recorded = None
        for recorded, sent_ms in pairs:
            newest = sent_ms if newest is None else max(newest, sent_ms)
            newest_recorded = (
                recorded if newest_recorded is None else max(newest_recorded, recorded)
            )
            # Whatever the log's order, an event lands no further behind the session's newest
            # time than it was recorded behind it (divided by the speed, +1 ms per bump), so
            # it is late_event only if it was late at that speed.
            assert newest - sent_ms <= stretch(config) * (newest_recorded - recorded) + len(pairs)


def test_compress_follows_a_wall_clock_stepped_back_without_stalling() -> None:
    class SteppedClock(FakeClock):
        """NTP steps the wall clock back ten minutes after the first send."""

        def wall_ms(self) -> int:
            stepped = 600_000 if self.now_s > 100.0 else 0
            return super().wall_ms() - stepped

    clock = SteppedClock()
    for message in Schedule(source(days_long_log()), TimingConfig(speed=1e5), clock):
        assert message.event_time_ms is not None
        if message.key != b"a":  # sessions begun after the step follow the new clock
            assert message.event_time_ms <= clock.wall_ms()
    # Paced by the log (3 days / 1e5 = 2.6 s), not stalled by the step; session "a" kept
    # its order over the step rather than wait ten minutes.
    assert sum(clock.sleeps) < 5
