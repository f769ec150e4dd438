"""``REDIS_URL`` schemes: one node, Cluster and Sentinel (parsing and client choice only;
tests/integration/test_store_cluster.py and test_store_sentinel.py talk to real servers)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis, RedisCluster

from stream_app.core.config import RedisSettings
from stream_app.core.errors import ConfigError
from stream_app.core.redis_connect import RedisTarget, parse_redis_url, redis_client
from stream_app.sessions.store import create_store
from stream_app.sessions.windows import WindowRules


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("redis://r:6380/2", RedisTarget("single", False, (("r", 6380),), 2)),
        ("rediss://r", RedisTarget("single", True, (("r", 6379),), 0)),
        (
            "redis+cluster://a:7000,b:7001,[::1]:7002",
            RedisTarget("cluster", False, (("a", 7000), ("b", 7001), ("::1", 7002))),
        ),
        ("rediss+cluster://a", RedisTarget("cluster", True, (("a", 6379),))),
        (
            "redis+sentinel://s1,s2:26380/mymaster/3",
            RedisTarget("sentinel", False, (("s1", 26379), ("s2", 26380)), 3, "mymaster"),
        ),
    ],
)
def test_urls_name_topology_nodes_and_database(url: str, want: RedisTarget) -> None:
    assert parse_redis_url(url) == want


def test_credentials_in_the_url_are_read_but_never_shown() -> None:
    target = parse_redis_url("redis+cluster://app:s%40cret@a:7000")
    assert (target.username, target.password) == ("app", "s@cret")
    assert "cret" not in repr(target)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://x", "scheme 'http'"),
        ("redis+cluster://a:7000/1", "only database 0"),
        ("redis+sentinel://s1:26379", "service name"),
        ("redis://a:1,b:2/0", "several hosts"),
        ("redis://a:port/0", "bad port"),
        ("redis://a/zero", "database number"),
        ("localhost:6379", "must look like"),
    ],
)
def test_bad_urls_are_one_line_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_redis_url(url)
    with pytest.raises(ConfigError, match=message):
        create_store(RedisSettings(url=url), WindowRules())


async def test_each_scheme_builds_its_client_with_the_settings_credentials() -> None:
    secret = SecretStr("pw-from-settings")
    cluster = redis_client(RedisSettings(url="redis+cluster://127.0.0.1:1", password=secret))
    assert isinstance(cluster, RedisCluster)
    (seed,) = cluster.nodes_manager.startup_nodes.values()
    assert (seed.host, seed.port) == ("127.0.0.1", 1)
    assert seed.connection_kwargs["password"] == "pw-from-settings"
    sentinel = redis_client(RedisSettings(url="redis+sentinel://127.0.0.1:1/m", password=secret))
    assert isinstance(sentinel, Redis)
    assert sentinel.connection_pool.connection_kwargs["password"] == "pw-from-settings"
    assert sentinel.connection_pool.service_name == "m"  # type: ignore[attr-defined]
    await cluster.aclose()
    await sentinel.aclose()
