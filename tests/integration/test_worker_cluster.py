"""A real worker on a real 3-master Redis Cluster scores the same windows, with the same
scores, as a worker on one Redis node, from the same REES46 events."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_app.local.stack import LocalStack
from stream_app.sessions.windows import WindowRules
from tests.integration.helpers import (
    expected_session_events,
    load_messages,
    produce,
    stack_settings,
    stored_windows,
    wait_for_scores,
    worker_env,
)
from tests.integration.redis_cluster import LocalRedisCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


def run_worker(
    kafka_bootstrap: str,
    redis_url: str,
    name: str,
    model_dir: Path,
    messages: list[tuple[bytes | None, bytes]],
    expected: dict[str, int],
) -> tuple[dict[str, tuple[int, int, float]], dict[str, object]]:
    settings = stack_settings(kafka_bootstrap, redis_url, name)
    with LocalStack(settings, worker_env=worker_env(settings, model_dir)) as stack:
        stack.wait_healthy()
        produce(kafka_bootstrap, settings.kafka.events_topic, messages)
        latest = wait_for_scores(kafka_bootstrap, settings.kafka.scores_topic, expected)
    scores = {s: (r.session_events, r.window_events, r.score) for s, r in latest.items()}
    windows = dict(stored_windows(settings, sorted(expected)))
    return scores, windows


def test_worker_on_redis_cluster_matches_a_single_node_worker(
    kafka_bootstrap: str,
    redis_url: str,
    redis_cluster: LocalRedisCluster,
    unique_name: str,
    model_dir: Path,
    rees46_path: Path,
) -> None:
    messages = load_messages(rees46_path, limit=300)
    expected, _ = expected_session_events(messages, WindowRules())
    name = unique_name[:28]
    on_cluster = run_worker(kafka_bootstrap, redis_cluster.url, f"{name}-c", model_dir,
                            messages, expected)  # fmt: skip
    on_node = run_worker(kafka_bootstrap, redis_url, f"{name}-n", model_dir, messages, expected)

    cluster_scores, cluster_windows = on_cluster
    node_scores, node_windows = on_node
    assert set(cluster_scores) == set(expected) == set(node_scores)
    assert all(cluster_scores[s][0] == n for s, n in expected.items()), "complete windows"
    assert cluster_windows == node_windows  # same events, dedup, order, aggregates
    for session, (events, window, score) in cluster_scores.items():
        assert (events, window) == node_scores[session][:2]
        assert score == pytest.approx(node_scores[session][2], abs=1e-5), session
