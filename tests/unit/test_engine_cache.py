"""The GPU worker's start-up path up to the GPU: engine cache keys, build once / reuse after,
no half-built entries, one-line failures without a GPU or TensorRT. The TensorRT build itself
needs a GPU: the ``gpu`` test at the end runs it and is skipped without one.

The cache is exercised with a builder that writes an engine file and records it in the
metadata, as ``tensorrt_build.build_engines`` does; ``ensure_engines`` takes the builder as a
parameter for this reason (the real one is the default).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_export.engine_cache import (
    BUILT_MARKER,
    CURRENT_LINK,
    EngineBuildError,
    GpuEnvironment,
    engine_key,
    ensure_engines,
    model_source_hash,
    run,
)

ROOT = Path(__file__).resolve().parents[2]
H100 = GpuEnvironment("10.3.0", "NVIDIA H100 80GB HBM3")
L4 = GpuEnvironment("10.3.0", "NVIDIA L4")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    (model / "tokenizer").mkdir(parents=True)
    (model / "metadata.json").write_text('{"model_version": "m1"}', encoding="utf-8")
    (model / "model.onnx").write_bytes(b"onnx-graph-bytes")
    (model / "tokenizer" / "tokenizer.json").write_text("{}", encoding="utf-8")
    return model


class RecordingBuilder:
    """Writes ``model.plan`` and a metadata note into the staged folder, like the real one."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[Path] = []
        self.fail = fail

    def __call__(self, staged: Path, cache_dir: Path) -> None:
        self.calls.append(staged)
        assert (staged / "model.onnx").is_file(), "the model is staged before the build"
        (staged / "model.plan").write_bytes(b"engine")
        if self.fail:
            raise EngineBuildError("builder failed half way")
        meta = json.loads((staged / "metadata.json").read_text("utf-8"))
        (staged / "metadata.json").write_text(
            json.dumps(meta | {"tensorrt": {"engine": "model.plan"}})
        )


def test_key_changes_with_model_tensorrt_and_gpu_only(source: Path) -> None:
    digest = model_source_hash(source)
    assert digest == model_source_hash(source)
    key = engine_key(digest, H100)
    assert key == f"{digest[:16]}-trt10.3.0-nvidia-h100-80gb-hbm3"
    assert engine_key(digest, L4) != key
    assert engine_key(digest, GpuEnvironment("10.4.0", H100.gpu_name)) != key
    (source / "model.onnx").write_bytes(b"retrained")
    assert model_source_hash(source) != digest
    (source / "old.plan").write_bytes(b"an engine in the source is not model content")
    assert model_source_hash(source) == model_source_hash(source)


def test_first_start_builds_then_later_starts_reuse(source: Path, tmp_path: Path) -> None:
    cache, builder = tmp_path / "cache", RecordingBuilder()
    first = ensure_engines(source, cache, H100, builder)
    again = ensure_engines(source, cache, H100, builder)
    assert first == again
    assert len(builder.calls) == 1, "second start reused the engines"
    assert (first / "model.plan").read_bytes() == b"engine"
    assert json.loads((first / "metadata.json").read_text())["tensorrt"]["engine"] == "model.plan"
    assert json.loads((first / BUILT_MARKER).read_text())["gpu"] == H100.gpu_name
    current = cache / CURRENT_LINK
    assert current.is_symlink()
    assert current.resolve() == first.resolve()
    assert not (source / "model.plan").exists(), "the read-only source is never written"
    assert sorted(p.name for p in cache.iterdir()) == sorted([CURRENT_LINK, first.name])


def test_another_gpu_gets_its_own_engines_and_current_follows(source: Path, tmp_path: Path) -> None:
    cache, builder = tmp_path / "cache", RecordingBuilder()
    on_h100 = ensure_engines(source, cache, H100, builder)
    on_l4 = ensure_engines(source, cache, L4, builder)
    assert on_h100 != on_l4
    assert len(builder.calls) == 2
    assert (cache / CURRENT_LINK).resolve() == on_l4.resolve()


def test_a_failed_build_leaves_nothing_half_built(source: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(EngineBuildError, match="half way"):
        ensure_engines(source, cache, H100, RecordingBuilder(fail=True))
    assert list(cache.iterdir()) == [], "no staging folder, no entry, no current link"
    built = ensure_engines(source, cache, H100, RecordingBuilder())
    assert (built / BUILT_MARKER).is_file()


def test_an_unmarked_entry_is_rebuilt(source: Path, tmp_path: Path) -> None:
    cache, builder = tmp_path / "cache", RecordingBuilder()
    target = cache / engine_key(model_source_hash(source), H100)
    target.mkdir(parents=True)
    (target / "model.plan").write_bytes(b"truncated")  # e.g. a node died mid-copy
    ensure_engines(source, cache, H100, builder)
    assert len(builder.calls) == 1
    assert (target / "model.plan").read_bytes() == b"engine"


def test_run_checks_the_model_dir_and_the_gpu_before_hashing(tmp_path: Path, source: Path) -> None:
    def no_gpu() -> GpuEnvironment:
        raise EngineBuildError("no CUDA GPU is visible")

    with pytest.raises(EngineBuildError, match="not a model directory"):
        run(argparse.Namespace(model_dir=tmp_path / "nowhere", out=tmp_path / "c"), no_gpu)
    with pytest.raises(EngineBuildError, match="no CUDA GPU"):
        run(argparse.Namespace(model_dir=source, out=tmp_path / "c"), no_gpu)
    assert not (tmp_path / "c").exists()


def test_cli_without_a_gpu_fails_in_one_line(source: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "build-engines", "--model-dir", str(source),
         "--out", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("intent-stream build-engines: ")
    assert "intent-stream[gpu]" in lines[0] or "no CUDA GPU" in lines[0]


def _gpu_and_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_and_tensorrt(), reason="needs a CUDA GPU and TensorRT ([gpu])")
def test_real_engines_build_once_and_the_worker_backend_loads_them(
    model_dir: Path, tmp_path: Path
) -> None:
    from model_export.engine_cache import probe_gpu
    from stream_app.scoring.tensorrt_backend import TensorRTScorer

    cache = tmp_path / "engines"
    served = ensure_engines(model_dir, cache, probe_gpu())
    assert ensure_engines(model_dir, cache, probe_gpu()) == served
    scorer = TensorRTScorer(cache / CURRENT_LINK)
    try:
        assert scorer.model_version
    finally:
        scorer.close()
