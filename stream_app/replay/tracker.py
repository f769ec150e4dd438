"""Matching what a replay sent against the scores and dead letters that came back (pure).

Every delivered message is judged with the worker's own rules: ``events.parse_event`` (valid
or dead-lettered) and ``windows.classify`` (accepted, duplicate, late, overflow), applied per
session in delivery order, which is the order the worker sees (one key, one partition). So
for each session we know how many distinct events the worker should have accepted, and when
each one was produced.

A score with ``session_events = s`` covers the session's first ``s`` accepted events. Event
``j`` (1-based, accepted order) is covered by the *first* score with ``session_events >= j``;
its end-to-end latency is that score's receive time minus the event's produce time.

Not thread-safe: the runner holds a lock around every call.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stream_app.core.errors import InvalidEvent
from stream_app.ingest import dlq
from stream_app.ingest.events import DEFAULT_LIMITS, EventLimits, parse_event
from stream_app.replay.producer import Delivered
from stream_app.scoring.scores import ScoreRecord
from stream_app.sessions.windows import ACCEPTED, DUPLICATE, LATE, OVERFLOW, WindowRules, classify

_NO_ALIAS: Callable[[str], str] = str


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated ``q``-th percentile (0..100) of ascending values; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


@dataclass(slots=True)
class _Session:
    seen: set[str] = field(default_factory=set)
    last_event_ms: int = 0
    produced_ms: list[int] = field(default_factory=list)  # accepted events, accepted order
    covered: int = 0  # accepted events whose latency is known
    # Scores that raised session_events, in arrival order:
    # (session_events, received_ms, scored_at).
    steps: list[tuple[int, int, int]] = field(default_factory=list)
    latest: ScoreRecord | None = None

    @property
    def expected(self) -> int:
        return len(self.produced_ms)

    @property
    def reported(self) -> int:
        return self.steps[-1][0] if self.steps else 0


@dataclass(frozen=True, slots=True)
class SessionView:
    """A session as the demo's live view shows it."""

    session_id: str
    user_id: str
    score: float
    session_events: int
    expected_events: int
    scored_at: int


@dataclass(frozen=True, slots=True)
class Latencies:
    count: int
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Latencies:
        ordered = sorted(values)
        top = ordered[-1] if ordered else math.nan
        p50, p90, p99 = (percentile(ordered, q) for q in (50, 90, 99))
        return cls(len(ordered), p50, p90, p99, top)


@dataclass(frozen=True, slots=True)
class TrackerSummary:
    events_sent: int
    events_valid: int
    events_invalid: int
    invalid_reasons: dict[str, int]
    duplicates: int
    late: int
    overflow: int
    dlq: int  # dead letters matched to messages of this run
    dlq_expected: int  # invalid + late + overflow: what the worker should dead-letter
    dlq_unexpected: int  # ours, but for messages we expected to be accepted
    dlq_other: int  # dead letters since the start that are not ours
    dlq_reasons: dict[str, int]
    sessions: int
    sessions_scored: int
    sessions_purchased: int  # whose latest score says the session has bought
    scores_received: int
    scores_stale: int
    latency: Latencies  # produce -> score received
    latency_to_scored: Latencies  # produce -> score computed (scored_at, the worker's clock)


class ScoreTracker:
    """Feed it deliveries, scores and dead letters; ask it for progress and results."""

    def __init__(
        self,
        *,
        rules: WindowRules | None = None,
        limits: EventLimits = DEFAULT_LIMITS,
        events_topic: str = "user-events",
        start_ms: int = 0,
        session_alias: Callable[[str], str] = _NO_ALIAS,
    ) -> None:
        self.rules = rules or WindowRules()
        self.limits = limits
        self.events_topic = events_topic
        self.start_ms = start_ms  # scores/dead letters from before this are a previous run's
        self._alias = session_alias
        self._sessions: dict[str, _Session] = {}
        self._verdicts: Counter[str] = Counter()
        self.invalid_reasons: Counter[str] = Counter()
        self.sent_per_s: Counter[int] = Counter()
        self.scores_per_s: Counter[int] = Counter()
        self.latencies: list[tuple[int, int]] = []  # (received_ms, latency_ms) per event
        # Per event: produce -> the covering score's ``scored_at`` (the worker's share).
        self.to_scored_ms: list[int] = []
        # Dead-letter matching by (partition, offset) without remembering every message: the
        # run's first offset per partition, and the offsets we expect the worker to reject.
        self._first_offset: dict[int, int] = {}
        self._expected_dead: set[tuple[int, int]] = set()
        self._dead: dict[tuple[int, int], str] = {}
        self.dlq_other = 0
        self._abandoned = 0  # uncovered events of sessions the store has since forgotten
        self.events_sent = 0
        self.scores_received = 0
        self.scores_stale = 0
        self.first_sent_ms: int | None = None
        self.last_sent_ms: int | None = None
        self.last_score_ms: int | None = None

    # -- what was sent -----------------------------------------------------------------------

    def record_sent(self, message: Delivered) -> None:
        """One delivered message; call in delivery order."""
        self.events_sent += 1
        if self.first_sent_ms is None:
            self.first_sent_ms = message.timestamp_ms
        self.last_sent_ms = message.timestamp_ms
        self.sent_per_s[message.timestamp_ms // 1000] += 1
        where = (message.partition, message.offset)
        first = self._first_offset.get(message.partition, message.offset)
        self._first_offset[message.partition] = min(first, message.offset)
        try:
            event = parse_event(message.value, limits=self.limits, now_ms=message.timestamp_ms)
        except InvalidEvent as exc:
            self.invalid_reasons[exc.reason] += 1
            self._expected_dead.add(where)
            return
        session = self._live_session(self._alias(event.user_session), message.timestamp_ms)
        verdict = classify(
            event, session.seen, len(session.produced_ms), session.last_event_ms, self.rules
        )
        self._verdicts[verdict] += 1
        if verdict == ACCEPTED:
            self._accept(session, event.event_id, event.event_time_ms, message.timestamp_ms)
        elif verdict in (LATE, OVERFLOW):
            self._expected_dead.add(where)

    def _session(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = _Session()
        return session

    def _live_session(self, session_id: str, produced_ms: int) -> _Session:
        """The session as the worker's store holds it when this message arrives.

        The store forgets a session one gap after its last accepted event (a processing-time
        TTL), and the worker then starts it afresh; mirror that with produce times.
        """
        session = self._session(session_id)
        if (
            session.produced_ms
            and produced_ms - session.produced_ms[-1] >= self.rules.session_gap_ms
        ):
            self._abandoned += session.expected - session.covered
            session = self._sessions[session_id] = _Session()
        return session

    def _accept(self, session: _Session, event_id: str, time_ms: int, produced_ms: int) -> None:
        first = not session.produced_ms
        session.seen.add(event_id)
        session.last_event_ms = time_ms if first else max(session.last_event_ms, time_ms)
        session.produced_ms.append(produced_ms)
        # A score may have overtaken our delivery report: cover the event now if so.
        self._cover(session, session.reported)

    # -- what came back ----------------------------------------------------------------------

    def record_score(self, record: ScoreRecord, received_ms: int) -> None:
        if record.ingest_ms < self.start_ms:
            self.scores_stale += 1
            return
        self.scores_received += 1
        self.last_score_ms = max(self.last_score_ms or received_ms, received_ms)
        self.scores_per_s[received_ms // 1000] += 1
        session = self._session(record.session_id)
        if session.latest is None or record.session_events >= session.latest.session_events:
            session.latest = record
        if record.session_events > session.reported:
            session.steps.append((record.session_events, received_ms, record.scored_at))
            self._cover(session, record.session_events)

    def _cover(self, session: _Session, up_to: int) -> None:
        """Give every not-yet-covered event ``j <= up_to`` its latency."""
        last = min(up_to, session.expected)
        firsts = [step[0] for step in session.steps]
        while session.covered < last:
            j = session.covered + 1
            _, received_ms, scored_at = session.steps[bisect.bisect_left(firsts, j)]
            produced_ms = session.produced_ms[j - 1]
            self.latencies.append((received_ms, received_ms - produced_ms))
            self.to_scored_ms.append(scored_at - produced_ms)
            session.covered = j

    def record_dead_letter(self, raw: bytes, timestamp_ms: int) -> None:
        """A dead-letter record; matched to our messages by topic, partition and offset."""
        if timestamp_ms < self.start_ms:
            return
        try:
            record = dlq.parse_dead_letter(raw)
        except ValueError:
            self.dlq_other += 1
            return
        if record.get("topic") != self.events_topic:
            self.dlq_other += 1
            return
        where = (int(record.get("partition", -1)), int(record.get("offset", -1)))
        self._dead[where] = str(record.get("reason", ""))

    # -- answers -----------------------------------------------------------------------------

    @property
    def events_valid(self) -> int:
        return self._verdicts[ACCEPTED]

    @property
    def dlq_expected(self) -> int:
        """Invalid, late and overflowing messages: what the worker should dead-letter."""
        return len(self._expected_dead)

    def _ours(self, where: tuple[int, int]) -> bool:
        """From this run's part of the events topic (another producer's message interleaved
        there would count too: a load test normally has the topic to itself)."""
        return where[1] >= self._first_offset.get(where[0], 2**63)

    def dlq_matched(self) -> Counter[str]:
        return Counter(r for where, r in self._dead.items() if self._ours(where))

    def dlq_unexpected(self) -> int:
        """Dead letters for messages we expected the worker to accept (a rules mismatch)."""
        return sum(1 for w in self._dead if self._ours(w) and w not in self._expected_dead)

    def done(self) -> bool:
        """Every valid event sent so far is reflected in a published score."""
        return len(self.latencies) + self._abandoned >= self.events_valid

    def dlq_done(self) -> bool:
        return len(self._expected_dead.intersection(self._dead)) >= len(self._expected_dead)

    def sessions_scored(self) -> int:
        """Sessions whose latest score saw exactly the events we expect it to hold."""
        return sum(
            1
            for s in self._sessions.values()
            if s.expected and s.latest is not None and s.latest.session_events == s.expected
        )

    def sessions_seen(self) -> int:
        return sum(1 for s in self._sessions.values() if s.expected)

    def sessions_purchased(self) -> int:
        return sum(1 for s in self._sessions.values() if s.latest and s.latest.purchased)

    def top_sessions(self, n: int) -> list[SessionView]:
        """The ``n`` highest latest scores of sessions that have not bought yet (the demo's
        live view: a session that bought is certain, not 'likely to buy')."""
        scored = [
            (sid, s.latest, s.expected)
            for sid, s in self._sessions.items()
            if s.latest and not s.latest.purchased
        ]
        scored.sort(key=lambda item: item[1].score if item[1] else 0.0, reverse=True)
        return [_view(sid, record, expected) for sid, record, expected in scored[:n] if record]

    def summary(self) -> TrackerSummary:
        dead = self.dlq_matched()
        return TrackerSummary(
            events_sent=self.events_sent,
            events_valid=self.events_valid,
            events_invalid=sum(self.invalid_reasons.values()),
            invalid_reasons=dict(self.invalid_reasons),
            duplicates=self._verdicts[DUPLICATE],
            late=self._verdicts[LATE],
            overflow=self._verdicts[OVERFLOW],
            dlq=sum(dead.values()),
            dlq_expected=self.dlq_expected,
            dlq_unexpected=self.dlq_unexpected(),
            dlq_other=self.dlq_other + len(self._dead) - sum(dead.values()),
            dlq_reasons=dict(dead),
            sessions=self.sessions_seen(),
            sessions_scored=self.sessions_scored(),
            sessions_purchased=self.sessions_purchased(),
            scores_received=self.scores_received,
            scores_stale=self.scores_stale,
            latency=Latencies.of([lat for _, lat in self.latencies]),
            latency_to_scored=Latencies.of(self.to_scored_ms),
        )


def _view(session_id: str, record: ScoreRecord, expected: int) -> SessionView:
    return SessionView(
        session_id, record.user_id, record.score, record.session_events, expected, record.scored_at
    )
