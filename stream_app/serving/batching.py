"""Micro-batching and backpressure, as pure data structures (no I/O, no clocks).

Two stages meet here:

* the ingest stage hands over, per micro-batch, the newest window of every session it touched;
* the scoring stage takes up to ``max_score_batch`` sessions at a time.

``PendingScores`` sits between them. It keeps at most ONE pending entry per session: a session
that is touched again before it was scored is *coalesced* -- its entry now holds the newest
window and the union of the messages waiting on it -- so under overload the model scores each
session once on its freshest window instead of once per event, while every window update has
still been applied. It is bounded (sessions and messages); the ingest stage waits for room, which
stops consumption instead of growing memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Generic, TypeVar

from stream_app.ingest.events import Event
from stream_app.sessions.windows import WindowSnapshot

Token = TypeVar("Token")


def length_sorted_chunks(lengths: Sequence[int], chunk: int) -> list[list[int]]:
    """Indices into ``lengths``, shortest first, cut into chunks of at most ``chunk``.

    A model batch is padded to its longest sequence, so one long window makes a whole batch
    pay for it; scoring similar lengths together lets short windows run at short (cheap)
    sequence buckets. On CPU a chunk of 16 rows runs about as efficiently per row as 64.
    """
    if chunk < 1:
        raise ValueError("chunk must be positive")
    if len(lengths) <= chunk:
        return [list(range(len(lengths)))] if lengths else []  # one call: order is moot
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i : i + chunk] for i in range(0, len(order), chunk)]


def time_bounded_limit(rate_per_s: float, target_s: float, floor: int, cap: int) -> int:
    """How many sessions may wait: about ``target_s`` of scoring work, within [floor, cap].

    A count bound alone is no bound on lag: 20,000 sessions are seconds of work on a GPU and
    many minutes on two CPU cores, and while the queue fills the ingest stage takes the CPU
    the model needs. Bounding by time keeps the wait short and the model busy.
    """
    floor = min(floor, cap)
    return max(floor, min(cap, int(rate_per_s * target_s)))


def group_by_session(events: Iterable[Event]) -> dict[str, list[Event]]:
    """Group events by session id, keeping first-seen session order and arrival order within."""
    grouped: dict[str, list[Event]] = {}
    for event in events:
        grouped.setdefault(event.user_session, []).append(event)
    return grouped


@dataclass(slots=True)
class PendingEntry(Generic[Token]):
    """The newest window of one session plus every message waiting for its score."""

    snapshot: WindowSnapshot
    tokens: list[Token] = field(default_factory=list)
    oldest_ingest_ms: int = 0
    newest_ingest_ms: int = 0
    coalesced: int = 0  # how many extra updates were folded into this entry
    queued_ms: int = 0  # the worker's clock when the session joined the queue (0 = unknown)
    size_bytes: int = 0  # bytes of the consumed messages held for this entry

    def absorb(self, newer: PendingEntry[Token]) -> None:
        self.snapshot = newer.snapshot
        self.tokens.extend(newer.tokens)
        self.size_bytes += newer.size_bytes
        self.oldest_ingest_ms = min(self.oldest_ingest_ms, newer.oldest_ingest_ms)
        self.newest_ingest_ms = max(self.newest_ingest_ms, newer.newest_ingest_ms)
        self.coalesced += 1 + newer.coalesced


class PendingScores(Generic[Token]):
    """Bounded, coalescing FIFO of sessions waiting to be scored (oldest first)."""

    def __init__(self, max_sessions: int, max_tokens: int, max_bytes: int = 2**62) -> None:
        if max_sessions < 1 or max_tokens < 1 or max_bytes < 1:
            raise ValueError("PendingScores bounds must be positive")
        self.max_sessions = max_sessions
        self.max_tokens = max_tokens
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, PendingEntry[Token]] = OrderedDict()
        self._tokens = 0
        self._bytes = 0
        self.coalesced_total = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def pending_tokens(self) -> int:
        return self._tokens

    def items(self) -> Iterable[tuple[str, PendingEntry[Token]]]:
        return self._entries.items()

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def has_room(self, new_sessions: int = 1, new_tokens: int = 1, new_bytes: int = 0) -> bool:
        """Whether an offer of this size fits. An empty queue always accepts, so a single
        oversized batch can never deadlock the pipeline."""
        if not self._entries:
            return True
        fits_sessions = len(self._entries) + new_sessions <= self.max_sessions
        fits_bytes = self._bytes + new_bytes <= self.max_bytes
        return fits_sessions and fits_bytes and self._tokens + new_tokens <= self.max_tokens

    def offer(self, session_id: str, entry: PendingEntry[Token]) -> bool:
        """Queue a session's newest window; returns True when it coalesced with a pending one.

        A coalesced session keeps its place in line (the oldest waiting message decides
        fairness), so a hot session cannot starve others nor be starved itself.
        """
        self._tokens += len(entry.tokens)
        self._bytes += entry.size_bytes
        current = self._entries.get(session_id)
        if current is None:
            self._entries[session_id] = entry
            return False
        current.absorb(entry)
        self.coalesced_total += 1 + entry.coalesced
        return True

    def peek(self, limit: int) -> list[PendingEntry[Token]]:
        """The first ``limit`` entries, oldest first, left in the queue."""
        return list(islice(self._entries.values(), limit))

    def take(self, limit: int) -> list[tuple[str, PendingEntry[Token]]]:
        """Remove and return up to ``limit`` sessions, oldest first."""
        taken: list[tuple[str, PendingEntry[Token]]] = []
        while self._entries and len(taken) < limit:
            session_id, entry = self._entries.popitem(last=False)
            self._tokens -= len(entry.tokens)
            self._bytes -= entry.size_bytes
            taken.append((session_id, entry))
        return taken

    def restore(self, taken: list[tuple[str, PendingEntry[Token]]]) -> None:
        """Put taken entries back at the front, oldest first (their scoring could not run).

        A session updated meanwhile keeps one entry: the newer window, all the tokens."""
        for session_id, entry in reversed(taken):
            newer = self._entries.pop(session_id, None)
            if newer is not None:
                self._tokens -= len(newer.tokens)
                self._bytes -= newer.size_bytes
                entry.absorb(newer)
            self._tokens += len(entry.tokens)
            self._bytes += entry.size_bytes
            self._entries[session_id] = entry
            self._entries.move_to_end(session_id, last=False)

    def drop(self, keep: Callable[[Token], bool]) -> list[Token]:
        """Remove tokens for which ``keep`` is false (and entries left without any);
        returns the removed tokens."""
        removed: list[Token] = []
        for session_id in list(self._entries):
            entry = self._entries[session_id]
            kept = [t for t in entry.tokens if keep(t)]
            if len(kept) == len(entry.tokens):
                continue
            removed.extend(t for t in entry.tokens if not keep(t))
            self._tokens -= len(entry.tokens) - len(kept)
            share = entry.size_bytes * (len(entry.tokens) - len(kept)) // len(entry.tokens)
            self._bytes -= share
            entry.size_bytes -= share
            entry.tokens = kept
            if not kept:
                self._bytes -= entry.size_bytes
                del self._entries[session_id]
        return removed
