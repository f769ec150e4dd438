"""Session store: where session windows live between events.

``SessionStore`` is the protocol the worker uses; ``create_store`` picks the backend from the
URL (``memory://`` -> ``InMemorySessionStore``; ``redis://``, ``rediss://``, ``redis+cluster://``,
``redis+sentinel://`` -> ``RedisSessionStore`` over the client ``stream_app.core.redis_connect``
builds). Both apply exactly the rules of ``stream_app.sessions.windows``: the in-memory
store by calling ``apply_events``, Redis through ``window.lua``.

Redis: one round trip per micro-batch, a non-transactional pipeline of one ``EVALSHA`` per
touched session; each script call touches only that session's keys (one Cluster slot). In
Cluster mode redis-py splits that pipeline by node and sends the parts concurrently (one
round trip per node, in parallel), and follows ``MOVED``/``ASK`` while a slot migrates. If
the server lost its script cache (restart, ``SCRIPT FLUSH``) the affected calls are re-sent
after a ``SCRIPT LOAD``. Connection errors are retried by redis-py's own ``Retry``; what
still fails surfaces as ``StoreUnavailable``. A retried pipeline may re-run scripts that had
already run: the events then come back as duplicates, and the snapshot is still right.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any, Protocol

import orjson
from redis import exceptions as redis_errors

from stream_app.core.config import RedisSettings
from stream_app.core.errors import (
    IntentStreamError,
    InvalidEvent,
    SessionStoreError,
    StoreRefused,
    StoreUnavailable,
)
from stream_app.core.keys import SessionKeys, session_keys
from stream_app.core.redis_connect import (
    CREDENTIAL_ERRORS,
    RETRYABLE_ERRORS,
    RedisClient,
    StoreRetry,
    answers,
    parse_redis_url,
    redis_client,
)
from stream_app.ingest.events import Event
from stream_app.sessions.windows import (
    ApplyOutcome,
    Tallies,
    WindowRules,
    WindowSnapshot,
    WindowState,
    apply_events,
    category_of,
    price_cents,
)

Clock = Callable[[], int]  # UTC epoch milliseconds
# Re-exported: callers build clients and retries through this module.
__all__ = ["CREDENTIAL_ERRORS", "RETRYABLE_ERRORS", "StoreRetry", "redis_client"]

MEMORY_SCHEME = "memory://"


# Server replies that mean "not now" rather than "never": an outage, retried.
TRANSIENT_REPLY_PREFIXES = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "READONLY",
                            "CLUSTERDOWN", "OOM")  # fmt: skip
REFUSED_REPLY_PREFIXES = ("NOPERM", "NOAUTH", "WRONGPASS")


def classify_redis_error(error: Exception, context: str) -> IntentStreamError:
    """The error tree's view of a redis-py error (see errors.py and the README policy):

    * connection, timeout, loading, busy, failover, out of memory -> ``StoreUnavailable``
      (an outage: the pipeline stalls and retries);
    * NOPERM / authentication -> ``StoreRefused`` (the worker fails fast);
    * anything else the server answers (WRONGTYPE, a script error) -> ``SessionStoreError``
      (deterministic for the keys it ran on: that session is dead-lettered).
    """
    message = f"{context}: {error}"
    if isinstance(error, CREDENTIAL_ERRORS):
        return StoreRefused(message)
    if isinstance(error, RETRYABLE_ERRORS):
        return StoreUnavailable(message)
    text = str(error).lstrip("-").upper()
    if isinstance(error, redis_errors.NoPermissionError):  # redis-py drops the code
        return StoreRefused(f"{context}: NOPERM {error}")
    if text.startswith(REFUSED_REPLY_PREFIXES):
        return StoreRefused(message)
    if text.startswith(TRANSIENT_REPLY_PREFIXES) or not isinstance(
        error, redis_errors.ResponseError
    ):
        return StoreUnavailable(message)
    code = text.split(" ", 1)[0].split(":", 1)[0][:32] or "ERR"
    return SessionStoreError(f"store_error:{code}", str(error)[:500])


class SessionStore(Protocol):
    async def apply(
        self, updates: Mapping[str, Sequence[Event]]
    ) -> dict[str, ApplyOutcome | SessionStoreError]:
        """Apply each session's events (in the order given); one outcome per session, or the
        ``SessionStoreError`` that one session's keys got. Raises ``StoreUnavailable`` (an
        outage) or ``StoreRefused`` (permissions) for what is not about one session."""
        ...

    async def get(self, session_id: str) -> WindowSnapshot | None:
        """The session's current snapshot, or None if it has none (never seen, or expired)."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


def system_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------------------------------------
# In memory


class InMemorySessionStore:
    """Sessions in a dict, with the same TTL rule as Redis (gap after the last write)."""

    def __init__(self, rules: WindowRules, clock: Clock = system_clock_ms) -> None:
        self._rules = rules
        self._clock = clock
        # session id -> (state, expires at ms); ordered by last write, so oldest first.
        self._sessions: OrderedDict[str, tuple[WindowState, int]] = OrderedDict()

    def __len__(self) -> int:
        self._expire(self._clock())
        return len(self._sessions)

    async def apply(
        self, updates: Mapping[str, Sequence[Event]]
    ) -> dict[str, ApplyOutcome | SessionStoreError]:
        now = self._clock()
        self._expire(now)
        return {sid: self._apply_one(sid, events, now) for sid, events in updates.items()}

    def _apply_one(self, session_id: str, events: Sequence[Event], now: int) -> ApplyOutcome:
        entry = self._sessions.get(session_id)
        state = entry[0] if entry else WindowState.empty(session_id)
        outcome = apply_events(state, events, self._rules)
        if outcome.accepted and outcome.state is not None:
            self._sessions[session_id] = (outcome.state, now + self._rules.session_gap_ms)
            self._sessions.move_to_end(session_id)
        return outcome

    async def get(self, session_id: str) -> WindowSnapshot | None:
        self._expire(self._clock())
        entry = self._sessions.get(session_id)
        return entry[0].snapshot if entry else None

    def _expire(self, now: int) -> None:
        # Entries are in write order and share one TTL, so expired ones are at the front
        # (a clock that stepped back only delays expiry, it never drops a live session).
        while self._sessions:
            session_id, (_, expires_at) = next(iter(self._sessions.items()))
            if expires_at > now:
                return
            del self._sessions[session_id]

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._sessions.clear()


# ---------------------------------------------------------------------------------------------
# Stored event encoding: a compact JSON array without the session id (the key says it).


def encode_event(event: Event) -> bytes:
    return orjson.dumps(
        [
            event.event_id, event.event_time_ms, event.event_type, event.user_id,
            event.product_id, event.category_id, event.category_code, event.brand,
            event.price, event.query,
            event.product_name, event.device, event.channel, event.country,
        ]
    )  # fmt: skip


def decode_event(session_id: str, raw: bytes) -> Event:
    try:
        fields = orjson.loads(raw)
        # Records written before the optional text fields existed have 10 entries.
        eid, time_ms, etype, user, product, cat_id, cat_code, brand, price, query = fields[:10]
        extra = fields[10:14] if len(fields) == 14 else ("", "", "", "")
        if len(fields) not in (10, 14):
            raise ValueError(f"{len(fields)} fields")
    except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
        raise InvalidEvent("bad_stored_event", str(exc)[:200]) from exc
    price = None if price is None else float(price)
    return Event(eid, time_ms, etype, session_id, user, product, cat_id, cat_code, brand, price,
                 query, *extra)  # fmt: skip


def script_events_arg(events: Sequence[Event]) -> bytes:
    """The events argument of ``window.lua``: a JSON array of 9 strings per event."""
    rows = []
    for e in events:
        cents = price_cents(e.price)
        rows.append(
            (
                e.event_id, e.event_id.encode().hex(), str(e.event_time_ms), e.event_type,
                e.user_id, e.product_id, category_of(e), "" if cents is None else str(cents),
                encode_event(e).decode(),
            )
        )  # fmt: skip
    return orjson.dumps(rows)


# ---------------------------------------------------------------------------------------------
# Redis replies -> snapshot


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def tallies_from_hash(flat: Sequence[bytes | str]) -> tuple[Tallies, str]:
    """Rebuild the integer tallies (and the user id) from ``HGETALL aggregates``."""
    h = {_text(k): _text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
    counts = {k[2:]: int(v) for k, v in h.items() if k.startswith("c:")}
    tallies = Tallies(
        n_events=int(h.get("n", 0)), counts=counts,
        first_event_ms=int(h.get("first", 0)), last_event_ms=int(h.get("last", 0)),
        cart_cents=int(h.get("cart", 0)), price_cents_sum=int(h.get("psum", 0)),
        price_count=int(h.get("pcnt", 0)), max_price_cents=int(h.get("pmax", 0)),
    )  # fmt: skip
    return tallies, h.get("uid", "")


def snapshot_from_reply(
    session_id: str,
    members: Sequence[bytes],
    flat: Sequence[bytes | str],
    n_prod: int,
    n_cat: int,
) -> WindowSnapshot:
    """A snapshot from the window members (``hex(id) json``), the hash and the set sizes."""
    tallies, user_id = tallies_from_hash(flat)
    events = tuple(decode_event(session_id, m.partition(b" ")[2]) for m in members)
    return WindowSnapshot(session_id, user_id, events, tallies.to_aggregates(n_prod, n_cat))


def outcome_from_reply(session_id: str, events: Sequence[Event], reply: list[Any]) -> ApplyOutcome:
    verdicts, joined, flat_json, n_prod, n_cat = reply
    members = joined.split(b"\n") if joined else []
    flat = orjson.loads(flat_json)
    by_verdict: dict[str, list[Event]] = {"a": [], "d": [], "l": [], "o": []}
    for event, verdict in zip(events, _text(verdicts), strict=True):
        by_verdict[verdict].append(event)
    return ApplyOutcome(
        snapshot=snapshot_from_reply(session_id, members, flat, n_prod, n_cat),
        accepted=tuple(by_verdict["a"]),
        duplicates=tuple(by_verdict["d"]),
        late=tuple(by_verdict["l"]),
        overflow=tuple(by_verdict["o"]),
    )


# ---------------------------------------------------------------------------------------------
# Redis


def _load_script() -> bytes:
    return resources.files("stream_app.sessions").joinpath("window.lua").read_bytes()


class RedisSessionStore:
    """Session windows in Redis; ``window.lua`` applies the rules server-side."""

    def __init__(self, client: RedisClient, rules: WindowRules, key_prefix: str = "is") -> None:
        self._client = client
        self._rules = rules
        self._prefix = key_prefix
        self._script = _load_script()
        self._sha = hashlib.sha1(self._script, usedforsecurity=False).hexdigest()
        self._header = [str(rules.max_events), str(rules.session_gap_ms), str(rules.max_seen_ids)]

    @property
    def client(self) -> RedisClient:
        return self._client

    def keys(self, session_id: str) -> SessionKeys:
        return session_keys(self._prefix, session_id)

    async def apply(
        self, updates: Mapping[str, Sequence[Event]]
    ) -> dict[str, ApplyOutcome | SessionStoreError]:
        if not updates:
            return {}
        try:
            replies = await self._run_scripts(updates)
            lost = [sid for sid, r in replies.items() if isinstance(r, redis_errors.NoScriptError)]
            if lost:  # script cache lost: load it once, re-send only those calls
                await self._client.script_load(self._script)
                replies.update(await self._run_scripts({sid: updates[sid] for sid in lost}))
        except redis_errors.RedisError as exc:
            raise _as_store_failure(classify_redis_error(exc, "redis apply failed")) from exc
        return {sid: self._outcome(sid, updates[sid], reply) for sid, reply in replies.items()}

    async def _run_scripts(self, todo: Mapping[str, Sequence[Event]]) -> dict[str, Any]:
        pipe = self._client.pipeline(transaction=False)
        for sid, events in todo.items():
            keys = self.keys(sid).all()
            pipe.evalsha(self._sha, len(keys), *keys, *self._header, script_events_arg(events))
        results = await pipe.execute(raise_on_error=False)
        return dict(zip(todo, results, strict=True))

    def _outcome(
        self, session_id: str, events: Sequence[Event], reply: Any
    ) -> ApplyOutcome | SessionStoreError:
        if isinstance(reply, Exception):
            error = classify_redis_error(reply, "window script failed")
            if isinstance(error, SessionStoreError):
                return error
            raise _as_store_failure(error) from reply
        return outcome_from_reply(session_id, events, reply)

    async def get(self, session_id: str) -> WindowSnapshot | None:
        keys = self.keys(session_id)
        try:
            pipe = self._client.pipeline(transaction=True)  # one slot, consistent read
            pipe.zrange(keys.window, 0, -1)
            pipe.hgetall(keys.aggregates)
            pipe.scard(keys.products)
            pipe.scard(keys.categories)
            members, agg, n_prod, n_cat = await pipe.execute()
        except redis_errors.RedisError as exc:
            raise _as_store_failure(classify_redis_error(exc, "redis get failed")) from exc
        if not agg:
            return None
        flat = [x for kv in agg.items() for x in kv]
        return snapshot_from_reply(session_id, members, flat, n_prod, n_cat)

    async def ping(self) -> bool:
        return await answers(self._client)

    async def close(self) -> None:
        await self._client.aclose()


# ---------------------------------------------------------------------------------------------
# Construction


def _as_store_failure(error: IntentStreamError) -> IntentStreamError:
    """Outside one session's script a deterministic error is not about a session (e.g. the
    script does not load): nothing can proceed, so the worker fails fast."""
    if isinstance(error, SessionStoreError):
        return StoreRefused(str(error))
    return error


def create_store(settings: RedisSettings, rules: WindowRules) -> SessionStore:
    """The store ``settings.url`` names: ``memory://``, or Redis (one node, ``+cluster``,
    ``+sentinel``; see ``stream_app.core.redis_connect``)."""
    url = settings.url.strip()
    if url.startswith(MEMORY_SCHEME):
        return InMemorySessionStore(rules)
    parse_redis_url(url)  # a bad URL is a one-line ConfigError here, not at first use
    return RedisSessionStore(redis_client(settings), rules, settings.key_prefix)
