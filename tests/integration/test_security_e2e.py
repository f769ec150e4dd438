"""A real worker against a TLS-only, ACL-protected redis-server, with pseudonymisation on.

Checks, end to end: the worker connects over ``rediss://`` (CA made here) as an ACL user;
nobody without the password or without TLS gets in; no raw user or session id reaches Redis
or ``intent-scores``; every Redis key expires within the session gap; and neither secret ever
shows in the worker's log, ``/metrics``, ``/health`` or ``repr(Settings)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from pydantic import SecretStr

from stream_app.core.config import PrivacySettings, RedisSettings, Settings
from stream_app.core.topics import read_all
from stream_app.ingest.privacy import Pseudonymizer
from stream_app.local.embedded import EmbeddedRedis, generate_test_certificates
from stream_app.local.stack import LocalStack
from stream_app.sessions.windows import WindowRules, WindowSnapshot, expected_window
from tests.integration.fault_tools import (
    TrackedProducer,
    assert_complete,
    http_get,
)
from tests.integration.helpers import load_messages, stack_settings, valid_events, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

USERNAME = "intent-worker"
# Characters that break naive URL or config quoting, so the test also covers escaping.
REDIS_SECRET = "r3dis-S3cret #:@/ 'q' \"dq\""
PSEUDONYM_KEY = "pseudo-key-5f1c9a0e7b2d4c68"
PARTITIONS = 4


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    tls = generate_test_certificates(tmp_path / "tls")
    server = EmbeddedRedis(
        tls=tls, username=USERNAME, password=REDIS_SECRET, log_dir=tmp_path / "redis"
    )
    with server:
        yield server


def _secure_settings(base: Settings, server: EmbeddedRedis) -> Settings:
    assert server.tls is not None
    assert server.tls.ca is not None
    redis_settings = RedisSettings(
        url=f"rediss://127.0.0.1:{server.port}/0",
        username=USERNAME,
        password=SecretStr(REDIS_SECRET),
        ssl_ca_certs=server.tls.ca,
        key_prefix=base.redis.key_prefix,
    )
    privacy = PrivacySettings(pseudonymize_key=SecretStr(PSEUDONYM_KEY))
    return base.model_copy(update={"redis": redis_settings, "privacy": privacy})


def _secure_env(settings: Settings, model_dir: Path) -> dict[str, str]:
    assert settings.redis.ssl_ca_certs is not None
    return worker_env(
        settings,
        model_dir,
        REDIS_USERNAME=USERNAME,
        REDIS_PASSWORD=REDIS_SECRET,
        REDIS_SSL_CA_CERTS=str(settings.redis.ssl_ca_certs),
        PRIVACY_PSEUDONYMIZE_KEY=PSEUDONYM_KEY,
        WORKER_LOG_LEVEL="DEBUG",  # the chattiest level is where a secret would leak
    )


def _pseudonymised_windows(
    messages: list[tuple[bytes | None, bytes]], pseudonymizer: Pseudonymizer
) -> dict[str, WindowSnapshot]:
    windows = {}
    for sid, events in valid_events(messages).items():
        alias = pseudonymizer.pseudonym(sid)
        windows[alias] = expected_window(
            alias, [pseudonymizer.apply(e) for e in events], WindowRules()
        )
    return windows


def _admin(server: EmbeddedRedis) -> redis.Redis:
    assert server.tls is not None
    return redis.Redis(
        host="127.0.0.1",
        port=server.port,
        username=USERNAME,
        password=REDIS_SECRET,
        ssl=True,
        ssl_ca_certs=str(server.tls.ca),
    )


def _key_contents(client: redis.Redis, key: bytes) -> list[Any]:
    kind = client.type(key)
    if kind == b"zset":
        return list(client.zrange(key, 0, -1))
    if kind == b"set":
        return list(client.smembers(key))
    if kind == b"hash":
        return [x for kv in client.hgetall(key).items() for x in kv]
    if kind == b"string":  # the read API's latest score (a JSON record)
        return [client.get(key)]
    raise AssertionError(f"unexpected key type {kind!r} for {key!r}")


def _assert_nobody_else_gets_in(server: EmbeddedRedis) -> None:
    assert server.tls is not None
    anonymous = redis.Redis(host="127.0.0.1", port=server.port, ssl=True,
                            ssl_ca_certs=str(server.tls.ca))  # fmt: skip
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    wrong = redis.Redis(host="127.0.0.1", port=server.port, username=USERNAME, password="guess",
                        ssl=True, ssl_ca_certs=str(server.tls.ca))  # fmt: skip
    with pytest.raises(redis.exceptions.AuthenticationError):
        wrong.ping()
    plaintext = redis.Redis(host="127.0.0.1", port=server.port, username=USERNAME,
                            password=REDIS_SECRET, socket_timeout=2)  # fmt: skip
    with pytest.raises(redis.exceptions.ConnectionError):
        plaintext.ping()


def test_worker_over_tls_with_acl_user_keeps_ids_pseudonymous_and_secrets_hidden(
    kafka_bootstrap: str,
    unique_name: str,
    model_dir: Path,
    rees46_path: Path,
    tls_redis: EmbeddedRedis,
    tmp_path: Path,
) -> None:
    _assert_nobody_else_gets_in(tls_redis)
    base = stack_settings(kafka_bootstrap, "redis://unused", unique_name, PARTITIONS)
    settings = _secure_settings(base, tls_redis)
    messages = load_messages(rees46_path, limit=300)
    raw_events = valid_events(messages)
    raw_sessions = set(raw_events)
    raw_users = {e.user_id for events in raw_events.values() for e in events if e.user_id}
    expected = _pseudonymised_windows(messages, Pseudonymizer(PSEUDONYM_KEY))

    with LocalStack(settings, worker_env=_secure_env(settings, model_dir),
                    work_dir=tmp_path) as stack:  # fmt: skip
        stack.wait_healthy()
        worker = stack.processes[0]
        TrackedProducer(kafka_bootstrap, settings.kafka.events_topic).send(messages)
        assert_complete(stack, expected)  # read back through rediss:// as the ACL user

        # Redis: every key expires within the session gap and holds no raw id.
        gap_s = settings.window.session_gap_s
        client = _admin(tls_redis)
        keys = list(client.scan_iter(match=f"{settings.redis.key_prefix}:*", count=1000))
        assert len(keys) >= len(expected) * 3
        for key in keys:
            # Windows expire with the session gap; the read API's latest scores with theirs.
            ttl_bound = settings.api.score_ttl_s if b":latest:" in key else gap_s
            assert 0 < client.ttl(key) <= ttl_bound, key
            for item in _key_contents(client, key):
                _assert_no_raw_ids(item, raw_sessions, raw_users)

        # intent-scores: keys and values only carry pseudonyms.
        scores = read_all(kafka_bootstrap, settings.kafka.scores_topic, 30)
        assert scores
        for message in scores:
            _assert_no_raw_ids(message.key() or b"", raw_sessions, raw_users)
            _assert_no_raw_ids(message.value() or b"", raw_sessions, raw_users)
            record = orjson.loads(message.value() or b"")
            assert record["session_id"].startswith("p-")
            assert record["user_id"] == "" or record["user_id"].startswith("p-")

        # Secrets: nowhere an operator or a scraper can see.
        exposed = {
            "log": worker.log_path.read_bytes(),
            "/metrics": http_get(worker, "/metrics")[1],
            "/health": http_get(worker, "/health")[1],
            "repr(Settings)": repr(settings).encode(),
            "str(Settings)": str(settings).encode(),
            "Settings json": settings.model_dump_json().encode(),
        }
    for where, text in exposed.items():
        assert text, f"{where} is empty: nothing was checked"
        for secret in (REDIS_SECRET, PSEUDONYM_KEY):
            assert secret.encode() not in text, f"a secret leaked into {where}"


def _assert_no_raw_ids(data: bytes, sessions: set[str], users: set[str]) -> None:
    for session in sessions:
        assert session.encode() not in data, f"raw session id {session} in {data[:120]!r}"
    # User ids are short digit strings: look for them as whole values, not substrings.
    tokens = {data, *re.split(rb"[^A-Za-z0-9_.-]+", data)}
    leaked = {u for u in users if u.encode() in tokens}
    assert not leaked, f"raw user ids {sorted(leaked)[:3]} in {data[:120]!r}"
