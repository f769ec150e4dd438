"""The in-memory session store: same rules as the pure functions, TTL on an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from stream_app.core.config import RedisSettings
from stream_app.core.errors import ConfigError, InvalidEvent
from stream_app.core.keys import session_keys, session_tag
from stream_app.ingest.events import Event
from stream_app.sessions.store import (
    InMemorySessionStore,
    RedisSessionStore,
    StoreRetry,
    create_store,
    decode_event,
    encode_event,
    redis_client,
)
from stream_app.sessions.windows import WindowRules, WindowState, apply_events

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
GAP_MS = 60_000
RULES = WindowRules(max_events=3, session_gap_ms=GAP_MS, max_seen_ids=50)


class FakeClock:
    """Processing time the test moves by hand (UTC epoch ms)."""

    def __init__(self, start: datetime) -> None:
        self.now_ms = int(start.timestamp() * 1000)

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, delta: timedelta) -> None:
        self.now_ms += int(delta / timedelta(milliseconds=1))


def ev(sid: str, event_id: str, seconds: int, event_type: str = "view") -> Event:
    event_ms = int((T0 + timedelta(seconds=seconds)).timestamp() * 1000)
    return Event(event_id, event_ms, event_type, sid, price=1.5)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def store(clock: FakeClock) -> InMemorySessionStore:
    return InMemorySessionStore(RULES, clock=clock)


async def test_apply_matches_the_pure_rules(store: InMemorySessionStore) -> None:
    batch1 = {"s1": [ev("s1", "a", 5), ev("s1", "b", 1)], "s2": [ev("s2", "x", 0)]}
    batch2 = {"s1": [ev("s1", "c", 3), ev("s1", "a", 5), ev("s1", "d", 9)]}
    await store.apply(batch1)
    outcomes = await store.apply(batch2)
    expected = apply_events(
        apply_events(WindowState.empty("s1"), batch1["s1"], RULES).state or WindowState.empty("s1"),
        batch2["s1"],
        RULES,
    )
    assert outcomes["s1"] == expected
    assert set(outcomes) == {"s1"}
    assert await store.get("s1") == expected.snapshot
    s2 = await store.get("s2")
    assert s2 is not None
    assert [e.event_id for e in s2.events] == ["x"]


async def test_unknown_session_has_no_snapshot(store: InMemorySessionStore) -> None:
    assert await store.get("nobody") is None
    out = await store.apply({"s": []})
    assert out["s"].snapshot.events == ()
    assert await store.get("s") is None


async def test_session_expires_one_gap_after_its_last_accepted_event(
    store: InMemorySessionStore, clock: FakeClock
) -> None:
    await store.apply({"s": [ev("s", "a", 0)]})
    clock.advance(timedelta(milliseconds=GAP_MS - 1))
    assert await store.get("s") is not None
    clock.advance(timedelta(milliseconds=1))
    assert await store.get("s") is None
    assert len(store) == 0


async def test_accepted_events_refresh_the_ttl_duplicates_do_not(
    store: InMemorySessionStore, clock: FakeClock
) -> None:
    await store.apply({"s": [ev("s", "a", 0)]})
    clock.advance(timedelta(seconds=40))
    await store.apply({"s": [ev("s", "b", 1)]})  # accepted: lives until 40 s + gap
    clock.advance(timedelta(seconds=40))
    assert await store.get("s") is not None
    await store.apply({"s": [ev("s", "b", 1)]})  # duplicate: no refresh
    clock.advance(timedelta(seconds=20))
    assert await store.get("s") is None


async def test_an_expired_session_starts_afresh(
    store: InMemorySessionStore, clock: FakeClock
) -> None:
    await store.apply({"s": [ev("s", "a", 0), ev("s", "b", 1)]})
    clock.advance(timedelta(milliseconds=GAP_MS))
    out = (await store.apply({"s": [ev("s", "a", 0)]}))["s"]
    assert [e.event_id for e in out.accepted] == ["a"]
    assert out.snapshot.aggregates.n_events == 1


async def test_expiry_drops_only_stale_sessions(
    store: InMemorySessionStore, clock: FakeClock
) -> None:
    await store.apply({"old": [ev("old", "a", 0)]})
    clock.advance(timedelta(seconds=30))
    await store.apply({"new": [ev("new", "a", 0)]})
    clock.advance(timedelta(seconds=30))
    assert len(store) == 1
    assert await store.get("new") is not None


async def test_ping_and_close(store: InMemorySessionStore) -> None:
    await store.apply({"s": [ev("s", "a", 0)]})
    assert await store.ping()
    await store.close()
    assert await store.get("s") is None


def test_create_store_picks_the_backend_from_the_url() -> None:
    assert isinstance(create_store(RedisSettings(url="memory://"), RULES), InMemorySessionStore)
    settings = RedisSettings(url="redis://127.0.0.1:1/0", password=SecretStr("pw"))
    assert isinstance(create_store(settings, RULES), RedisSessionStore)  # connects lazily


@pytest.mark.parametrize("url", ["", "http://x", "localhost:6379"])
def test_create_store_rejects_other_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        create_store(RedisSettings(url=url), RULES)


async def test_redis_client_takes_retries_timeouts_and_tls_from_settings() -> None:
    settings = RedisSettings(
        url="rediss://cache.example:6380/0",
        username="app",
        password=SecretStr("pw"),
        ssl_ca_certs=Path("/etc/ssl/ca.pem"),
        socket_timeout_s=1.5,
        retries=3,
    )
    client = redis_client(settings)  # nothing connects until the first command
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["username"], kwargs["password"]) == ("app", "pw")
        assert kwargs["ssl_ca_certs"] == "/etc/ssl/ca.pem"
        assert kwargs["socket_timeout"] == 1.5
        retry = kwargs["retry"]
        assert isinstance(retry, StoreRetry)
        assert retry.get_retries() == 3
    finally:
        await client.aclose()


@pytest.mark.parametrize("session_id", ["", "{}", "a:b}\n{c", "セッション", "x" * 10_000])
def test_session_keys_are_hashed_and_share_one_hash_tag(session_id: str) -> None:
    keys = session_keys("is", session_id).all()
    tag = session_tag(session_id)
    assert len(tag) == 32
    assert int(tag, 16) >= 0
    assert keys == tuple(f"is:{{{tag}}}:{part}" for part in "wsapc")
    assert session_tag(session_id + " ") != tag


def test_stored_events_keep_optional_text_and_old_records_still_decode() -> None:
    event = Event("e1", 1_000, "view", "s1", "u1", "p1", "", "Home/Bags/", "", 9.99, "",
                  "Waterproof Backpack", "desktop", "Organic Search", "United States")  # fmt: skip
    assert decode_event("s1", encode_event(event)) == event
    old_record = b'["e1",1000,"view","u1","p1","","Home/Bags/","",9.99,""]'
    assert decode_event("s1", old_record) == Event(
        "e1", 1_000, "view", "s1", "u1", "p1", "", "Home/Bags/", "", 9.99, ""
    )
    with pytest.raises(InvalidEvent, match="bad_stored_event"):
        decode_event("s1", b'["e1",1000,"view"]')
