"""Fixtures for tests that run real ``intent-stream worker`` processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.redis_cluster import LocalRedisCluster
from tests.shared_data import BUNDLED_SAMPLE, SHARED_REES46


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The serving model built from the committed weights (cached after the first build).

    ``INTENT_STREAM_TEST_MODEL_DIR`` points the tests at another model directory.
    """
    from model_export.bundle import default_model_dir

    override = os.environ.get("INTENT_STREAM_TEST_MODEL_DIR", "").strip()
    if override:
        return Path(override)
    return default_model_dir()


@pytest.fixture(scope="session")
def rees46_path() -> Path:
    """The shared REES46 sample when the checkout has ../shared, else the bundled one."""
    return SHARED_REES46 if SHARED_REES46.exists() else BUNDLED_SAMPLE


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """A real 3-master Redis Cluster (``redis-server --cluster-enabled yes`` x 3)."""
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
