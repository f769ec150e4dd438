"""The README's configuration table must list every setting the app reads."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic_settings import BaseSettings

from stream_app.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def env_names() -> set[str]:
    names = set()
    for field in Settings.model_fields.values():
        group = field.annotation
        assert isinstance(group, type)
        assert issubclass(group, BaseSettings)
        prefix = group.model_config.get("env_prefix", "")
        names |= {f"{prefix}{name}".upper() for name in group.model_fields}
    return names


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", README.read_text()))
    missing = env_names() - documented
    assert not missing, f"README configuration table lacks {sorted(missing)}"


def test_the_two_commands_are_first() -> None:
    text = README.read_text()
    assert text.index("make demo") < text.index("## What it does")
    assert text.index("make test") < text.index("## What it does")
