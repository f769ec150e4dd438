"""Trigger state: per (rule, session) ``RuleState``, per (rule, user) cooldowns, per rule rate.

``TriggerStateStore`` is the protocol; ``RedisTriggerState`` keeps the state in Redis and
decides every fire with one atomic check-and-set script (``trigger_state.lua``): the new
state is written only if the stored one is still what the evaluation started from, so two
workers (a rebalance), a crash and its re-deliveries can never both fire one episode.
``InMemoryTriggerState`` has the same semantics in a dict (unit tests, back-tests).

Keys (every one with a TTL): ``{prefix}:{t.<rule>}:s:<session tag>`` state (JSON),
``...:u:<user tag>`` cooldown, ``...:r:<window index>`` rate counter. A rule's keys share
one hash tag, so the script is legal on Redis Cluster (a rule's keys live in one slot).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any, Protocol

from redis import exceptions as redis_errors

from stream_app.core.errors import StoreUnavailable
from stream_app.core.keys import session_tag
from stream_app.core.redis_connect import RedisClient
from stream_app.triggers.evaluate import RuleState
from stream_app.triggers.rules import Rule


class Decision(StrEnum):
    FIRED = "fired"
    COOLDOWN = "cooldown"
    RATE_LIMITED = "rate_limited"
    SAVED = "saved"  # no fire wanted; the new state was written
    CONFLICT = "conflict"  # the state changed since it was read: re-read and re-evaluate


@dataclass(frozen=True, slots=True)
class Commit:
    """One check-and-set: replace ``expected`` (raw stored state, None = none) by the step's
    outcome; fire (``if_fired``) only if cooldown and rate limit allow."""

    rule: Rule
    session_id: str
    user_id: str
    expected: bytes | None
    if_not: RuleState
    if_fired: RuleState | None
    now_ms: int

    def cooldown_subject(self) -> str:
        return self.user_id or f"session:{self.session_id}"


class TriggerStateStore(Protocol):
    async def load(self, keys: Sequence[tuple[str, str]]) -> list[bytes | None]:
        """The raw stored state of each (rule name, session id); None where there is none."""
        ...

    async def commit(self, commits: Sequence[Commit]) -> list[Decision]: ...

    async def close(self) -> None: ...


class InMemoryTriggerState:
    """The Redis semantics in dicts; time comes from each commit's ``now_ms``."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], bytes] = {}
        self._cooldowns: dict[tuple[str, str], int] = {}  # -> expires at ms
        self._rates: dict[tuple[str, int], int] = {}

    async def load(self, keys: Sequence[tuple[str, str]]) -> list[bytes | None]:
        return [self._states.get(key) for key in keys]

    async def commit(self, commits: Sequence[Commit]) -> list[Decision]:
        return [self._commit_one(c) for c in commits]

    def _commit_one(self, c: Commit) -> Decision:
        key = (c.rule.name, c.session_id)
        if self._states.get(key) != c.expected:
            return Decision.CONFLICT
        decision, new = Decision.SAVED, c.if_not
        if c.if_fired is not None:
            decision = self._admit(c)
            if decision is Decision.FIRED:
                new = c.if_fired
        self._states[key] = new.to_json()
        return decision

    def _admit(self, c: Commit) -> Decision:
        user = (c.rule.name, c.cooldown_subject())
        if c.rule.cooldown_s and self._cooldowns.get(user, 0) > c.now_ms:
            return Decision.COOLDOWN
        limit = c.rule.rate_limit
        window = (c.rule.name, c.now_ms // (limit.per_s * 1000)) if limit else None
        if limit and window and self._rates.get(window, 0) >= limit.max_triggers:
            return Decision.RATE_LIMITED
        if c.rule.cooldown_s:
            self._cooldowns[user] = c.now_ms + c.rule.cooldown_s * 1000
        if window is not None:
            self._rates[window] = self._rates.get(window, 0) + 1
        return Decision.FIRED

    async def close(self) -> None:
        self._states.clear()


def _load_script() -> bytes:
    return resources.files("stream_app.triggers").joinpath("trigger_state.lua").read_bytes()


class RedisTriggerState:
    """Trigger state in Redis: one pipelined ``EVALSHA`` per commit batch."""

    def __init__(self, client: RedisClient, key_prefix: str, state_ttl_s: int) -> None:
        self._client = client
        self._prefix = key_prefix
        self._state_ttl_ms = str(state_ttl_s * 1000)
        self._script = _load_script()
        self._sha = hashlib.sha1(self._script, usedforsecurity=False).hexdigest()

    def _base(self, rule: str) -> str:
        return f"{self._prefix}:{{t.{rule}}}"

    def state_key(self, rule: str, session_id: str) -> str:
        return f"{self._base(rule)}:s:{session_tag(session_id)}"

    async def load(self, keys: Sequence[tuple[str, str]]) -> list[bytes | None]:
        if not keys:
            return []
        # GETs in one pipeline, not MGET: a batch spans rules, i.e. Cluster slots.
        pipe = self._client.pipeline(transaction=False)
        for rule, session in keys:
            pipe.get(self.state_key(rule, session))
        try:
            values = await pipe.execute()
        except redis_errors.RedisError as exc:
            raise StoreUnavailable(f"trigger state read failed: {exc}") from exc
        return [v.encode() if isinstance(v, str) else v for v in values]

    async def commit(self, commits: Sequence[Commit]) -> list[Decision]:
        if not commits:
            return []
        try:
            replies = await self._run(commits)
            if any(isinstance(r, redis_errors.NoScriptError) for r in replies):
                await self._client.script_load(self._script)
                replies = await self._run(commits)  # CAS: calls that had run now conflict
        except redis_errors.RedisError as exc:
            raise StoreUnavailable(f"trigger state write failed: {exc}") from exc
        return [self._decision(reply) for reply in replies]

    async def _run(self, commits: Sequence[Commit]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for c in commits:
            keys, args = self._call(c)
            pipe.evalsha(self._sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    def _call(self, c: Commit) -> tuple[list[str], list[str | bytes]]:
        base = self._base(c.rule.name)
        limit = c.rule.rate_limit
        window = c.now_ms // (limit.per_s * 1000) if limit else 0
        keys = [
            self.state_key(c.rule.name, c.session_id),
            f"{base}:u:{session_tag(c.cooldown_subject())}",
            f"{base}:r:{window}",
        ]
        args: list[str | bytes] = [
            c.expected or b"",
            c.if_fired.to_json() if c.if_fired is not None else b"",
            c.if_not.to_json(),
            self._state_ttl_ms,
            str(c.rule.cooldown_s * 1000),
            str(limit.max_triggers if limit else 0),
            str(limit.per_s * 1000 if limit else 0),
        ]
        return keys, args

    @staticmethod
    def _decision(reply: Any) -> Decision:
        if isinstance(reply, Exception):
            raise StoreUnavailable(f"trigger state script failed: {reply}") from reply
        text = reply.decode() if isinstance(reply, bytes) else str(reply)
        return Decision(text)

    async def close(self) -> None:
        await self._client.aclose()
