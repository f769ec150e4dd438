"""TensorRT engines from the model directory's two ONNX graphs: build, infer, perf.

    python -m model_export.tensorrt_build build --model-dir DIR [--out-dir D] [--profiles seq]
    python -m model_export.tensorrt_build infer --model-dir DIR      # parity vs ONNX Runtime
    python -m model_export.tensorrt_build perf  --model-dir DIR      # latency per bucket

One engine per graph (``item_encoder.plan``, ``session_model.plan``). Engines match the
preprocessor: the item encoder's profiles are planned from the model's batch and token
buckets (``bucket``: one exact-shape profile per (batch, tokens) bucket, the fastest kernels;
``seq``: one profile per token bucket spanning every batch bucket, a quicker build); the
session model's from the batch buckets at the window's K events.
Both profile sets are checked to cover every shape the preprocessor can emit, with the
serving backend's own shape function (``tensorrt_backend.io_shapes``).
Precision is FP16 with LayerNorm, Softmax and reductions pinned to FP32, and so are
elementwise layers fed by constants outside the fp16 range (BERT's additive attention mask)
(``OBEY_PRECISION_CONSTRAINTS``): those are where fp16 loses BERT accuracy. A timing cache
file persists across builds (``--timing-cache``; a stale one from another GPU is dropped), so
rebuilding on the same GPU mostly skips kernel autotuning. ``tensorrt`` is imported lazily:
planning and the CLI parse without it. ``build_engines(model_dir, out_dir)`` is the entry
point ``model_export.engine_cache`` (``intent-stream build-engines``) calls.
Imports: this module never imports ``model_export.gpu_check`` (which uses it through
``engine_cache``), so there is no import loop.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from stream_app.core.errors import ModelLoadError
from stream_app.scoring.model_dir import ModelMetadata, load_metadata, write_metadata
from stream_app.scoring.tensorrt_backend import (
    ENGINES,
    EngineProfile,
    bucket_shapes,
    capture_plan,
    import_tensorrt,
    io_shapes,
)

log = logging.getLogger(__name__)

ENGINE_FILES = {"items": "item_encoder.plan", "session": "session_model.plan"}
FP16_TOLERANCE = 2e-3  # max |Δp| vs ONNX Runtime fp32
ProfileMode = Literal["bucket", "seq"]


class EngineBuildError(ModelLoadError):
    """TensorRT could not parse the graph or build an engine."""


def plan_profiles(
    seq_buckets: Sequence[int], batch_buckets: Sequence[int], mode: ProfileMode = "bucket"
) -> list[EngineProfile]:
    """Optimization profiles for the shapes ``Preprocessor`` can emit."""
    if mode == "bucket":
        return [EngineProfile(t, b, b, b) for t in seq_buckets for b in batch_buckets]
    # One profile per token bucket; tune for a mid-size batch (the worker's typical load).
    opt = batch_buckets[len(batch_buckets) // 2]
    return [EngineProfile(t, batch_buckets[0], opt, batch_buckets[-1]) for t in seq_buckets]


Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def _shapes(kind: str, profile: EngineProfile, item_dim: int, n_features: int) -> Shapes:
    """(min, opt, max) shape of each input of ``kind`` for ``set_shape``: the serving
    backend's own ``io_shapes``, so builder and runtime cannot disagree on a layout."""
    batches = (profile.min_batch, profile.opt_batch, profile.max_batch)
    per_batch = [io_shapes(kind, b, profile.tokens, item_dim, n_features) for b in batches]
    inputs = ENGINES[kind][0]
    return {name: (per_batch[0][name], per_batch[1][name], per_batch[2][name]) for name in inputs}


def profile_shapes(profile: EngineProfile, item_dim: int = 64) -> Shapes:
    """Item encoder: (min, opt, max) shapes of each input for ``set_shape``."""
    return _shapes("items", profile, item_dim, 0)


def session_profile_shapes(profile: EngineProfile, meta: ModelMetadata) -> Shapes:
    """Session model: ``profile.tokens`` is the window's K events."""
    return _shapes("session", profile, meta.item_dim, len(meta.feature_names))


def session_profiles(meta: ModelMetadata, mode: ProfileMode) -> list[EngineProfile]:
    return plan_profiles((meta.max_events,), meta.batch_buckets, mode)


def engine_plans(meta: ModelMetadata, mode: ProfileMode) -> dict[str, list[EngineProfile]]:
    """The profiles of both engines; every shape the preprocessor emits is covered (checked)."""
    plans = {"items": plan_profiles(meta.seq_buckets, meta.batch_buckets, mode),
             "session": session_profiles(meta, mode)}  # fmt: skip
    for kind, profiles in plans.items():
        capture_plan(profiles, bucket_shapes(kind, meta))  # raises if a bucket is uncovered
    return plans


def _parse_onnx(trt: ModuleType, builder: Any, logger: Any, onnx_path: Path) -> Any:
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path}: {errors}")
    return network


FP16_MAX = 65504.0
FP32_LAYERS = ("NORMALIZATION", "SOFTMAX", "REDUCE")  # where fp16 loses BERT accuracy


def _layers(network: Any) -> list[Any]:
    return [network.get_layer(i) for i in range(network.num_layers)]


def _wide_constants(trt: ModuleType, network: Any) -> set[str]:
    """Output names of constants outside the fp16 range (BERT's additive attention mask is
    ``(1 - mask) * finfo(float32).min``: in fp16 that is -inf, and 0 * -inf is NaN)."""
    names = set()
    for layer in _layers(network):
        if layer.type != trt.LayerType.CONSTANT:
            continue
        layer.__class__ = trt.IConstantLayer  # the Python API's documented downcast
        values = np.asarray(layer.weights.numpy())
        if values.dtype.kind == "f" and values.size and float(np.max(np.abs(values))) > FP16_MAX:
            names.add(layer.get_output(0).name)
    return names


def fp32_layer(layer_type: str, input_names: Sequence[str], wide: set[str]) -> bool:
    """Whether a layer stays in FP32 inside the FP16 engine (pure: the rule itself)."""
    return layer_type in FP32_LAYERS or any(name in wide for name in input_names)


def _pin_fp32(trt: ModuleType, network: Any) -> int:
    """Keep numerically sensitive layers in FP32 inside an FP16 engine; count pinned.

    LayerNorm (``NORMALIZATION``; opset 17 exports ``LayerNormalization`` whole), Softmax and
    reductions (mean pooling) always; elementwise layers fed by constants fp16 cannot hold.
    ``OBEY_PRECISION_CONSTRAINTS`` makes the builder honour these or fail.
    """
    wide = _wide_constants(trt, network)
    pinned = 0
    for layer in _layers(network):
        inputs = [layer.get_input(j) for j in range(layer.num_inputs)]
        names = [t.name for t in inputs if t is not None]
        if not fp32_layer(layer.type.name, names, wide):
            continue
        layer.precision = trt.float32
        for output in range(layer.num_outputs):
            if layer.get_output(output).dtype in (trt.float32, trt.float16):
                layer.set_output_type(output, trt.float32)
        pinned += 1
    return pinned


def _timing_cache(config: Any, cached: bytes) -> Any:
    """The builder's timing cache, seeded from ``cached``; one from another GPU or TensorRT
    version (or a damaged file) is dropped, not trusted: the build then times from scratch."""
    cache = config.create_timing_cache(cached) if cached else None
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        if cached:
            log.warning("timing cache does not match this GPU/TensorRT; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _builder_config(trt: ModuleType, builder: Any, cache_bytes: bytes, workspace_gib: float) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    _timing_cache(config, cache_bytes)
    return config


def build_engine(
    onnx_path: Path,
    shapes: Sequence[Shapes],
    timing_cache: Path,
    workspace_gib: float = 4.0,
) -> bytes:
    """Serialized FP16 engine with one optimization profile per entry of ``shapes``;
    updates the timing cache file (atomically: pods sharing it never read half a file)."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _parse_onnx(trt, builder, logger, onnx_path)
    log.info("%s: pinned %d layers to fp32", onnx_path.name, _pin_fp32(trt, network))
    cached = timing_cache.read_bytes() if timing_cache.is_file() else b""
    config = _builder_config(trt, builder, cached, workspace_gib)
    for profile in shapes:
        optimization = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.items():
            optimization.set_shape(name, low, opt, high)
        config.add_optimization_profile(optimization)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path}")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    # The builder added every kernel timing it measured to the config's cache.
    partial = timing_cache.with_name(f".{timing_cache.name}.{os.getpid()}")
    partial.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    os.replace(partial, timing_cache)
    return bytes(memoryview(serialized))


def default_timing_cache() -> Path:
    from model_export.bundle import cache_root

    return cache_root() / "tensorrt" / "timing.cache"


def build_engines(
    model_dir: Path,
    out_dir: Path | None = None,
    mode: ProfileMode = "bucket",
    timing_cache: Path | None = None,
    workspace_gib: float = 4.0,
) -> Path:
    """Build both engines for ``model_dir`` into ``out_dir`` (default: ``model_dir``; else a
    copy of it is made there first) and record them and their profiles in its metadata."""
    import shutil

    trt = import_tensorrt()
    target = Path(out_dir) if out_dir is not None else Path(model_dir)
    if target.resolve() != Path(model_dir).resolve():
        shutil.copytree(model_dir, target, dirs_exist_ok=True)
    meta = load_metadata(target)
    plans = engine_plans(meta, mode)
    shapes = {
        "items": [profile_shapes(p, meta.item_dim) for p in plans["items"]],
        "session": [session_profile_shapes(p, meta) for p in plans["session"]],
    }
    graphs = {"items": meta.onnx["fp32"], "session": meta.onnx["session"]}
    cache = timing_cache or default_timing_cache()
    for kind, graph in graphs.items():
        start = time.perf_counter()
        engine = build_engine(target / graph, shapes[kind], cache, workspace_gib)
        (target / ENGINE_FILES[kind]).write_bytes(engine)
        log.info("built %s: %d profiles, %.1f s", ENGINE_FILES[kind], len(plans[kind]),
                 time.perf_counter() - start)  # fmt: skip
    write_metadata(target, _with_engines(meta, trt, plans, mode))
    return target


def _with_engines(
    meta: ModelMetadata, trt: ModuleType, plans: dict[str, list[EngineProfile]], mode: str
) -> ModelMetadata:
    import torch

    info = {
        "engines": dict(ENGINE_FILES),
        "precision": "fp16",
        "profile_mode": mode,
        "profiles": {kind: [p.to_dict() for p in profiles] for kind, profiles in plans.items()},
        "tensorrt_version": str(trt.__version__),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "",
    }
    return replace(meta, tensorrt=info)


def synthetic_batch(rows: int, tokens: int, seed: int = 0) -> Any:
    """A bucket-shaped item-encoder batch of random in-vocabulary tokens (parity, timing)."""
    from stream_app.scoring.preprocess import EncodedBatch

    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, size=(rows, tokens), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    mask = np.ones_like(ids)
    mask[rows // 2 :, tokens // 2 :] = 0  # half the rows padded: masking is exercised
    return EncodedBatch(ids, mask, rows)


def check_parity(model_dir: Path, n_sessions: int = 300) -> float:
    """max |Δp| TensorRT vs ONNX Runtime fp32 on real windows of the bundled sample log
    (both graphs exercised, every batch bucket up to ``n_sessions``); raise above tolerance."""
    from stream_app.scoring.onnx_backend import OnnxScorer
    from stream_app.scoring.tensorrt_backend import TensorRTScorer

    reference, engine = OnnxScorer(model_dir), TensorRTScorer(model_dir)
    snapshots = sample_windows(n_sessions)
    worst = 0.0
    for size in reference.metadata.batch_buckets:
        part = snapshots[:size]
        worst = max(worst, float(np.max(np.abs(engine.score(part) - reference.score(part)))))
    if worst > FP16_TOLERANCE:
        raise EngineBuildError(f"TensorRT max |Δp| {worst:.2e} > {FP16_TOLERANCE}")
    return worst


def sample_windows(n: int) -> list[Any]:
    """Window snapshots of the first ``n`` sessions of the bundled demo log."""
    from model_export.data import group_sessions, iter_log_events, snapshots_for_session
    from stream_app.sessions.windows import WindowRules

    sample = Path(__file__).resolve().parents[1] / "stream_app" / "demo_data"
    sessions = group_sessions(iter_log_events(sample / "rees46_2019-Oct_sample.csv"))
    windows = []
    for events in list(sessions.values())[:n]:
        windows.extend(snapshots_for_session(events, WindowRules())[-1:])
    return windows


def time_items(scorer: Any, batch: Any, seconds: float = 1.0) -> dict[str, Any]:
    """Warm up, then time the item encoder alone (``run_items``) for ~``seconds`` (>= 3 runs)."""
    for _ in range(3):  # first calls pick kernels
        scorer.run_items(batch)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(latencies) < 3 or (time.perf_counter() < deadline and len(latencies) < 2000):
        start = time.perf_counter()
        scorer.run_items(batch)
        latencies.append(time.perf_counter() - start)
    ms = np.asarray(latencies) * 1000.0
    rows, tokens = batch.shape
    p50 = float(np.percentile(ms, 50))
    return {"batch": rows, "seq": tokens, "runs": len(latencies), "p50_ms": round(p50, 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "seq_per_s": round(rows / p50 * 1000.0, 1)}  # fmt: skip


def perf(model_dir: Path, seconds: float = 1.0) -> list[dict[str, Any]]:
    """Latency/throughput of the item engine alone at every bucket shape."""
    from stream_app.scoring.tensorrt_backend import TensorRTScorer

    scorer = TensorRTScorer(model_dir)
    meta = scorer.metadata
    return [time_items(scorer, synthetic_batch(b, t), seconds)
            for t in meta.seq_buckets for b in meta.batch_buckets]  # fmt: skip


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("build", "infer", "perf"))
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, default=None, help="default: --model-dir")
    parser.add_argument("--profiles", choices=("bucket", "seq"), default="bucket")
    parser.add_argument("--timing-cache", type=Path, default=None)
    parser.add_argument("--workspace-gib", type=float, default=4.0)
    parser.add_argument("--seconds", type=float, default=1.0, help="perf: time per shape")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = _parse_args(argv)
    try:
        _run(args)
    except ModelLoadError as exc:
        raise SystemExit(f"error: {exc}") from exc


def _run(args: argparse.Namespace) -> None:
    if args.command == "build":
        target = build_engines(args.model_dir, args.out_dir, args.profiles, args.timing_cache,
                               args.workspace_gib)  # fmt: skip
        print(f"max |Δp| vs ONNX Runtime: {check_parity(target):.2e}")
    elif args.command == "infer":
        print(f"max |Δp| vs ONNX Runtime: {check_parity(args.model_dir):.2e}")
    else:
        for row in perf(args.model_dir, args.seconds):
            print(row)


if __name__ == "__main__":
    main()
