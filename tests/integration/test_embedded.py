"""The embedded servers behave like the real ones the app and the tests depend on."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer
from confluent_kafka import Producer
from redis.backoff import NoBackoff
from redis.retry import Retry

from stream_app.core.topics import ensure_topics, read_all, wait_for_topics
from stream_app.local.embedded import (
    EmbeddedBroker,
    EmbeddedRedis,
    EmbeddedServerError,
    find_redis_server,
    free_port,
    generate_test_certificates,
)

pytestmark = pytest.mark.integration


def _produce(bootstrap: str, topic: str, count: int) -> set[bytes]:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    values = {f"value-{i}".encode() for i in range(count)}
    for i, value in enumerate(sorted(values)):
        producer.produce(topic, key=f"session-{i % 37}".encode(), value=value)
    assert producer.flush(30) == 0, "messages still in the producer queue after 30 s"
    return values


# For clients that are expected to fail: redis-py would otherwise retry for seconds.
NO_RETRY = Retry(NoBackoff(), 0)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); only a reaped child is truly gone.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text(encoding="utf-8")


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port that something else is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        yield blocker.getsockname()[1]


# --------------------------------------------------------------------------- both

SERVERS = [EmbeddedBroker, EmbeddedRedis]


@pytest.mark.parametrize("server_class", SERVERS)
def test_a_taken_port_that_was_asked_for_fails_loudly(
    server_class: type[EmbeddedBroker | EmbeddedRedis], taken_port: int, tmp_path: Path
) -> None:
    server = server_class(port=taken_port, log_dir=tmp_path, start_timeout_s=15)
    with pytest.raises(EmbeddedServerError, match="exited at start-up"):
        server.start()
    assert not server.running


@pytest.mark.parametrize("server_class", SERVERS)
def test_a_picked_port_taken_meanwhile_is_replaced(
    server_class: type[EmbeddedBroker | EmbeddedRedis],
    taken_port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Simulate losing the race between picking a free port and the server binding it.
    ports = iter([taken_port, free_port()])
    monkeypatch.setattr("stream_app.local.embedded.free_port", lambda: next(ports))
    with server_class(log_dir=tmp_path, start_timeout_s=15) as server:
        assert server.port != taken_port
        assert server.running


# --------------------------------------------------------------------------- broker


def test_produced_messages_are_all_read_back(kafka_bootstrap: str, unique_name: str) -> None:
    ensure_topics(kafka_bootstrap, {unique_name: 6})
    sent = _produce(kafka_bootstrap, unique_name, 600)

    received = read_all(kafka_bootstrap, unique_name, timeout_s=30, expected=len(sent))

    assert sorted(m.value() or b"" for m in received) == sorted(sent)
    assert len({m.partition() for m in received}) > 1, "keys should spread over partitions"


def test_ensure_topics_is_idempotent(kafka_bootstrap: str, unique_name: str) -> None:
    topics = {f"{unique_name}-a": 3, f"{unique_name}-b": 1}
    ensure_topics(kafka_bootstrap, topics)
    ensure_topics(kafka_bootstrap, topics)  # existing topics are fine

    assert wait_for_topics(kafka_bootstrap, topics, timeout_s=10) == topics


def test_read_all_stops_when_idle_on_an_empty_topic(kafka_bootstrap: str, unique_name: str) -> None:
    ensure_topics(kafka_bootstrap, {unique_name: 2})
    started = time.monotonic()

    assert read_all(kafka_bootstrap, unique_name, timeout_s=20, idle_s=1.0) == []
    assert time.monotonic() - started < 10


def test_read_all_with_a_short_idle_pause_still_reads_what_is_there(
    kafka_bootstrap: str, unique_name: str
) -> None:
    """A fresh consumer's first fetch takes about a second; an idle pause shorter than
    that must not end the read of a topic that holds messages (it used to return [] and
    made the tests that poll the scores topic time out now and then)."""
    ensure_topics(kafka_bootstrap, {unique_name: 2})
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for value in (b"first", b"second"):  # one partition full, the other empty
        producer.produce(unique_name, value, partition=0)
    assert producer.flush(10) == 0

    for _ in range(3):
        messages = read_all(kafka_bootstrap, unique_name, timeout_s=20, idle_s=0.2)
        assert [m.value() for m in messages] == [b"first", b"second"]


@pytest.mark.timeout(120)
async def test_aiokafka_consumer_group_joins_quickly(
    kafka_bootstrap: str, unique_name: str, record_property: Callable[[str, object], None]
) -> None:
    """Faust sits on aiokafka: with 10 s session/rebalance timeouts a join takes seconds."""
    ensure_topics(kafka_bootstrap, {unique_name: 4})
    sent = _produce(kafka_bootstrap, unique_name, 200)
    consumer = AIOKafkaConsumer(
        unique_name,
        bootstrap_servers=kafka_bootstrap,
        group_id=unique_name,
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
        rebalance_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
    )
    started = time.monotonic()
    await consumer.start()
    try:
        received: list[bytes] = []
        join_s: float | None = None
        while len(received) < len(sent) and time.monotonic() - started < 90:
            batches = await consumer.getmany(timeout_ms=500)
            if join_s is None and consumer.assignment():
                join_s = time.monotonic() - started
            received += [r.value for records in batches.values() for r in records if r.value]
    finally:
        await consumer.stop()

    record_property("aiokafka_join_s", join_s)
    print(f"aiokafka group join took {join_s:.1f} s")
    assert sorted(received) == sorted(sent)
    assert join_s is not None
    assert join_s < 30


def test_broker_stop_leaves_no_process(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_dir=tmp_path)
    with broker:
        pid = broker.pid
        assert pid is not None
        assert _process_alive(pid)
    assert not _process_alive(pid)
    assert not broker.running


# --------------------------------------------------------------------------- redis


def test_session_redis_answers(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping()
    finally:
        client.close()


def test_redis_restart_keeps_the_same_url(tmp_path: Path) -> None:
    with EmbeddedRedis(log_dir=tmp_path) as server:
        url = server.url
        client = redis.Redis.from_url(url, socket_timeout=2, retry=NO_RETRY)
        client.set("k", "v")
        server.stop()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        server.start()

        assert server.url == url
        assert client.ping()  # the same client reconnects on the same port
        assert client.get("k") is None  # no persistence: a restart starts empty
        client.close()


def test_redis_acl_user_and_password(tmp_path: Path) -> None:
    password = "p@ss/word:with#odd chars"
    with EmbeddedRedis(log_dir=tmp_path, username="app", password=password) as server:
        assert redis.Redis.from_url(server.url).ping()
        wrong = redis.Redis(
            host="127.0.0.1", port=server.port, username="app", password="nope", retry=NO_RETRY
        )
        with pytest.raises(redis.AuthenticationError):
            wrong.ping()
        assert password not in server.redacted_url
        assert password not in (tmp_path / "redis.log").read_text(encoding="utf-8")


def test_redis_over_tls(tmp_path: Path) -> None:
    tls = generate_test_certificates(tmp_path / "certs")
    with EmbeddedRedis(log_dir=tmp_path, tls=tls, password="tls-password") as server:
        assert server.url.startswith("rediss://")
        client = redis.Redis.from_url(server.url, ssl_ca_certs=str(tls.ca))
        assert client.ping()
        plain = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2, retry=NO_RETRY)
        with pytest.raises(redis.ConnectionError):
            plain.ping()


def test_missing_redis_binary_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("stream_app.local.embedded.BUNDLED_REDIS_SERVERS", ())
    with pytest.raises(EmbeddedServerError, match="apt-get install redis-server"):
        find_redis_server()
