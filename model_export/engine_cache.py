"""TensorRT engines for a read-only model directory, built once into a writable cache.

    intent-stream build-engines --model-dir /opt/intent-stream/model --out /var/cache/engines

What the GPU worker's init container (or entrypoint) runs before ``intent-stream worker``:

1. checks that TensorRT imports and a CUDA GPU is visible, else fails with one line (exit 2);
2. computes the cache key: a hash of the model directory's files, the TensorRT version and
   the GPU's name (an engine is only valid for that triple);
3. if ``OUT/<key>/`` is complete (its ``BUILT`` marker exists), reuses it; otherwise copies
   the model directory to a staging folder, builds the engines into it through
   ``model_export.tensorrt_build.build_engines`` (the model format's owner keeps that entry
   point) and renames the folder into place, so a crash mid-build leaves nothing half-built;
4. points ``OUT/current`` at ``OUT/<key>`` (an atomic symlink swap): the worker serves
   ``MODEL_DIR=OUT/current`` with ``MODEL_BACKEND=tensorrt``.

Two pods sharing the cache (a ReadWriteMany volume) may both build the same key; the second
rename loses and reuses the winner's folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stream_app.core.errors import ConfigError

log = logging.getLogger(__name__)

BUILT_MARKER = "BUILT"
CURRENT_LINK = "current"
ENGINE_SUFFIXES = (".plan", ".engine")
HASH_CHUNK = 1 << 20


class EngineBuildError(ConfigError):
    """No GPU, no TensorRT, or a model directory that cannot be built: fix the environment."""


@dataclass(frozen=True, slots=True)
class GpuEnvironment:
    tensorrt_version: str
    gpu_name: str


Builder = Callable[[Path, Path], None]  # (staged model dir, cache dir) -> engines in the dir


def model_source_hash(model_dir: Path) -> str:
    """SHA-256 over the model directory's files (names and bytes), engines excluded."""
    digest = hashlib.sha256()
    files = sorted(
        p for p in model_dir.rglob("*") if p.is_file() and p.suffix not in ENGINE_SUFFIXES
    )
    if not files:
        raise EngineBuildError(f"model directory {model_dir} is empty or missing")
    for path in files:
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def engine_key(source_hash: str, gpu: GpuEnvironment) -> str:
    """``<model hash>-trt<version>-<gpu>``: a folder name, unique per (model, TRT, GPU)."""
    gpu_slug = re.sub(r"[^a-z0-9]+", "-", gpu.gpu_name.lower()).strip("-") or "gpu"
    trt = re.sub(r"[^0-9A-Za-z.]+", "-", gpu.tensorrt_version)
    return f"{source_hash[:16]}-trt{trt}-{gpu_slug}"


def probe_gpu() -> GpuEnvironment:
    """TensorRT's version and the GPU's name, or one line saying what is missing."""
    try:
        import tensorrt
    except ImportError:
        raise EngineBuildError(
            "TensorRT is not installed: install intent-stream[gpu] (pip install "
            "'intent-stream[gpu]') in a CUDA image"
        ) from None
    try:
        import torch
    except ImportError:
        raise EngineBuildError("torch is not installed: install intent-stream[gpu]") from None
    if not torch.cuda.is_available():
        raise EngineBuildError(
            "no CUDA GPU is visible: request nvidia.com/gpu for this container and check the "
            "NVIDIA driver / device plugin (nvidia-smi)"
        )
    return GpuEnvironment(str(tensorrt.__version__), str(torch.cuda.get_device_name()))


def timing_cache_name(gpu: GpuEnvironment) -> str:
    """One TensorRT timing cache per (TensorRT version, GPU): a cache is only valid there."""
    return f"timing-{engine_key('', gpu).lstrip('-')}.cache"


def build_with_tensorrt(staged: Path, cache_dir: Path) -> None:
    """Build the engines into ``staged`` with ``tensorrt_build.build_engines(model_dir,
    out_dir)``; the timing cache for this TensorRT and GPU lives in the cache volume and
    is reused by the next build (a new model on the same GPU builds in a fraction)."""
    from model_export.tensorrt_build import build_engines

    cache = cache_dir / timing_cache_name(probe_gpu())
    build_engines(staged, staged, timing_cache=cache)


def ensure_engines(
    model_dir: Path, out_dir: Path, gpu: GpuEnvironment, build: Builder = build_with_tensorrt
) -> Path:
    """The cached model directory with engines for ``gpu`` (built now if missing)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineBuildError(f"engine cache {out_dir} is not writable: {exc}") from exc
    key = engine_key(model_source_hash(model_dir), gpu)
    target = out_dir / key
    if (target / BUILT_MARKER).is_file():
        log.info("reusing TensorRT engines %s", target)
    else:
        _build_into(model_dir, out_dir, target, gpu, build)
    point_current(out_dir, key)
    return target


def _build_into(
    model_dir: Path, out_dir: Path, target: Path, gpu: GpuEnvironment, build: Builder
) -> None:
    staging = out_dir / f".{target.name}.{os.getpid()}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)  # an unmarked folder is a broken earlier build
    ignore = shutil.ignore_patterns(*(f"*{suffix}" for suffix in ENGINE_SUFFIXES))
    shutil.copytree(model_dir, staging, ignore=ignore)
    log.info("building TensorRT engines for %s on %s (first start; minutes)", model_dir,
             gpu.gpu_name)  # fmt: skip
    start = time.monotonic()
    try:
        build(staging, out_dir)
        seconds = round(time.monotonic() - start, 1)
        marker = {"tensorrt": gpu.tensorrt_version, "gpu": gpu.gpu_name,
                  "source": str(model_dir), "build_s": seconds}  # fmt: skip
        (staging / BUILT_MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
        _rename_into_place(staging, target)
    except OSError as exc:  # a full or read-only volume: the environment, not the code
        raise EngineBuildError(f"cannot write TensorRT engines under {out_dir}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("engines ready in %s (%.0f s)", target, time.monotonic() - start)


def _rename_into_place(staging: Path, target: Path) -> None:
    try:
        os.replace(staging, target)
    except OSError:
        if not (target / BUILT_MARKER).is_file():  # lost the race to a finished build: fine
            raise


def point_current(out_dir: Path, key: str) -> None:
    """Atomically make ``out_dir/current`` a relative symlink to ``key``."""
    temporary = out_dir / f".{CURRENT_LINK}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(key, target_is_directory=True)
    os.replace(temporary, out_dir / CURRENT_LINK)


def run(args: argparse.Namespace, probe: Callable[[], GpuEnvironment] = probe_gpu) -> Path:
    """``intent-stream build-engines --model-dir DIR --out CACHE``: the served directory."""
    model_dir: Path = args.model_dir
    if not (model_dir / "metadata.json").is_file():
        raise EngineBuildError(f"{model_dir} is not a model directory (no metadata.json)")
    gpu = probe()  # before hashing hundreds of MB: no GPU fails at once
    return ensure_engines(model_dir, args.out, gpu)
