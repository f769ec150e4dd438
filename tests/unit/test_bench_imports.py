"""``python bench/run.py`` puts ``bench/`` first on ``sys.path``: no module there may shadow one
that the benchmark (or a library it loads) imports by its top-level name."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_module_names() -> set[str]:
    files = {p.stem for p in BENCH.glob("*.py")} - {"__init__"}
    packages = {p.parent.name for p in BENCH.glob("*/__init__.py")}
    return files | packages


def test_bench_has_modules_to_check() -> None:
    assert {"run", "stages", "report"} <= bench_module_names()


def test_no_bench_module_shadows_the_standard_library() -> None:
    shadowing = bench_module_names() & set(sys.stdlib_module_names)
    assert not shadowing, f"bench/ modules shadow the standard library: {sorted(shadowing)}"


def test_no_bench_module_shadows_an_installed_package() -> None:
    installed = set(importlib.metadata.packages_distributions())
    shadowing = bench_module_names() & installed
    assert not shadowing, f"bench/ modules shadow installed packages: {sorted(shadowing)}"


def test_the_documented_command_imports_transformers(tmp_path: Path) -> None:
    """What failed from a fresh clone: with ``bench/`` as ``sys.path[0]`` (as ``python
    bench/run.py`` has it), transformers' tokenizer imports the stdlib ``profile``."""
    script = (
        "import sys, runpy\n"
        f"sys.path[0] = {str(BENCH)!r}\n"
        "runpy.run_path(sys.path[0] + '/run.py', run_name='bench_run')\n"  # its imports only
        "import profile, sysconfig\n"
        "assert profile.__file__.startswith(sysconfig.get_paths()['stdlib']), profile.__file__\n"
        "from transformers import AutoTokenizer\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
