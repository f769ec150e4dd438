"""Shared fixtures.

Server fixtures are session-scoped and lazy: a real ``redis-server`` or Tansu broker starts
only when a test asks for it (unit tests never do). If a binary is missing the fixture fails
loudly with the install command; integration tests are never silently skipped.

To run the integration tests against existing servers instead, set
``INTENT_STREAM_TEST_REDIS_URL`` and/or ``INTENT_STREAM_TEST_KAFKA_BOOTSTRAP``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import pytest

from stream_app.local.embedded import EmbeddedBroker, EmbeddedRedis

# Generous: the CI machine has 2 cores shared with other jobs.
SERVER_START_TIMEOUT_S = 30.0


@pytest.fixture(scope="session")
def embedded_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real ``redis-server`` on a free port for the whole session.

    Fault tests may ``stop()`` and ``start()`` it (same port, same URL); they must restart
    it before they finish, since later tests share it.
    """
    server = EmbeddedRedis(
        log_dir=tmp_path_factory.mktemp("redis"), start_timeout_s=SERVER_START_TIMEOUT_S
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """URL of a Redis for integration tests (the embedded one unless overridden)."""
    external = os.environ.get("INTENT_STREAM_TEST_REDIS_URL", "").strip()
    if external:
        return external
    server: EmbeddedRedis = request.getfixturevalue("embedded_redis")
    return server.url


@pytest.fixture(scope="session")
def embedded_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A real Kafka-compatible Tansu broker (in-memory storage) for the whole session."""
    broker = EmbeddedBroker(
        log_dir=tmp_path_factory.mktemp("tansu"), start_timeout_s=SERVER_START_TIMEOUT_S
    )
    with broker:
        yield broker


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """``host:port`` of a Kafka-compatible broker (the embedded one unless overridden)."""
    external = os.environ.get("INTENT_STREAM_TEST_KAFKA_BOOTSTRAP", "").strip()
    if external:
        return external
    broker: EmbeddedBroker = request.getfixturevalue("embedded_broker")
    return broker.bootstrap_servers


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A name unique to this test run, safe for topics, consumer groups and key prefixes.

    At most 31 characters of ``[a-z0-9-]``, so it also fits ``REDIS_KEY_PREFIX`` (<= 32).
    """
    test = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-").lower()[:20]
    return f"t-{test}-{uuid.uuid4().hex[:8]}"
