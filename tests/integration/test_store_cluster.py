"""The Redis session store on a real 3-master Redis Cluster: the same windows, verdicts and
snapshots as on one node; a slot moving to another node mid-stream is followed (MOVED/ASK),
not reported as an outage; the script cache of one node lost is reloaded."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot

from stream_app.core.config import RedisSettings
from stream_app.ingest.events import Event
from stream_app.sessions.store import RedisSessionStore, create_store, redis_client
from stream_app.sessions.windows import WindowState, apply_events
from tests.integration.redis_cluster import MASTERS, LocalRedisCluster
from tests.integration.test_store_redis import RULES, deliveries, ev, in_session, without_state

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def cluster_store(cluster: LocalRedisCluster, prefix: str) -> RedisSessionStore:
    client = redis_client(RedisSettings(url=cluster.url, key_prefix=prefix))
    assert isinstance(client, RedisCluster)
    return RedisSessionStore(client, RULES, key_prefix=prefix)


@pytest.fixture
async def stores(
    redis_url: str, redis_cluster: LocalRedisCluster, unique_name: str
) -> AsyncIterator[tuple[RedisSessionStore, RedisSessionStore]]:
    single = RedisSessionStore(Redis.from_url(redis_url), RULES, key_prefix=unique_name)
    clustered = cluster_store(redis_cluster, unique_name)
    yield single, clustered
    await single.close()
    await clustered.close()


def owners(cluster: LocalRedisCluster, store: RedisSessionStore, sids: Sequence[str]) -> set[int]:
    return {cluster.owner_of(key_slot(store.keys(sid).window.encode())) for sid in sids}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(deliveries(), min_size=3, max_size=6))
async def test_cluster_windows_and_verdicts_equal_single_node(
    stores: tuple[RedisSessionStore, RedisSessionStore], per_session: list[list[list[Event]]]
) -> None:
    single, clustered = stores
    sessions = [f"cl-{uuid.uuid4().hex}" for _ in per_session]
    for step in range(max(len(batches) for batches in per_session)):
        updates = {
            sid: in_session(batches[step], sid)
            for sid, batches in zip(sessions, per_session, strict=True)
            if step < len(batches)
        }
        assert await clustered.apply(updates) == await single.apply(updates)
    for sid in sessions:
        assert await clustered.get(sid) == await single.get(sid)


async def test_sessions_spread_over_every_master_and_a_batch_is_one_pipeline_per_node(
    redis_cluster: LocalRedisCluster, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = cluster_store(redis_cluster, unique_name)
    sessions = [f"spread-{i}" for i in range(64)]
    assert owners(redis_cluster, store, sessions) == set(range(MASTERS))
    sent: list[int] = []
    real = ClusterNode.execute_pipeline

    async def counted(node: ClusterNode, commands: list[Any]) -> bool:
        sent.append(len(commands))
        return await real(node, commands)

    monkeypatch.setattr(ClusterNode, "execute_pipeline", counted)
    try:
        await store.apply({sid: [ev(sid, "e1", 1)] for sid in sessions})  # loads caches
        sent.clear()
        got = await store.apply({sid: [ev(sid, "e2", 2)] for sid in sessions})
    finally:
        await store.close()
    assert all(outcome.snapshot.aggregates.n_events == 2 for outcome in got.values())
    assert len(sent) == MASTERS, "one pipeline per node per batch"
    assert sum(sent) == len(sessions)


async def test_a_slot_moving_mid_stream_is_followed_not_an_outage(
    redis_cluster: LocalRedisCluster, unique_name: str
) -> None:
    store = cluster_store(redis_cluster, unique_name)
    sid, other = "moving-session", "bystander"
    slot = key_slot(store.keys(sid).window.encode())
    source = redis_cluster.owner_of(slot)
    target = (source + 1) % MASTERS
    state = {s: WindowState.empty(s) for s in (sid, other)}
    counter = iter(range(1, 1000))

    async def apply_and_check() -> None:
        n = next(counter)
        updates = {s: [ev(s, f"e{n}", n), ev(s, f"e{n - 1}", n - 1)] for s in (sid, other)}
        got = await store.apply(updates)  # e{n-1} is a re-delivery (duplicate) from step 2 on
        for s, events in updates.items():
            want = apply_events(state[s], events, RULES)
            assert got[s] == without_state(want)
            state[s] = want.state or state[s]

    await apply_and_check()
    redirects_before = redirects_sent(redis_cluster, source)
    loop = asyncio.get_running_loop()
    steps: list[str] = []

    def between(step: str) -> None:  # runs in the migration thread; applies on the loop
        asyncio.run_coroutine_threadsafe(apply_and_check(), loop).result(timeout=30)
        steps.append(step)

    try:
        await asyncio.to_thread(redis_cluster.migrate_slot, slot, target, between)
        assert steps == ["migrating", "keys_moved", "assigned"]
        await apply_and_check()
        assert redis_cluster.owner_of(slot) == target
        on_target = redis_cluster.client(target).execute_command("CLUSTER COUNTKEYSINSLOT", slot)
        assert on_target == len(store.keys(sid).all())
        assert await store.get(sid) == state[sid].snapshot
    finally:
        await store.close()
    after = redirects_sent(redis_cluster, source)
    # The old owner answered ASK while the keys were in flight and MOVED afterwards: the
    # store got redirects and followed them (every apply above returned the right outcome).
    assert after["ASK"] > redirects_before["ASK"]
    assert after["MOVED"] > redirects_before["MOVED"]


def redirects_sent(cluster: LocalRedisCluster, index: int) -> dict[str, int]:
    stats = cluster.client(index).info("errorstats")
    return {kind: int(stats.get(f"errorstat_{kind}", {}).get("count", 0))
            for kind in ("ASK", "MOVED")}  # fmt: skip


async def test_create_store_speaks_cluster_and_reloads_a_lost_script_cache(
    redis_cluster: LocalRedisCluster, unique_name: str
) -> None:
    store = create_store(RedisSettings(url=redis_cluster.url, key_prefix=unique_name), RULES)
    assert isinstance(store, RedisSessionStore)
    try:
        assert await store.ping()
        sessions = [f"flush-{i}" for i in range(12)]
        await store.apply({s: [ev(s, "a", 1)] for s in sessions})
        for index in range(MASTERS):
            redis_cluster.client(index).script_flush()
        got = await store.apply({s: [ev(s, "b", 2)] for s in sessions})
        assert {o.snapshot.aggregates.n_events for o in got.values()} == {2}
    finally:
        await store.close()
