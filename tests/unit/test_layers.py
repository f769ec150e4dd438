"""The folder tree is the architecture: each package of ``stream_app`` imports only the packages
below it (imports inside functions included), and serving code never imports training code.

Layers, lowest first (README "Architecture"): core < ingest < sessions < scoring < triggers <
api < serving < replay < local; the entry points ``app``, ``worker`` and ``cli`` sit on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "stream_app"
LAYERS = ["core", "ingest", "sessions", "scoring", "triggers", "api", "serving", "replay", "local"]
ENTRY_POINTS = {"app", "worker", "cli"}
# Only commands that build or train a model reach into model_export (the demo builds the
# model directory it serves on first run); the worker, the scoring backends never do.
MAY_IMPORT_TRAINING = {"cli", "local.demo"}


def _modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(PACKAGE).with_suffix("").parts): path
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "stream_app":  # from stream_app import x
                found |= {f"stream_app.{alias.name}" for alias in node.names}
    return found


def _group(module: str) -> str:
    """``serving.pipeline`` -> ``serving``; ``app`` -> ``app``; ``__init__`` -> ``__init__``."""
    return module.split(".")[0]


def _rank(group: str) -> int:
    return LAYERS.index(group) if group in LAYERS else len(LAYERS)


def test_every_module_belongs_to_a_layer_or_is_an_entry_point() -> None:
    groups = {_group(module) for module in _modules()}
    assert groups <= {*LAYERS, *ENTRY_POINTS, "__init__"}, groups - {*LAYERS, *ENTRY_POINTS}


@pytest.mark.parametrize("module", sorted(_modules()))
def test_a_module_imports_only_its_own_layer_or_lower_ones(module: str) -> None:
    group = _group(module)
    upward = []
    for imported in _imports(_modules()[module]):
        if not imported.startswith("stream_app."):
            continue
        target = _group(imported.removeprefix("stream_app."))
        if group not in ENTRY_POINTS and _rank(target) > _rank(group):  # entry points rank top
            upward.append(imported)
    assert not upward, f"stream_app.{module} imports from a higher layer: {sorted(upward)}"


@pytest.mark.parametrize("module", sorted(_modules()))
def test_serving_code_never_imports_training_code(module: str) -> None:
    training = {i for i in _imports(_modules()[module]) if i.split(".")[0] == "model_export"}
    if module not in MAY_IMPORT_TRAINING:
        assert not training, f"stream_app.{module} imports training code: {sorted(training)}"
