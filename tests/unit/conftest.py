"""Unit-test fixtures: no servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_export.bundle import untrained_model_dir


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete model directory around the real MiniLM encoder with seeded random trained
    parts: the serving code's inputs, shapes and cost without depending on the weights."""
    path = tmp_path_factory.getbasetemp() / "untrained-model"
    if not (path / "metadata.json").is_file():
        untrained_model_dir(path)
    return path
