"""The Redis session store through Sentinel: ``redis+sentinel://`` finds the primary by name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_app.core.config import RedisSettings
from stream_app.local.embedded import EmbeddedRedis
from stream_app.sessions.store import RedisSessionStore, create_store
from stream_app.sessions.windows import WindowState, apply_events
from tests.integration.redis_cluster import SentinelServer
from tests.integration.test_store_redis import RULES, ev, without_state

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture(scope="module")
def sentinel_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base: Path = tmp_path_factory.mktemp("sentinel")
    with EmbeddedRedis(log_dir=base / "primary") as primary:
        sentinel = SentinelServer(primary.port, "intent", log_dir=base / "sentinel")
        with sentinel:
            yield f"redis+sentinel://127.0.0.1:{sentinel.port}/intent/0"


async def test_store_reaches_the_primary_sentinel_names(
    sentinel_url: str, unique_name: str
) -> None:
    store = create_store(RedisSettings(url=sentinel_url, key_prefix=unique_name), RULES)
    assert isinstance(store, RedisSessionStore)
    events = [ev("s", "a", 1), ev("s", "b", 2), ev("s", "a", 1)]
    try:
        assert await store.ping()
        got = await store.apply({"s": events})
        assert got["s"] == without_state(apply_events(WindowState.empty("s"), events, RULES))
        assert await store.get("s") == got["s"].snapshot
    finally:
        await store.close()
