"""Redis clients by URL scheme: one node, a Redis Cluster, or a primary found through Sentinel.

* ``redis://host:port/db`` (``rediss://`` for TLS): ``redis.asyncio.Redis``;
* ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://``): ``RedisCluster``;
* ``redis+sentinel://host:port[,host:port...]/service[/db]`` (``rediss+sentinel://``):
  ``Sentinel(...).master_for(service)``.

The cluster nodes listed are only seeds: the client discovers the rest (``CLUSTER SLOTS``)
and follows ``MOVED``/``ASK`` redirects during resharding and failover by itself. Every
session's keys share one hash tag (``stream_app.core.keys``), so each window script runs on one
slot, and a pipeline of many sessions' scripts is split by node and sent to the nodes in
parallel. With Sentinel the client asks the sentinels for the current primary and asks again
after a failover. Credentials (``REDIS_USERNAME``/``REDIS_PASSWORD``) and TLS files apply to
the data nodes; Sentinel itself is reached without a password (``sentinel_kwargs`` carry only
the timeouts and TLS).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import unquote

from redis import exceptions as redis_errors
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff

from stream_app.core.config import RedisSettings
from stream_app.core.errors import ConfigError

T = TypeVar("T")
Topology = Literal["single", "cluster", "sentinel"]
RedisClient = Redis | RedisCluster

SINGLE_SCHEMES = ("redis", "rediss")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = {"single": 6379, "cluster": 6379, "sentinel": 26379}

# Errors worth a retry inside redis-py before we give up and raise StoreUnavailable.
RETRYABLE_ERRORS: tuple[type[redis_errors.RedisError], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
)
# A wrong password or a missing ACL permission does not heal with time: never retried.
CREDENTIAL_ERRORS = (redis_errors.AuthenticationError, redis_errors.AuthorizationError)


class StoreRetry(Retry):
    """redis-py's ``Retry`` (backoff, count, supported errors), minus credential errors,
    which redis-py files under ``ConnectionError``."""

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        def retryable(error: Exception) -> bool:
            if isinstance(error, CREDENTIAL_ERRORS):
                return False
            return is_retryable is None or is_retryable(error)

        return await super().call_with_retry(do, fail, retryable, with_failure_count)


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a ``REDIS_URL`` names. Credentials in the URL (``user:pass@``) are allowed, as
    redis-py allows them; ``REDIS_USERNAME``/``REDIS_PASSWORD`` take precedence."""

    topology: Topology
    tls: bool
    nodes: tuple[tuple[str, int], ...]
    db: int = 0
    service: str = ""  # Sentinel's name of the primary
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)


def parse_redis_url(url: str) -> RedisTarget:
    """Split a ``redis[s][+cluster|+sentinel]://`` URL; a ``ConfigError`` names the problem."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        raise ConfigError("REDIS_URL must look like redis://host:port/db")
    topology = _topology(scheme)
    netloc, _, path = rest.partition("/")
    userinfo, _, netloc = netloc.rpartition("@")
    username, _, password = (unquote(part) for part in userinfo.partition(":"))
    nodes = tuple(_host_port(part, DEFAULT_PORT[topology]) for part in netloc.split(","))
    parts = [unquote(p) for p in path.split("?")[0].split("/") if p]
    service = parts.pop(0) if topology == "sentinel" and parts else ""
    if topology == "sentinel" and not service:
        raise ConfigError("REDIS_URL redis+sentinel:// needs the service name: .../mymaster")
    db = _db(parts)
    if topology == "cluster" and db:
        raise ConfigError("REDIS_URL: a Redis Cluster has only database 0")
    if topology == "single" and len(nodes) > 1:
        raise ConfigError("REDIS_URL names several hosts: use redis+cluster:// or +sentinel://")
    tls = scheme.lower().startswith("rediss")
    return RedisTarget(topology, tls, nodes, db, service, username, password)


def _topology(scheme: str) -> Topology:
    lowered = scheme.lower()
    if lowered in SINGLE_SCHEMES:
        return "single"
    if lowered in CLUSTER_SCHEMES:
        return "cluster"
    if lowered in SENTINEL_SCHEMES:
        return "sentinel"
    known = ", ".join(f"{s}://" for s in SINGLE_SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES)
    raise ConfigError(f"REDIS_URL scheme {scheme!r} is not one of {known}")


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    host, port = text.strip(), default_port
    if host.startswith("["):  # [ipv6]:port
        host, _, tail = host[1:].partition("]")
        port_text = tail.removeprefix(":")
    elif host.count(":") == 1:
        host, port_text = host.split(":")
    else:
        port_text = ""
    if not host:
        raise ConfigError("REDIS_URL has an empty host")
    try:
        port = int(port_text) if port_text else port
    except ValueError:
        raise ConfigError(f"REDIS_URL has a bad port for host {host!r}") from None
    return host, port


def _db(parts: list[str]) -> int:
    if not parts:
        return 0
    if len(parts) > 1 or not parts[0].isdigit():
        raise ConfigError("REDIS_URL path must be a database number, e.g. /0")
    return int(parts[0])


def connection_options(settings: RedisSettings, target: RedisTarget) -> dict[str, Any]:
    """Timeouts, retry policy, credentials and TLS: the same for every topology."""
    retry = StoreRetry(
        ExponentialBackoff(cap=settings.backoff_cap_s, base=settings.backoff_base_s),
        settings.retries,
        supported_errors=RETRYABLE_ERRORS,
    )
    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
        "retry": retry,
    }
    if username := settings.username or target.username:
        options["username"] = username
    if password := settings.password.get_secret_value() or target.password:
        options["password"] = password
    if target.tls:
        options |= tls_options(settings)
    return options


def tls_options(settings: RedisSettings) -> dict[str, str]:
    files = {
        "ssl_ca_certs": settings.ssl_ca_certs,
        "ssl_certfile": settings.ssl_certfile,
        "ssl_keyfile": settings.ssl_keyfile,
    }
    return {key: str(value) for key, value in files.items() if value is not None}


async def answers(client: RedisClient) -> bool:
    """Redis replies to PING (an error of any kind means no: readiness, not diagnosis)."""
    try:
        return bool(await client.ping())
    except redis_errors.RedisError:
        return False


def redis_client(settings: RedisSettings) -> RedisClient:
    """A redis.asyncio client for ``settings.url``: one node, Cluster or Sentinel."""
    url = settings.url.strip()
    target = parse_redis_url(url)
    options = connection_options(settings, target)
    if target.topology == "single":
        return Redis.from_url(url, **options)
    if target.topology == "cluster":
        return cluster_client(target, options)
    return sentinel_client(target, settings, options)


def cluster_client(target: RedisTarget, options: dict[str, Any]) -> RedisCluster:
    seeds = [ClusterNode(host, port) for host, port in target.nodes]
    if target.tls:
        options = options | {"ssl": True}
    return RedisCluster(startup_nodes=seeds, **options)


def sentinel_client(target: RedisTarget, settings: RedisSettings, options: dict[str, Any]) -> Redis:
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
    }
    if target.tls:
        sentinel_kwargs |= {"ssl": True, **tls_options(settings)}
        options = options | {"ssl": True}
    sentinel = Sentinel(list(target.nodes), sentinel_kwargs=sentinel_kwargs, **options)
    return sentinel.master_for(target.service, db=target.db)
