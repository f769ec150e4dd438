"""Issue 8: each stage's failure policy, through real workers, the real broker and real Redis.

Each test injects one failure and checks the stated policy (README "Failure policy"):
retry with a bound then fail fast, never a silent stall, never a healthy session
dead-lettered, a bounded shutdown. Run with ``pytest -m faults``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
import redis

from stream_app.core.config import Settings
from stream_app.core.keys import session_keys
from stream_app.core.topics import read_all
from stream_app.ingest.dlq import parse_dead_letter
from stream_app.local.embedded import EmbeddedBroker, EmbeddedRedis
from stream_app.local.stack import LocalStack, WorkerProcess
from tests.integration.fault_tools import (
    TrackedProducer,
    committed_offsets,
    http_get,
    rss_kib,
    wait_until,
)
from tests.integration.helpers import stack_settings, wait_for_scores, worker_env

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

PARTITIONS = 2


def _view(session: str, at_ms: int | None = None, **extra: object) -> tuple[bytes, bytes]:
    event = {"event_time": at_ms or int(time.time() * 1000), "event_type": "view",
             "product_id": "1", "user_session": session, **extra}  # fmt: skip
    return session.encode(), orjson.dumps(event)


def _status(process: WorkerProcess, path: str) -> int:
    return http_get(process, path)[0]


def _exit_status(process: WorkerProcess, timeout_s: float) -> tuple[int, float]:
    assert process.proc is not None
    started = time.monotonic()
    code = process.proc.wait(timeout_s)
    return code, time.monotonic() - started


# ------------------------------------------------- 5. poison message; fail fast, not restart


def test_a_message_with_a_huge_key_is_dead_lettered_and_every_later_session_is_scored(
    kafka_bootstrap: str, redis_url: str, unique_name: str, model_dir: Path, tmp_path: Path
) -> None:
    settings = stack_settings(kafka_bootstrap, redis_url, unique_name, PARTITIONS)
    poison = (b"k" * 950_000, b"x" * 100_000)  # a legal Kafka message: key 950 KB
    healthy = [_view(f"after-poison-{i}") for i in range(90)]
    with LocalStack(settings, worker_env=worker_env(settings, model_dir),
                    work_dir=tmp_path) as stack:  # fmt: skip
        stack.wait_healthy(assigned=True)
        TrackedProducer(kafka_bootstrap, settings.kafka.events_topic).send([poison, *healthy])
        expected = {key.decode(): 1 for key, _ in healthy}
        latest = wait_for_scores(kafka_bootstrap, settings.kafka.scores_topic, expected, 90)
        missing = set(expected) - set(latest)
        assert not missing, f"{len(missing)} of 90 sessions after the poison message not scored"
        letters = read_all(kafka_bootstrap, settings.kafka.dlq_topic, 30, expected=1)
        record = parse_dead_letter(letters[0].value() or b"")
        assert record["reason"] == "too_large"
        assert record["key_truncated"] is True
        assert len(letters[0].key() or b"") <= 1024
        assert stack.processes[0].running


def _send_scored_and_committed(
    producer: TrackedProducer, settings: Settings, group: str, events: list[tuple[bytes, bytes]]
) -> None:
    """Send single-event sessions, then wait until each is scored and all are committed."""
    bootstrap, topic = producer.bootstrap, producer.topic
    producer.send(events)
    wait_for_scores(bootstrap, settings.kafka.scores_topic,
                    {k.decode(): 1 for k, _ in events}, 60)  # fmt: skip
    wait_until(lambda: sum(committed_offsets(bootstrap, group, topic,
                                             PARTITIONS).values()) == len(events),
               20, "the first events to be committed")  # fmt: skip


def _acl_user(client: redis.Redis, name: str, password: str, prefix: str, rules: str) -> None:
    client.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}",
                           f"~{prefix}:*", *rules.split())  # fmt: skip


def test_redis_refusing_the_worker_at_run_time_exits_non_zero_and_nothing_is_lost(
    kafka_bootstrap: str, redis_url: str, unique_name: str, model_dir: Path, tmp_path: Path
) -> None:
    """An error in ingest ends the process (exit 70) instead of a silent agent restart; what
    it had consumed is not committed and a restarted worker scores all of it."""
    settings = stack_settings(kafka_bootstrap, redis_url, unique_name, PARTITIONS)
    admin = redis.Redis.from_url(redis_url)
    user, password = f"u-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    _acl_user(admin, user, password, unique_name, "+@all")
    env = worker_env(settings, model_dir, REDIS_USERNAME=user, REDIS_PASSWORD=password,
                     WORKER_SHUTDOWN_TIMEOUT_S="5")  # fmt: skip
    topic, group = settings.kafka.events_topic, f"{unique_name}-app"
    first = [_view(f"before-{i}") for i in range(8)]
    second = [_view(f"during-{i}") for i in range(8)]
    try:
        with LocalStack(settings, worker_env=env, work_dir=tmp_path) as stack:
            stack.wait_healthy(assigned=True)
            worker = stack.processes[0]
            producer = TrackedProducer(kafka_bootstrap, topic)
            _send_scored_and_committed(producer, settings, group, first)
            _acl_user(admin, user, password, unique_name, "+@all -evalsha -eval")
            producer.send(second)
            code, _ = _exit_status(worker, 30)
            assert code == 70, worker.log_tail()
            log_text = worker.log_path.read_text(errors="replace")
            assert "fatal: ingest stage failed" in log_text
            assert "NOPERM" in log_text
            committed = committed_offsets(kafka_bootstrap, group, topic, PARTITIONS)
            assert sum(committed.values()) == len(first), "events that failed were committed"

            _acl_user(admin, user, password, unique_name, "+@all")
            worker.start()
            latest = wait_for_scores(kafka_bootstrap, settings.kafka.scores_topic,
                                     {k.decode(): 1 for k, _ in second}, 90)  # fmt: skip
            assert {k.decode() for k, _ in second} <= set(latest)
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()


def test_a_worker_redis_refuses_does_not_start(
    kafka_bootstrap: str, redis_url: str, unique_name: str, model_dir: Path
) -> None:
    admin = redis.Redis.from_url(redis_url)
    user, password = f"u-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    _acl_user(admin, user, password, unique_name, "+@all -evalsha -eval")
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "REDIS_URL": redis_url,
           "REDIS_USERNAME": user, "REDIS_PASSWORD": password, "REDIS_KEY_PREFIX": unique_name,
           "MODEL_DIR": str(model_dir), "WORKER_WEB_PORT": "0"}  # fmt: skip
    try:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "stream_app.cli", "worker"], env=env,
                              capture_output=True, timeout=60, check=False)  # fmt: skip
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()
    output = (done.stdout + done.stderr).decode(errors="replace").strip()
    assert done.returncode == 2, output
    assert "cannot start worker: Redis refuses the worker" in output
    assert "NOPERM" in output
    assert "Traceback" not in output
    assert time.monotonic() - started < 30


# ------------------------------------------------------- 6. one session's keys are broken


def test_a_wrongtype_session_is_dead_lettered_alone_and_the_worker_stays_ready(
    kafka_bootstrap: str, redis_url: str, unique_name: str, model_dir: Path, tmp_path: Path
) -> None:
    settings = stack_settings(kafka_bootstrap, redis_url, unique_name, PARTITIONS)
    admin = redis.Redis.from_url(redis_url)
    admin.set(session_keys(unique_name, "broken").aggregates, "not a hash")
    healthy = [_view(f"fine-{i}") for i in range(6)]
    try:
        with LocalStack(settings, worker_env=worker_env(settings, model_dir),
                        work_dir=tmp_path) as stack:  # fmt: skip
            stack.wait_healthy(assigned=True)
            TrackedProducer(kafka_bootstrap, settings.kafka.events_topic).send(
                [_view("broken"), *healthy]
            )
            expected = {k.decode(): 1 for k, _ in healthy}
            latest = wait_for_scores(kafka_bootstrap, settings.kafka.scores_topic, expected, 60)
            assert set(expected) <= set(latest)
            letters = read_all(kafka_bootstrap, settings.kafka.dlq_topic, 30, expected=1)
            record = parse_dead_letter(letters[0].value() or b"")
            assert (record["reason"], record["key"]) == ("store_error:WRONGTYPE", b"broken")
            worker = stack.processes[0]
            assert _status(worker, "/readyz") == 200
            assert worker.running
    finally:
        admin.close()


# ------------------------------------------------- 2. model keeps failing: breaker, no DLQ


def test_model_calls_timing_out_open_the_breaker_and_dead_letter_nothing(
    kafka_bootstrap: str, redis_url: str, unique_name: str, model_dir: Path, tmp_path: Path
) -> None:
    """Every model call times out (and is abandoned): readiness 503, nothing dead-lettered,
    nothing committed; a worker with a sane timeout then scores every session."""
    settings = stack_settings(kafka_bootstrap, redis_url, unique_name, PARTITIONS)
    topic, group = settings.kafka.events_topic, f"{unique_name}-app"
    # 1 µs: shorter than any model call, even one whose item texts an abandoned call has
    # already cached (the item-sequence model scores a cached window in well under 1 ms).
    env = worker_env(settings, model_dir, MODEL_INFERENCE_TIMEOUT_S="0.000001",
                     MODEL_RETRIES="0", MODEL_BREAKER_FAILURES="2",
                     MODEL_BREAKER_COOLDOWN_S="1")  # fmt: skip
    events = [_view(f"waits-{i}") for i in range(10)]
    with LocalStack(settings, worker_env=env, work_dir=tmp_path) as stack:
        stack.wait_healthy(assigned=True)
        worker = stack.processes[0]
        TrackedProducer(kafka_bootstrap, topic).send(events)
        wait_until(lambda: _status(worker, "/readyz") == 503, 30, "/readyz 503")
        body = orjson.loads(http_get(worker, "/readyz")[1])
        assert body["model_circuit_closed"] is False
        assert "MODEL_INFERENCE_TIMEOUT_S" in body["last_scoring_error"]
        assert _status(worker, "/livez") == 200
        time.sleep(3)  # several breaker probes
        assert read_all(kafka_bootstrap, settings.kafka.dlq_topic, 5, idle_s=1.0) == []
        assert sum(committed_offsets(kafka_bootstrap, group, topic, PARTITIONS).values()) <= 0
        assert worker.running

        worker.stop()
        worker.env = {**worker.env, "MODEL_INFERENCE_TIMEOUT_S": "10"}
        worker.start()
        expected = {k.decode(): 1 for k, _ in events}
        latest = wait_for_scores(kafka_bootstrap, settings.kafka.scores_topic, expected, 90)
        assert set(expected) <= set(latest)


# ------------------------------------------------------------ 3. one bad session per batch


def test_only_the_session_the_model_cannot_score_is_dead_lettered(
    kafka_bootstrap: str, redis_url: str, unique_name: str, model_dir: Path, tmp_path: Path
) -> None:
    from tests.integration.test_faults import (
        ITEM_ENCODER,
        _fixed_length_graph,
        _model_copy,
        _search,
    )

    broken = _model_copy(model_dir, tmp_path / "model")
    _fixed_length_graph(model_dir / ITEM_ENCODER, broken / ITEM_ENCODER, length=8)
    settings = stack_settings(kafka_bootstrap, redis_url, unique_name, PARTITIONS)
    env = worker_env(settings, broken, BATCH_MAX_WAIT_MS="400")
    long_text = (  # pads to 32 item tokens: the fixed-length graph fails; "phone" pads to 8
        "wireless noise cancelling bluetooth headphones with microphone for gaming and long "
        "distance travel"
    )
    mixed = [_search("doomed", long_text)] + [_search(f"fine-{i}", "phone") for i in range(7)]
    with LocalStack(settings, worker_env=env, work_dir=tmp_path) as stack:
        stack.wait_healthy(assigned=True)
        TrackedProducer(kafka_bootstrap, settings.kafka.events_topic).send(mixed)
        expected = {f"fine-{i}": 1 for i in range(7)}
        latest = wait_for_scores(kafka_bootstrap, settings.kafka.scores_topic, expected, 90)
        assert set(expected) <= set(latest), "healthy sessions of the failing batch not scored"
        letters = read_all(kafka_bootstrap, settings.kafka.dlq_topic, 30, expected=1, idle_s=2)
        records = [parse_dead_letter(m.value() or b"") for m in letters]
        assert [(r["reason"], r["key"]) for r in records] == [("scoring_failed", b"doomed")]
        assert _status(stack.processes[0], "/readyz") == 200


# ------------------------------------------------------------------ 10. stale scores


def test_a_backlog_event_is_scored_as_stale_and_a_live_one_is_not(
    kafka_bootstrap: str, redis_url: str, unique_name: str, model_dir: Path, tmp_path: Path
) -> None:
    settings = stack_settings(kafka_bootstrap, redis_url, unique_name, PARTITIONS)
    env = worker_env(settings, model_dir, SCORE_STALE_AFTER_S="600")
    two_hours_ago = int(time.time() * 1000) - 2 * 3_600_000
    with LocalStack(settings, worker_env=env, work_dir=tmp_path) as stack:
        stack.wait_healthy(assigned=True)
        TrackedProducer(kafka_bootstrap, settings.kafka.events_topic).send(
            [_view("backlog", two_hours_ago), _view("live")]
        )
        latest = wait_for_scores(kafka_bootstrap, settings.kafka.scores_topic,
                                 {"backlog": 1, "live": 1}, 60)  # fmt: skip
        assert latest["backlog"].stale is True
        assert latest["live"].stale is False
        assert latest["backlog"].session_events == 1  # the window was still updated


# -------------------------------------------------------------- 1 + 8. bounded shutdown


def test_sigterm_exits_in_bounded_time_with_redis_and_then_the_broker_down(
    unique_name: str, model_dir: Path, tmp_path: Path
) -> None:
    """Dedicated broker and Redis (both get stopped). Redis down: /livez 200, /readyz 503;
    SIGTERM ends the worker within WORKER_SHUTDOWN_TIMEOUT_S and commits nothing unscored.
    Then with Redis *and* the broker down, SIGTERM still ends it in time."""
    broker = EmbeddedBroker(log_dir=tmp_path / "broker").start()
    store = EmbeddedRedis(log_dir=tmp_path / "redis").start()
    try:
        _bounded_shutdown(broker, store, unique_name, model_dir, tmp_path)
    finally:
        store.stop()
        broker.stop()


def _bounded_shutdown(
    broker: EmbeddedBroker, store: EmbeddedRedis, name: str, model_dir: Path, work: Path
) -> None:
    bootstrap = broker.bootstrap_servers
    settings = stack_settings(bootstrap, store.url, name, PARTITIONS)
    topic, group = settings.kafka.events_topic, f"{name}-app"
    env = worker_env(settings, model_dir, WORKER_SHUTDOWN_TIMEOUT_S="5", REDIS_RETRIES="1")
    (work / "stack").mkdir()
    with LocalStack(settings, worker_env=env, work_dir=work / "stack") as stack:
        stack.wait_healthy(assigned=True)
        worker = stack.processes[0]
        producer = TrackedProducer(bootstrap, topic)
        first = [_view(f"a-{i}") for i in range(6)]
        _send_scored_and_committed(producer, settings, group, first)

        store.stop()
        producer.send([_view(f"b-{i}") for i in range(6)])
        wait_until(lambda: _status(worker, "/readyz") == 503, 20, "/readyz 503")
        assert orjson.loads(http_get(worker, "/readyz")[1])["store_reachable"] is False
        assert _status(worker, "/livez") == 200
        time.sleep(1)  # the new events are consumed and stuck in the store retry
        worker.signal(signal.SIGTERM)
        _, took = _exit_status(worker, 20)
        assert took < 5 + 3, f"SIGTERM took {took:.1f} s with Redis down"
        committed = committed_offsets(bootstrap, group, topic, PARTITIONS)
        assert sum(committed.values()) == len(first), "unscored events were committed"

        store.start()
        worker.start()
        stack.wait_healthy(assigned=True)
        store.stop()
        broker.stop()
        time.sleep(1)
        worker.signal(signal.SIGTERM)
        _, took = _exit_status(worker, 25)
        assert took < 5 + 3, f"SIGTERM took {took:.1f} s with Redis and the broker down"


# ------------------------------------------------------- 9. memory bound counts bytes


def test_the_pending_queue_stays_within_its_byte_bound_with_large_valid_events(
    kafka_bootstrap: str, redis_url: str, unique_name: str, model_dir: Path, tmp_path: Path
) -> None:
    """400 valid 60 KB events (24 MB): the bytes held for scoring never exceed
    BATCH_MAX_PENDING_BYTES plus one consumed batch, and every session is scored."""
    bound, batch = 1024 * 1024, 8
    settings = stack_settings(kafka_bootstrap, redis_url, unique_name, PARTITIONS)
    env = worker_env(settings, model_dir, BATCH_MAX_PENDING_BYTES=str(bound),
                     BATCH_MAX_SIZE=str(batch))  # fmt: skip
    events = [_view(f"big-{i}", padding="x" * 60_000) for i in range(400)]
    assert all(len(value) < 64 * 1024 for _, value in events)  # valid: under the size cap
    with LocalStack(settings, worker_env=env, work_dir=tmp_path) as stack:
        stack.wait_healthy(assigned=True)
        worker = stack.processes[0]
        assert worker.proc is not None
        rss_before = rss_kib(worker.proc.pid)
        sender = TrackedProducer(kafka_bootstrap, settings.kafka.events_topic)
        feeding = sender.send_paced(events, per_second=400)
        peak, expected = 0, {k.decode(): 1 for k, _ in events}
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            body = worker.health() or {}
            peak = max(peak, int(str(body.get("pending_bytes", 0))))
            if not feeding.is_alive() and body.get("pending_sessions") == 0:
                break
            time.sleep(0.05)
        latest = wait_for_scores(kafka_bootstrap, settings.kafka.scores_topic, expected, 60)
        rss_after = rss_kib(worker.proc.pid)
        print(f"pending bytes peak {peak / 1024:.0f} KiB (bound {bound // 1024} KiB); worker "
              f"RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MiB")  # fmt: skip
        assert set(expected) <= set(latest)
        assert 0 < peak <= bound + batch * 62 * 1024


# -------------------------------------------------------------- 11. eviction policy


def test_start_up_check_warns_unless_redis_evicts_nothing(redis_url: str) -> None:
    import asyncio

    from stream_app.core.config import RedisSettings
    from stream_app.serving.preflight import check_store
    from stream_app.sessions.windows import WindowRules

    admin = redis.Redis.from_url(redis_url)
    before = admin.config_get("maxmemory-policy")["maxmemory-policy"]
    settings = RedisSettings(url=redis_url, key_prefix="preflight")
    try:
        admin.config_set("maxmemory-policy", "volatile-ttl")
        warning = asyncio.run(check_store(settings, WindowRules()))
        assert warning is not None
        assert "volatile-ttl" in warning
        admin.config_set("maxmemory-policy", "noeviction")
        assert asyncio.run(check_store(settings, WindowRules())) is None
    finally:
        admin.config_set("maxmemory-policy", before)
        admin.close()


# ------------------------------------------------------------ 7. rebalance under traffic


def test_workers_joining_and_leaving_under_traffic_never_publish_an_older_score_last(
    kafka_bootstrap: str,
    redis_url: str,
    unique_name: str,
    model_dir: Path,
    rees46_path: Path,
    tmp_path: Path,
) -> None:
    """Two workers score live traffic; a third joins and one of the first two leaves
    (SIGTERM) while events flow and scores are pending. Every event ends in its window once,
    and per session the scores in topic order never go back to fewer events."""
    from stream_app.sessions.windows import WindowRules
    from tests.integration.fault_tools import assert_complete, expected_windows
    from tests.integration.helpers import load_messages

    settings = stack_settings(kafka_bootstrap, redis_url, unique_name, partitions=4)
    messages = load_messages(rees46_path, limit=900)
    env = worker_env(settings, model_dir, WORKER_SHUTDOWN_TIMEOUT_S="10")
    with LocalStack(settings, workers=2, worker_env=env, work_dir=tmp_path) as stack:
        stack.wait_healthy(assigned=True)
        producer = TrackedProducer(kafka_bootstrap, settings.kafka.events_topic)
        feeding = producer.send_paced(messages, per_second=60)
        time.sleep(4)
        stack.add_worker(2)
        time.sleep(6)
        leaving = stack.processes[0]
        leaving.signal(signal.SIGTERM)
        _, took = _exit_status(leaving, 30)
        assert took < 10 + 3
        feeding.join()
        assert_complete(stack, expected_windows(messages, WindowRules()), timeout_s=150)

    counts: dict[str, int] = {}
    backwards = []
    for message in read_all(kafka_bootstrap, settings.kafka.scores_topic, 60, idle_s=2.0):
        record = orjson.loads(message.value() or b"{}")
        sid, seen = record["session_id"], record["session_events"]
        if seen < counts.get(sid, 0):
            backwards.append((sid, counts[sid], seen))
        counts[sid] = max(counts.get(sid, 0), seen)
    assert not backwards, f"{len(backwards)} scores went backwards: {backwards[:3]}"
