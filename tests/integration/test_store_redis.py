"""The Redis session store against a real redis-server: Lua/Python parity, TTLs, round trips,
hostile session ids, script-cache loss and unreachable servers."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection
from redis.crc import key_slot

from stream_app.core.config import RedisSettings
from stream_app.core.errors import StoreRefused, StoreUnavailable
from stream_app.ingest.events import Event
from stream_app.local.embedded import EmbeddedRedis, generate_test_certificates
from stream_app.sessions.store import RedisSessionStore, create_store, redis_client
from stream_app.sessions.windows import ApplyOutcome, WindowRules, WindowState, apply_events
from tests.unit.test_windows import at, event_sets

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

# Small bounds so that random sequences hit trimming, late events and the seen-id bound.
RULES = WindowRules(max_events=4, session_gap_ms=60_000, max_seen_ids=6)
KEY_RE = re.compile(r"^[a-z0-9-]+:\{[0-9a-f]{32}\}:[wsapc]$")


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_url)
    yield redis
    await redis.aclose()


@pytest.fixture
async def store(redis_url: str, unique_name: str) -> AsyncIterator[RedisSessionStore]:
    redis_store = RedisSessionStore(Redis.from_url(redis_url), RULES, key_prefix=unique_name)
    yield redis_store
    await redis_store.close()


def in_session(events: Sequence[Event], session_id: str) -> list[Event]:
    return [dataclasses.replace(e, user_session=session_id) for e in events]


def without_state(outcome: ApplyOutcome) -> ApplyOutcome:
    return dataclasses.replace(outcome, state=None)


def ev(session_id: str, event_id: str, seconds: int, **fields: Any) -> Event:
    defaults: dict[str, Any] = {"product_id": "p1", "category_id": "c1", "price": 9.99}
    return Event(event_id, at(seconds), "cart", session_id, **(defaults | fields))


# ---------------------------------------------------------------------------------------------
# Parity with the pure rules


@st.composite
def deliveries(draw: st.DrawFn) -> list[list[Event]]:
    """Batches of deliveries drawn from one event set: redeliveries, any order, late ones."""
    pool = draw(event_sets(max_span_ms=300_000, min_size=1, max_size=14))
    again = draw(st.lists(st.sampled_from(pool), max_size=10))
    sent = draw(st.permutations(pool + again))
    cuts = sorted(draw(st.lists(st.integers(0, len(sent)), max_size=6)))
    bounds = [0, *cuts, len(sent)]
    return [sent[a:b] for a, b in itertools.pairwise(bounds)]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(deliveries(), min_size=1, max_size=3))
async def test_lua_script_matches_the_pure_rules(
    store: RedisSessionStore, per_session: list[list[list[Event]]]
) -> None:
    sessions = [f"parity-{uuid.uuid4().hex}" for _ in per_session]
    states = {sid: WindowState.empty(sid) for sid in sessions}
    for step in range(max(len(batches) for batches in per_session)):
        updates = {
            sid: in_session(batches[step], sid)
            for sid, batches in zip(sessions, per_session, strict=True)
            if step < len(batches)
        }
        got = await store.apply(updates)
        for sid, events in updates.items():
            want = apply_events(states[sid], events, RULES)
            assert got[sid] == without_state(want)
            for kind in ("duplicates", "late", "overflow"):
                if getattr(want, kind):
                    hypothesis.event(f"has {kind}")
            states[sid] = want.state or states[sid]
    for sid in sessions:
        expected = None if states[sid].is_empty else states[sid].snapshot
        assert await store.get(sid) == expected


async def test_prices_survive_exactly(store: RedisSessionStore) -> None:
    prices = [0.1, 0.2, 19.99, 1e7, 123456.785, 3.3333333]
    events = [ev("money", f"e{i}", i, price=p) for i, p in enumerate(prices)]
    got = (await store.apply({"money": events}))["money"]
    want = apply_events(WindowState.empty("money"), events, RULES)
    assert got == without_state(want)
    assert [e.price for e in got.snapshot.events] == prices[-RULES.max_events :]


# ---------------------------------------------------------------------------------------------
# TTL


async def test_every_key_of_a_session_gets_the_gap_as_ttl(
    store: RedisSessionStore, client: Redis
) -> None:
    await store.apply({"ttl": [ev("ttl", "a", 0, user_id="u")]})
    keys = store.keys("ttl").all()
    assert await client.exists(*keys) == len(keys)
    for key in keys:
        assert 0 < await client.pttl(key) <= RULES.session_gap_ms


async def test_session_data_does_not_outlive_the_gap(
    redis_url: str, unique_name: str, client: Redis
) -> None:
    rules = dataclasses.replace(RULES, session_gap_ms=300)
    short = RedisSessionStore(Redis.from_url(redis_url), rules, key_prefix=unique_name)
    try:
        await short.apply({"s": [ev("s", "a", 0)]})
        await asyncio.sleep(0.2)
        await short.apply({"s": [ev("s", "b", 0)]})  # refresh: lives 300 ms from now
        await asyncio.sleep(0.2)
        assert await short.get("s") is not None
        await asyncio.sleep(0.25)
        assert await short.get("s") is None
        assert await client.exists(*short.keys("s").all()) == 0
        await short.apply({"d": [ev("d", "a", 0)]})
        await asyncio.sleep(0.2)
        await short.apply({"d": [ev("d", "a", 0)]})  # a duplicate does not refresh the TTL
        await asyncio.sleep(0.15)
        assert await short.get("d") is None
    finally:
        await short.close()


# ---------------------------------------------------------------------------------------------
# One round trip per micro-batch


def counting_connection() -> tuple[type[Connection], list[int]]:
    sends = [0]

    class CountingConnection(Connection):
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sends[0] += 1
            await super().send_packed_command(command, check_health)

    return CountingConnection, sends


async def evalsha_calls(client: Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_batch_is_one_round_trip(redis_url: str, unique_name: str, client: Redis) -> None:
    connection_class, sends = counting_connection()
    pool = ConnectionPool.from_url(redis_url, connection_class=connection_class)
    counted = RedisSessionStore(Redis(connection_pool=pool), RULES, key_prefix=unique_name)
    try:
        await counted.apply({"warm-up": [ev("warm-up", "a", 0)]})  # connect + load script
        batch = {f"s{i}": [ev(f"s{i}", f"e{j}", j) for j in range(1 + i % 3)] for i in range(64)}
        before_sends, before_calls = sends[0], await evalsha_calls(client)
        outcomes = await counted.apply(batch)
        assert sends[0] - before_sends == 1
        assert await evalsha_calls(client) - before_calls == 64
        assert all(len(outcomes[sid].accepted) == len(events) for sid, events in batch.items())
    finally:
        await counted.close()


# ---------------------------------------------------------------------------------------------
# Hostile session ids


WEIRD_IDS = ["{}", "}{", "{a}:w", "a\nb\r\n*3\r\n$4\r\nPING", "", " ", "セッション🛒", "x" * 10_240]


async def test_odd_session_ids_cannot_shape_keys(store: RedisSessionStore, client: Redis) -> None:
    prefix = store.keys("any").window.split(":", 1)[0]
    await store.apply({sid: [ev(sid, f"e-{i}", i)] for i, sid in enumerate(WEIRD_IDS)})
    keys = [k.decode() async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
    assert len(keys) == 5 * len(WEIRD_IDS)
    assert all(KEY_RE.match(k) for k in keys), keys
    for i, sid in enumerate(WEIRD_IDS):
        snapshot = await store.get(sid)
        assert snapshot is not None
        assert [(e.event_id, e.user_session) for e in snapshot.events] == [(f"e-{i}", sid)]
    for sid in WEIRD_IDS:
        assert len({key_slot(k.encode()) for k in store.keys(sid).all()}) == 1


# ---------------------------------------------------------------------------------------------
# Failures


async def test_recovers_after_the_script_cache_is_flushed(
    store: RedisSessionStore, client: Redis
) -> None:
    await store.apply({"s": [ev("s", "a", 0)]})
    await client.script_flush()
    out = await store.apply({"s": [ev("s", "b", 1), ev("s", "a", 0)], "t": [ev("t", "a", 0)]})
    assert [e.event_id for e in out["s"].accepted] == ["b"]
    assert [e.event_id for e in out["s"].duplicates] == ["a"]
    assert [e.event_id for e in out["t"].accepted] == ["a"]


async def test_unreachable_redis_raises_store_unavailable(unused_tcp_port: int) -> None:
    settings = RedisSettings(
        url=f"redis://127.0.0.1:{unused_tcp_port}/0",
        retries=1,
        backoff_base_s=0.01,
        socket_timeout_s=0.5,
    )
    dead = RedisSessionStore(redis_client(settings), RULES)
    try:
        assert not await dead.ping()
        with pytest.raises(StoreUnavailable):
            await dead.apply({"s": [ev("s", "a", 0)]})
        with pytest.raises(StoreUnavailable):
            await dead.get("s")
    finally:
        await dead.close()


async def test_tls_and_acl_credentials_from_settings(tmp_path: Path) -> None:
    tls = generate_test_certificates(tmp_path / "certs")
    server = EmbeddedRedis(
        username="app", password="s3cret-pass-word", tls=tls, log_dir=tmp_path / "redis"
    )
    with server:
        settings = RedisSettings(
            url=f"rediss://127.0.0.1:{server.port}/0",
            username="app",
            password=SecretStr("s3cret-pass-word"),
            ssl_ca_certs=tls.ca,
        )
        secure = create_store(settings, RULES)
        wrong = create_store(settings.model_copy(update={"password": SecretStr("nope")}), RULES)
        try:
            out = await secure.apply({"s": [ev("s", "a", 0)]})
            assert [e.event_id for e in out["s"].accepted] == ["a"]
            assert await secure.get("s") == out["s"].snapshot
            with pytest.raises(StoreRefused):  # a wrong password does not heal: fail fast
                await wrong.apply({"s": [ev("s", "b", 1)]})
        finally:
            await secure.close()
            await wrong.close()


# ---------------------------------------------------------------------------------------------
# Throughput (printed; run with -s to see it)


async def test_apply_throughput_64_sessions(store: RedisSessionStore) -> None:
    rounds, timings = 200, []
    for r in range(rounds):
        batch = {
            f"tp{i}": [ev(f"tp{i}", f"r{r}e{j}", r + j) for j in range(1 + (i + r) % 3)]
            for i in range(64)
        }
        start = time.perf_counter()
        await store.apply(batch)
        timings.append((time.perf_counter() - start) * 1000)
    p50 = statistics.median(timings)
    p95 = statistics.quantiles(timings, n=20)[-1]
    print(f"\napply(64 sessions x 1-3 events): p50 {p50:.2f} ms, p95 {p95:.2f} ms per batch")
    assert p50 < 250  # a sanity bound on a loaded 2-core machine, not a benchmark
