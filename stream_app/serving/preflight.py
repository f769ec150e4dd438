"""Start-up checks of the session store, before the worker consumes anything.

* The broker must answer a metadata request within ``BROKER_TIMEOUT_S``.
* Redis must answer within ``REDIS_SOCKET_TIMEOUT_S`` (and its retries): else the start fails
  with one line (exit 2) instead of a worker that stalls from its first event.
* The worker's ACL user must be allowed to run the window script on its keys: a NOPERM at
  start fails the start with one line naming the permission to grant.
* ``maxmemory-policy`` should be ``noeviction``: an eviction policy can drop one of a session's
  five keys and not the others (a window that forgets its seen ids counts re-delivered events
  twice). Any other policy, or a server that hides its configuration, gets a WARNING.
"""

from __future__ import annotations

import asyncio
import logging

from redis import exceptions as redis_errors

from stream_app.core.config import KafkaSettings, RedisSettings
from stream_app.core.errors import ConfigError, SessionStoreError, StoreRefused, StoreUnavailable
from stream_app.sessions.store import RedisSessionStore, classify_redis_error, redis_client
from stream_app.sessions.windows import WindowRules

log = logging.getLogger(__name__)

PREFLIGHT_SESSION = "__intent_stream_preflight__"
BROKER_TIMEOUT_S = 5.0
SAFE_POLICY = "noeviction"


def eviction_warning(policy: str | None) -> str | None:
    """The warning to log for a ``maxmemory-policy`` value (None: nothing to say)."""
    if policy == SAFE_POLICY:
        return None
    if policy is None:
        return (
            "cannot read Redis maxmemory-policy (CONFIG GET refused); make sure it is "
            "noeviction: an evicted key can make a window count re-delivered events twice"
        )
    return (
        f"Redis maxmemory-policy is {policy!r}, not noeviction: under memory pressure Redis may "
        "evict one of a session's keys and not the others, and the window then counts "
        "re-delivered events twice; set maxmemory-policy noeviction (see docs/operations.md)"
    )


async def check_store(settings: RedisSettings, rules: WindowRules) -> str | None:
    """Raise ``StoreUnavailable`` / ``StoreRefused`` if the worker cannot use this Redis;
    return the eviction warning, if any (also logged)."""
    quick = settings.model_copy(update={"retries": min(settings.retries, 1)})
    store = RedisSessionStore(redis_client(quick), rules, settings.key_prefix)
    try:
        # The real script on a dedicated session with no events: reads its keys, writes none.
        outcome = (await store.apply({PREFLIGHT_SESSION: ()}))[PREFLIGHT_SESSION]
        if isinstance(outcome, SessionStoreError):
            raise StoreRefused(f"the window script fails on this server: {outcome}")
        warning = eviction_warning(await _eviction_policy(store))
    finally:
        await store.close()
    if warning:
        log.warning(warning)
    return warning


async def _eviction_policy(store: RedisSessionStore) -> str | None:
    try:
        reply = await store.client.config_get("maxmemory-policy")
    except redis_errors.RedisError as exc:
        if isinstance(classify_redis_error(exc, "config get"), StoreUnavailable):
            raise StoreUnavailable(f"redis config get failed: {exc}") from exc
        return None  # managed Redis or a restricted ACL user: CONFIG is not ours to read
    value = reply.get("maxmemory-policy") if isinstance(reply, dict) else None
    return value.decode() if isinstance(value, bytes) else value


def run_checks(settings: RedisSettings, rules: WindowRules) -> str | None:
    """``check_store`` on a private event loop (the worker's loop does not exist yet); its
    failures become one-line ``ConfigError`` messages naming what to fix."""
    try:
        return asyncio.run(check_store(settings, rules))
    except StoreUnavailable as exc:
        raise ConfigError(f"Redis is not reachable ({exc}); check REDIS_URL") from None
    except StoreRefused as exc:
        raise ConfigError(
            f"Redis refuses the worker ({exc}); grant the ACL user +evalsha +script|load "
            f"on ~{settings.key_prefix}:* or fix REDIS_USERNAME/REDIS_PASSWORD"
        ) from None


def check_broker(settings: KafkaSettings, timeout_s: float = BROKER_TIMEOUT_S) -> None:
    """The broker answers a metadata request within ``timeout_s``, else ``ConfigError``."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from stream_app.core.topics import client_config, security_config

    config = client_config(settings.bootstrap_servers, security_config(settings))
    try:
        AdminClient(config).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ConfigError(
            f"cannot reach the broker at {settings.bootstrap_servers} within {timeout_s:g} s "
            f"({exc.args[0].str() if exc.args else exc}); check KAFKA_BOOTSTRAP_SERVERS"
        ) from None


def check_tls_files(kafka: KafkaSettings, redis: RedisSettings) -> None:
    """Every TLS file a setting names exists (checked before any connection is tried)."""
    named = {
        "KAFKA_SSL_CAFILE": kafka.ssl_cafile,
        "KAFKA_SSL_CERTFILE": kafka.ssl_certfile,
        "KAFKA_SSL_KEYFILE": kafka.ssl_keyfile,
        "REDIS_SSL_CA_CERTS": redis.ssl_ca_certs,
        "REDIS_SSL_CERTFILE": redis.ssl_certfile,
        "REDIS_SSL_KEYFILE": redis.ssl_keyfile,
    }
    for variable, path in named.items():
        if path is not None and not path.is_file():
            raise ConfigError(f"{variable}={path}: no such file; point it at a PEM file")
