"""When to send each recorded message, and what its event time and ids become.

Pure apart from the injected ``Clock``: tests drive it with a fake clock whose ``sleep``
advances time, so every mode is checked without waiting.

Modes (``TimingConfig``):

- ``speed=X``: the recorded gaps between events divided by X (``speed=None`` = as fast as
  possible); ``rate=N``: a fixed N messages per second, whatever the recorded gaps.
- ``duration_s``: stop after that long; ``limit``: stop after that many messages;
  ``loop``: start the log again when it ends, each pass with its own session ids.
- ``times`` (what each event's ``event_time`` becomes):

  - ``compress`` (default): the recorded gaps divided by the speed, so an event's time is
    when it is scheduled to be sent: ``replay start + (recorded - first recorded) / speed``.
    A log spanning months replays at any speed with live-looking times that are never ahead
    of the send time. Unpaced runs (``speed=None`` or a fixed ``rate``) have no speed to
    divide by: the time is then the send time minus ``UNPACED_LAG_MS``. Within a session,
    events recorded in order keep their order *strictly* (a later recorded time never gets
    an equal or earlier time, bumped by 1 ms where the division would tie them; equal
    recorded times stay equal), and should a bump reach beyond the clock the event waits
    for the clock instead (at most ``MAX_HOLD_S``: more means the wall clock was stepped
    back, and the replay goes on rather than stall). Gaps only shrink, so no event the
    worker would accept from the recorded log becomes ``late_event``. A record that comes
    out of order in the log keeps its compressed time, capped by the session's newest time.
  - ``shift``: the recorded gaps unchanged, each pass moved so its first event happens
    'now'. Live-looking only at ``speed <= 1``: faster, later events run ahead of the clock
    and the worker dead-letters those beyond its future-skew bound as ``time_in_future``
    (the tracker, judging with the same limits, expects exactly that).
  - ``send``: the send time (ties within a millisecond are ordered by event id).
  - ``keep``: the recorded times.

Only messages that are structurally events are rewritten. Anything else (a malformed line of
a recorded JSONL stream) goes out byte for byte: it is meant to reach the dead-letter topic,
and re-serialising it could silently repair it (orjson collapses duplicate keys).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson

from stream_app.core.errors import InvalidEvent
from stream_app.ingest.events import EventLimits, parse_event

TimeMode = Literal["compress", "shift", "send", "keep"]
TIME_MODES: tuple[TimeMode, ...] = ("compress", "shift", "send", "keep")
# ``compress`` without a speed (max speed, fixed rate) stamps the send time minus this much,
# which leaves room to keep a session's events strictly ordered (1 ms apart) when many of
# them go out within the same millisecond, without ever stamping a time ahead of the clock.
UNPACED_LAG_MS = 1_000
MAX_HOLD_S = 1.0  # the longest compress waits for the clock to pass a session's newest time
RawMessage = tuple[bytes | None, bytes]

# Structural check only: any event time is acceptable here, the worker judges times itself.
_ANY_TIME = EventLimits(max_future_skew_ms=2**62, max_age_ms=2**62)


class Clock(Protocol):
    """Wall time for event/record timestamps, monotonic time for pacing."""

    def wall_ms(self) -> int: ...

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock; ``sleep`` returns early once ``stop`` is set (Ctrl-C, shutdown)."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop or threading.Event()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.stop.wait(seconds)


@dataclass(frozen=True, slots=True)
class TimingConfig:
    speed: float | None = 1.0  # None = as fast as possible
    rate: float | None = None  # messages per second; takes precedence over speed
    duration_s: float | None = None
    limit: int | None = None
    loop: bool = False
    times: TimeMode = "compress"
    run_tag: str = ""  # appended to every session id (and event id) of this run

    def __post_init__(self) -> None:
        if self.speed is not None and self.speed <= 0:
            raise ValueError("speed must be > 0 (or None for max)")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be > 0")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1 (None = the whole log)")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("duration must be > 0")
        if self.times not in TIME_MODES:
            raise ValueError(f"times must be one of {TIME_MODES}")

    @property
    def paced_speed(self) -> float | None:
        """The factor recorded gaps are divided by; None when not paced by them."""
        return None if self.rate is not None else self.speed

    def describe(self) -> str:
        """The pace in words, for reports: ``speed=20``, ``speed=max`` or ``rate=500``."""
        if self.rate is not None:
            return f"rate={self.rate:g}"
        return "speed=max" if self.speed is None else f"speed={self.speed:g}"


@dataclass(frozen=True, slots=True)
class Recorded:
    """One message of the log: its fields when it is structurally an event, else None."""

    key: bytes | None
    value: bytes
    fields: dict[str, Any] | None
    time_ms: int | None


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    key: bytes | None
    value: bytes
    index: int  # 0-based position in the whole run
    loop: int  # 1 = first pass over the log
    due_s: float  # scheduled send time, seconds after the start
    event_time_ms: int | None  # the time written into the event; None when sent verbatim


def inspect(key: bytes | None, value: bytes) -> Recorded:
    """Classify a recorded message: rewritable event, or verbatim bytes."""
    try:
        event = parse_event(value, limits=_ANY_TIME, now_ms=0)
    except InvalidEvent:
        return Recorded(key, value, None, None)
    return Recorded(key, value, orjson.loads(value), event.event_time_ms)


def pass_suffix(run_tag: str, loop: int) -> str:
    """What makes ids unique to this run and pass: ``<tag>#L<n>`` from the second pass on."""
    return run_tag + (f"#L{loop}" if loop > 1 else "")


def rewrite(record: Recorded, suffix: str, event_time_ms: int | None) -> RawMessage:
    """The message to send: ids suffixed, time replaced; verbatim when nothing changes."""
    if record.fields is None or (not suffix and event_time_ms is None):
        return record.key, record.value
    fields = dict(record.fields)
    if suffix:
        fields["user_session"] = f"{fields['user_session']}{suffix}"
        if fields.get("event_id") not in (None, ""):
            fields["event_id"] = f"{fields['event_id']}{suffix}"
    if event_time_ms is not None:
        fields["event_time"] = event_time_ms
    return str(fields["user_session"]).encode("utf-8"), orjson.dumps(fields)


class _Pass:
    """Per-pass anchors: the recorded time and wall time of the pass's first timed event,
    and per session the newest recorded and rewritten times (``compress``)."""

    def __init__(self, loop: int, base_due_s: float) -> None:
        self.loop = loop
        self.base_due_s = base_due_s
        self.last_due_s = base_due_s
        self.first_time_ms: int | None = None
        self.first_wall_ms = 0
        self.sessions: dict[str, tuple[int, int]] = {}  # session -> (recorded, rewritten)

    def anchor(self, time_ms: int | None, wall_ms: int) -> None:
        if time_ms is not None and self.first_time_ms is None:
            self.first_time_ms = time_ms
            self.first_wall_ms = wall_ms


class Schedule:
    """Iterating yields each message when it is due (sleeping on the clock in between)."""

    def __init__(
        self,
        open_source: Callable[[], Iterable[RawMessage]],
        config: TimingConfig,
        clock: Clock,
    ) -> None:
        self._open_source = open_source
        self.config = config
        self._clock = clock
        self._start = 0.0
        self._start_wall_ms = 0
        self.sent = 0

    def __iter__(self) -> Iterator[OutgoingMessage]:
        self._start = self._clock.monotonic()
        self._start_wall_ms = self._clock.wall_ms()
        base_due_s = 0.0
        loop = 1
        while True:
            current = _Pass(loop, base_due_s)
            sent_before = self.sent
            for key, value in self._open_source():
                message = self._next(current, inspect(key, value))
                if message is None:
                    return
                yield message
            if not self.config.loop or self.sent == sent_before:
                return
            base_due_s, loop = current.last_due_s, loop + 1

    def _next(self, current: _Pass, record: Recorded) -> OutgoingMessage | None:
        """Wait for ``record``'s slot and build it, or None when the run is over."""
        if self.config.limit is not None and self.sent >= self.config.limit:
            return None
        due_s = self._due(current, record)
        if self._past_duration(due_s):
            return None
        self._clock.sleep(self._start + due_s - self._clock.monotonic())
        wall_ms = self._clock.wall_ms()
        current.anchor(record.time_ms, wall_ms)
        event_time_ms = self._event_time(current, record, wall_ms)
        ahead_s = (event_time_ms - wall_ms) / 1000 if event_time_ms is not None else 0.0
        if self.config.times == "compress" and ahead_s <= MAX_HOLD_S:
            # Only an order bump gets ahead of the clock (by milliseconds): wait for it rather
            # than send the future. Longer means the wall clock was stepped back: waiting that
            # out would stall the replay. (``shift`` at speed > 1 is ahead by design.)
            self._clock.sleep(ahead_s)
        key, value = rewrite(record, pass_suffix(self.config.run_tag, current.loop), event_time_ms)
        message = OutgoingMessage(key, value, self.sent, current.loop, due_s, event_time_ms)
        self.sent += 1
        return message

    def _due(self, current: _Pass, record: Recorded) -> float:
        """Seconds after the start; never earlier than the previous message (log order kept)."""
        if self.config.rate is not None:
            due_s = self.sent / self.config.rate
        elif self.config.speed is None:
            due_s = 0.0
        elif record.time_ms is None or current.first_time_ms is None:
            due_s = current.last_due_s
        else:
            gap_s = (record.time_ms - current.first_time_ms) / 1000 / self.config.speed
            due_s = current.base_due_s + gap_s
        current.last_due_s = max(current.last_due_s, due_s)
        return current.last_due_s

    def _past_duration(self, due_s: float) -> bool:
        if self.config.duration_s is None:
            return False
        elapsed = self._clock.monotonic() - self._start
        return max(due_s, elapsed) >= self.config.duration_s

    def _event_time(self, current: _Pass, record: Recorded, wall_ms: int) -> int | None:
        if record.time_ms is None or self.config.times == "keep":
            return None
        if self.config.times == "send":
            return wall_ms
        assert current.first_time_ms is not None  # anchored before this is called
        if self.config.times == "compress":
            return self._compressed(current, record, record.time_ms, wall_ms)
        return record.time_ms - current.first_time_ms + current.first_wall_ms

    def _compressed(self, current: _Pass, record: Recorded, time_ms: int, wall_ms: int) -> int:
        """``compress``: the scheduled send time, kept in recorded order within the session."""
        assert record.fields is not None
        assert current.first_time_ms is not None
        speed = self.config.paced_speed
        if speed is None:
            anchor = wall_ms - UNPACED_LAG_MS
        else:
            offset_s = current.base_due_s + (time_ms - current.first_time_ms) / 1000 / speed
            # Due by now (the schedule slept for it); min() guards against wall-clock steps.
            anchor = min(self._start_wall_ms + math.floor(offset_s * 1000), wall_ms)
        session = str(record.fields["user_session"])
        previous = current.sessions.get(session)
        if previous is None:
            rewritten = anchor
        elif time_ms > previous[0]:
            rewritten = max(anchor, previous[1] + 1)
        else:  # equal: the same time; earlier (out of order in the log): at most the newest
            rewritten = previous[1] if time_ms == previous[0] else min(anchor, previous[1])
        if previous is None or time_ms >= previous[0]:
            current.sessions[session] = (time_ms, rewritten)
        return rewritten
