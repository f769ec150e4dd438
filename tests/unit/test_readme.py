"""The README's configuration table must list every setting the app reads."""

from __future__ import annotations

import re
from pathlib import Path

from tests.unit.test_deploy import settings_env_vars

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", README.read_text()))
    missing = settings_env_vars() - documented
    assert not missing, f"README configuration table lacks {sorted(missing)}"


def test_the_two_commands_are_first() -> None:
    text = README.read_text()
    assert text.index("make demo") < text.index("## What it does")
    assert text.index("make test") < text.index("## What it does")
