"""Faults a worker must survive without losing or doubling an event in a window.

Each test runs real ``intent-stream worker`` processes against the real broker and a real
``redis-server``, injects one fault (SIGKILL, Redis stopped, a worker of two killed, a broken
model) and checks the outcome against what the window rules say the result must be.
Run them with ``pytest -m faults``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import onnx
import orjson
import pytest

from stream_app.core.topics import read_all
from stream_app.ingest.dlq import parse_dead_letter
from stream_app.local.embedded import EmbeddedRedis
from stream_app.local.stack import LocalStack, WorkerProcess
from stream_app.sessions.windows import WindowRules
from tests.integration.fault_tools import (
    TrackedProducer,
    assert_complete,
    committed_offsets,
    expected_windows,
    health_status,
    http_get,
    metric_value,
    wait_until,
)
from tests.integration.helpers import (
    latest_scores,
    load_messages,
    sentinels,
    stack_settings,
    wait_for_scores,
    worker_env,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

PARTITIONS = 4


def _scores_so_far(process: WorkerProcess) -> float:
    status, body = http_get(process, "/metrics")
    return metric_value(body.decode(), "intent_scores_total") if status == 200 else 0.0


def _fired_so_far(process: WorkerProcess) -> float:
    """Triggers the triggers worker has fired (its /metrics), polled cheaply."""
    status, body = http_get(process, "/metrics")
    lines = body.decode().splitlines() if status == 200 else []
    fired = [line for line in lines if line.startswith("intent_trigger_decisions_total{")
             and 'decision="fired"' in line]  # fmt: skip
    return sum(float(line.rsplit(" ", 1)[1]) for line in fired)


def _worker_id(process: WorkerProcess) -> str:
    assert process.proc is not None
    return f":{process.proc.pid}"


# --------------------------------------------------------------------------- 1. SIGKILL


def test_sigkill_mid_replay_then_restart_keeps_every_event_exactly_once(
    kafka_bootstrap: str,
    redis_url: str,
    unique_name: str,
    model_dir: Path,
    rees46_path: Path,
    tmp_path: Path,
) -> None:
    settings = stack_settings(kafka_bootstrap, redis_url, unique_name, PARTITIONS)
    messages = load_messages(rees46_path, limit=900)
    expected = expected_windows(messages, WindowRules())

    env = worker_env(settings, model_dir)
    with LocalStack(settings, worker_env=env, work_dir=tmp_path) as stack:
        stack.wait_healthy()
        worker = stack.processes[0]
        # Partitions assigned and model warm before the replay, so the kill lands mid-replay.
        warm = sentinels(kafka_bootstrap, settings.kafka.events_topic, PARTITIONS, "warm")
        wait_for_scores(kafka_bootstrap, settings.kafka.scores_topic, dict.fromkeys(warm, 1), 90)
        producer = TrackedProducer(kafka_bootstrap, settings.kafka.events_topic)
        feeding = producer.send_paced(messages, per_second=90)
        wait_until(lambda: _scores_so_far(worker) > len(warm), 60, "the first replay scores")
        worker.kill()  # SIGKILL: no shutdown hook, no final commit
        assert feeding.is_alive(), "the replay finished before the kill: not mid-replay"
        worker.start()
        feeding.join()
        stack.wait_healthy()
        assert_complete(stack, expected)


# --------------------------------------------------------------------------- 2. Redis down


def test_redis_outage_stalls_commits_reports_unhealthy_and_recovers_losing_nothing(
    kafka_bootstrap: str, unique_name: str, model_dir: Path, rees46_path: Path, tmp_path: Path
) -> None:
    # A dedicated, persistent Redis: stopping it must not disturb other tests, and its
    # append-only file is what makes "nothing lost" meaningful across the restart.
    redis = EmbeddedRedis(persistent=True, log_dir=tmp_path / "redis").start()
    try:
        _redis_outage(kafka_bootstrap, redis, unique_name, model_dir, rees46_path, tmp_path)
    finally:
        redis.stop()


def _settled_offsets(read: Callable[[], dict[int, int]], quiet_s: float = 2.0) -> dict[int, int]:
    """Committed offsets once they have not moved for ``quiet_s`` (at most 15 s)."""
    last, since = read(), time.monotonic()
    deadline = since + 15
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, "committed offsets kept moving with Redis down"
        time.sleep(0.5)
        current = read()
        if current != last:
            last, since = current, time.monotonic()
    return last


def _redis_outage(
    kafka_bootstrap: str,
    redis: EmbeddedRedis,
    name: str,
    model_dir: Path,
    rees46_path: Path,
    work_dir: Path,
) -> None:
    settings = stack_settings(kafka_bootstrap, redis.url, name, PARTITIONS)
    messages = load_messages(rees46_path, limit=800)
    first, second = messages[:400], messages[400:]
    topic, group = settings.kafka.events_topic, f"{name}-app"
    # Few client-side retries so the outage reaches the pipeline's own backoff loop quickly.
    env = worker_env(settings, model_dir, REDIS_RETRIES="1", REDIS_BACKOFF_CAP_S="1.0")

    with LocalStack(settings, worker_env=env, work_dir=work_dir) as stack:
        stack.wait_healthy()
        worker = stack.processes[0]
        producer = TrackedProducer(kafka_bootstrap, topic)
        producer.send(first)
        assert_complete(stack, expected_windows(first, WindowRules()))

        redis.stop()
        outage_started = time.monotonic()
        producer.send(second)
        wait_until(lambda: health_status(worker)[0] == 503, 15, "/health to report 503")
        assert orjson.loads(health_status(worker)[1])["store_up"] is False
        # Scores already in flight when Redis went away may still finish and commit: wait
        # until the offsets settle, then they must stay put for the rest of the outage.
        stalled = _settled_offsets(lambda: committed_offsets(kafka_bootstrap, group, topic,
                                                             PARTITIONS))  # fmt: skip
        time.sleep(max(3.0, 10 - (time.monotonic() - outage_started)))
        assert committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == stalled
        assert sum(stalled.values()) < sum(producer.ends.values()), "nothing left to stall"
        assert worker.running, f"worker died during the outage:\n{worker.log_tail()}"

        redis.start()
        recovery_s = wait_until(lambda: health_status(worker)[0] == 200, 30, "/health 200")
        assert_complete(stack, expected_windows(messages, WindowRules()))
        wait_until(
            lambda: committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == producer.ends,
            30,
            "the committed offsets to reach the end of the topic",
        )
        metrics_text = http_get(worker, "/metrics")[1].decode()
        assert metric_value(metrics_text, "intent_store_retries_total") >= 2
        assert recovery_s < 15
        log_text = worker.log_path.read_text(errors="replace")
        assert "session store unavailable, retrying with backoff" in log_text
        assert "session store is back after" in log_text


# --------------------------------------------------------------------------- 3. two workers


def test_two_workers_one_killed_partitions_move_to_the_survivor(
    kafka_bootstrap: str,
    redis_url: str,
    unique_name: str,
    model_dir: Path,
    rees46_path: Path,
    tmp_path: Path,
) -> None:
    settings = stack_settings(kafka_bootstrap, redis_url, unique_name, PARTITIONS)
    messages = load_messages(rees46_path, limit=600)
    scores_topic, events_topic = settings.kafka.scores_topic, settings.kafka.events_topic

    env = worker_env(settings, model_dir)
    with LocalStack(settings, workers=2, worker_env=env, work_dir=tmp_path) as stack:
        stack.wait_healthy()
        survivor, victim = stack.processes

        def both_own_partitions() -> bool:
            tags = sentinels(kafka_bootstrap, events_topic, PARTITIONS, f"b{time.monotonic_ns()}")
            latest = wait_for_scores(kafka_bootstrap, scores_topic, dict.fromkeys(tags, 1), 60)
            owners = {latest[t].worker for t in tags if t in latest}
            return any(o.endswith(_worker_id(victim)) for o in owners) and any(
                o.endswith(_worker_id(survivor)) for o in owners
            )

        wait_until(both_own_partitions, 90, "both workers to own partitions")
        victim.kill()
        TrackedProducer(kafka_bootstrap, events_topic).send(messages)
        after = sentinels(kafka_bootstrap, events_topic, PARTITIONS, "after-kill")
        assert_complete(stack, expected_windows(messages, WindowRules()))
        latest = wait_for_scores(kafka_bootstrap, scores_topic, dict.fromkeys(after, 1))
        assert all(latest[s].worker.endswith(_worker_id(survivor)) for s in after)
        assert survivor.running


# --------------------------------------------------------------------------- 4. broken model


ITEM_ENCODER = "item_encoder.onnx"  # the graph the broken-model tests replace


def _model_copy(source: Path, target: Path) -> Path:
    """A model directory sharing ``source``'s files (symlinks) except ``ITEM_ENCODER``."""
    target.mkdir()
    for item in source.iterdir():
        if item.name != ITEM_ENCODER:
            (target / item.name).symlink_to(item.resolve())
    return target


def test_corrupt_model_file_stops_the_worker_at_start_naming_the_file(
    kafka_bootstrap: str, redis_url: str, model_dir: Path, tmp_path: Path
) -> None:
    broken = _model_copy(model_dir, tmp_path / "model")
    (broken / ITEM_ENCODER).write_bytes(b"\x08\x07not a protobuf" * 64)
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "REDIS_URL": redis_url,
           "MODEL_DIR": str(broken), "WORKER_WEB_PORT": "0"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "worker"],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode != 0
    assert "cannot start worker" in output
    assert str(broken / ITEM_ENCODER) in output


def _fixed_length_graph(source: Path, target: Path, length: int) -> None:
    """``source`` as if exported with a fixed sequence length: the attention mask is added to
    a [1, length] zero tensor, so any other padded length fails inside ONNX Runtime (a
    broadcasting error) while ``length`` itself still works -- warm-up included."""
    model = onnx.load(str(source))
    graph = model.graph
    probe = onnx.helper.make_tensor("fixed_length_zeros", onnx.TensorProto.INT64,
                                    [1, length], [0] * length)  # fmt: skip
    graph.initializer.append(probe)
    for node in graph.node:
        node.input[:] = ["attention_mask_fixed" if i == "attention_mask" else i
                         for i in node.input]  # fmt: skip
    add = onnx.helper.make_node("Add", ["attention_mask", "fixed_length_zeros"],
                                ["attention_mask_fixed"])  # fmt: skip
    graph.node.insert(0, add)
    onnx.save(model, str(target))


def _search(session: str, query: str) -> tuple[bytes, bytes]:
    event = {"event_time": int(time.time() * 1000), "event_type": "search", "query": query,
             "user_session": session}  # fmt: skip
    return session.encode(), orjson.dumps(event)


def test_inference_failing_at_run_time_dead_letters_the_sessions_and_keeps_running(
    kafka_bootstrap: str, redis_url: str, unique_name: str, model_dir: Path, tmp_path: Path
) -> None:
    broken = _model_copy(model_dir, tmp_path / "model")
    _fixed_length_graph(model_dir / ITEM_ENCODER, broken / ITEM_ENCODER, length=8)
    settings = stack_settings(kafka_bootstrap, redis_url, unique_name, PARTITIONS)
    env = worker_env(settings, broken, MODEL_RETRIES="2")
    # The item encoder now accepts only 8 tokens: a long query pads to 32 (fails), a one-word
    # query to 8 (works), as do the start-up warm-up and the failure policy's canary window.
    long_text = (
        "wireless noise cancelling bluetooth headphones with microphone for gaming and long "
        "distance travel"
    )
    doomed = [_search(f"long-{i}", long_text) for i in range(6)]
    healthy = [_search(f"short-{i}", "phone") for i in range(6)]

    with LocalStack(settings, worker_env=env, work_dir=tmp_path) as stack:
        stack.wait_healthy()
        worker = stack.processes[0]
        TrackedProducer(kafka_bootstrap, settings.kafka.events_topic).send(doomed)
        letters = read_all(kafka_bootstrap, settings.kafka.dlq_topic, 90, expected=len(doomed))
        records = [parse_dead_letter(m.value() or b"") for m in letters]
        assert {r["reason"] for r in records} == {"scoring_failed"}
        assert {r["key"] for r in records} == {key for key, _ in doomed}
        assert all("broadcast" in r["detail"].lower() or "shape" in r["detail"].lower()
                   for r in records), records[0]["detail"]  # fmt: skip
        metrics_text = http_get(worker, "/metrics")[1].decode()
        assert metric_value(metrics_text, "intent_scoring_failures_total") >= 3  # 1 + 2 retries

        TrackedProducer(kafka_bootstrap, settings.kafka.events_topic).send(healthy)
        expected = {key.decode(): 1 for key, _ in healthy}
        latest = wait_for_scores(kafka_bootstrap, settings.kafka.scores_topic, expected, 90)
        assert set(expected) <= set(latest), "the worker stopped scoring after the failures"
        assert not set(latest) & {key.decode() for key, _ in doomed}
        assert worker.running
        assert health_status(worker)[0] == 200
        assert latest_scores(kafka_bootstrap, settings.kafka.scores_topic).keys() == set(expected)


# --------------------------------------------------------------------------- 5. triggers


def test_sigkill_triggers_worker_mid_stream_no_duplicate_none_missing(
    kafka_bootstrap: str, redis_url: str, unique_name: str, model_dir: Path, rees46_path: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    from tests.integration.trigger_tools import (
        duplicates,
        expected_triggers,
        published_triggers,
        rules_of,
        triggers_env,
        write_rules,
    )

    settings = stack_settings(kafka_bootstrap, redis_url, unique_name, PARTITIONS)
    kafka = settings.kafka.model_copy(update={"triggers_topic": f"{unique_name}-trg"})
    settings = settings.model_copy(update={"kafka": kafka})
    rules_path = write_rules(tmp_path)
    messages = load_messages(rees46_path, limit=900)
    windows = expected_windows(messages, WindowRules())
    expected_counts = {s: w.aggregates.n_events for s, w in windows.items()}
    # No reason codes: the kill should land among trigger writes, not in a model call.
    env = worker_env(settings, model_dir) | triggers_env(
        settings, rules_path, unique_name, TRIGGERS_REASONS="false"
    )
    with LocalStack(settings, worker_env=env, work_dir=tmp_path, triggers=1) as stack:
        stack.wait_healthy(assigned=True)
        triggers = stack.extra[0]
        # Slow enough (~20 s) that triggers fire while events are still coming.
        feeding = TrackedProducer(kafka_bootstrap, kafka.events_topic).send_paced(messages, 45)
        wait_until(lambda: _fired_so_far(triggers) >= 2, 90, "the first triggers")
        triggers.kill()  # SIGKILL: no shutdown hook, no final commit
        assert feeding.is_alive(), "the replay finished before the kill: not mid-stream"
        time.sleep(1.0)
        triggers.start()
        feeding.join()
        wait_for_scores(kafka_bootstrap, kafka.scores_topic, expected_counts, 180)
        expected = expected_triggers(settings, rules_of(rules_path))
        wait_until(lambda: len(published_triggers(settings)) >= len(expected), 120, "triggers")
        time.sleep(2.0)  # anything still in flight would be a duplicate
        published = published_triggers(settings)
    assert not duplicates(published), f"duplicate trigger ids: {duplicates(published)[:3]}"
    got = {r.trigger_id: (r.rule, r.session_id) for r in published}
    missing = set(expected) - set(got)
    assert not missing, f"{len(missing)} triggers missing after the restart"
    assert got == expected
