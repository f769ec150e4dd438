"""Start-up checks of the session store, before the worker consumes anything.

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

from stream_app.config import RedisSettings
from stream_app.errors import SessionStoreError, StoreRefused, StoreUnavailable
from stream_app.store import RedisSessionStore, classify_redis_error, redis_client
from stream_app.windows import WindowRules

log = logging.getLogger(__name__)

PREFLIGHT_SESSION = "__intent_stream_preflight__"
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
    store = RedisSessionStore(redis_client(settings), rules, settings.key_prefix)
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
    """``check_store`` on a private event loop (the worker's loop does not exist yet)."""
    return asyncio.run(check_store(settings, rules))
