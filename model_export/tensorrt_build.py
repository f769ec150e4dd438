"""TensorRT engines from the model directory's two ONNX graphs: build, infer, perf.

    python -m model_export.tensorrt_build build --model-dir DIR [--out-dir D] [--profiles seq]
    python -m model_export.tensorrt_build infer --model-dir DIR      # parity vs ONNX Runtime
    python -m model_export.tensorrt_build perf  --model-dir DIR      # latency per bucket

One engine per graph (``item_encoder.plan``, ``session_model.plan``). Engines match the
preprocessor: the item encoder's profiles are planned from the model's batch and token
buckets (``bucket``: one exact-shape profile per (batch, tokens) bucket, the fastest kernels;
``seq``: one profile per token bucket spanning every batch bucket, a quicker build); the
session model's from the batch buckets at the window's K events.
Precision is FP16 with LayerNorm, Softmax and reductions pinned to FP32
(``OBEY_PRECISION_CONSTRAINTS``): those are where fp16 loses BERT accuracy. A timing cache
file persists across builds (``--timing-cache``), so rebuilding on the same GPU mostly skips
kernel autotuning. ``tensorrt`` is imported lazily: planning and the CLI parse without it.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from stream_app.errors import ModelLoadError
from stream_app.scoring.model_dir import ModelMetadata, load_metadata, write_metadata
from stream_app.scoring.tensorrt_backend import EngineProfile, import_tensorrt

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


def profile_shapes(profile: EngineProfile) -> Shapes:
    """Item encoder: (min, opt, max) shapes of each input for ``set_shape``."""
    batches = (profile.min_batch, profile.opt_batch, profile.max_batch)
    shape = tuple((b, profile.tokens) for b in batches)
    return {"input_ids": shape, "attention_mask": shape}  # type: ignore[dict-item]


def session_profile_shapes(profile: EngineProfile, meta: ModelMetadata) -> Shapes:
    """Session model: ``profile.tokens`` is the window's K events."""
    from stream_app.features import EVENT_NUMERIC_NAMES

    k, f = profile.tokens, len(meta.feature_names)
    batches = (profile.min_batch, profile.opt_batch, profile.max_batch)
    dims = {"items": (k, meta.item_dim), "event_types": (k,),
            "numerics": (k, len(EVENT_NUMERIC_NAMES)), "mask": (k,), "features": (f,)}  # fmt: skip
    return {name: tuple((b, *rest) for b in batches) for name, rest in dims.items()}  # type: ignore[misc]


def session_profiles(meta: ModelMetadata, mode: ProfileMode) -> list[EngineProfile]:
    return plan_profiles((meta.max_events,), meta.batch_buckets, mode)


def _parse_onnx(trt: ModuleType, builder: Any, logger: Any, onnx_path: Path) -> Any:
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path}: {errors}")
    return network


def _pin_fp32(trt: ModuleType, network: Any) -> int:
    """Keep numerically sensitive layers in FP32 inside an FP16 engine; count pinned."""
    sensitive = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in sensitive:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                if layer.get_output(output).dtype in (trt.float32, trt.float16):
                    layer.set_output_type(output, trt.float32)
            pinned += 1
    return pinned


def _builder_config(trt: ModuleType, builder: Any, cache_bytes: bytes, workspace_gib: float) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return config


def build_engine(
    onnx_path: Path,
    shapes: Sequence[Shapes],
    timing_cache: Path,
    workspace_gib: float = 4.0,
) -> bytes:
    """Serialized FP16 engine with ``profiles``; updates the timing cache file."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _parse_onnx(trt, builder, logger, onnx_path)
    log.info("pinned %d layers to fp32", _pin_fp32(trt, network))
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
    # The builder adds every kernel timing it measured to the config's cache.
    timing_cache.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
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
    plans = {
        "items": plan_profiles(meta.seq_buckets, meta.batch_buckets, mode),
        "session": session_profiles(meta, mode),
    }
    shapes = {
        "items": [profile_shapes(p) for p in plans["items"]],
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
    from stream_app.windows import WindowRules

    sample = Path(__file__).resolve().parents[1] / "stream_app" / "demo_data"
    sessions = group_sessions(iter_log_events(sample / "rees46_2019-Oct_sample.csv"))
    windows = []
    for events in list(sessions.values())[:n]:
        windows.extend(snapshots_for_session(events, WindowRules())[-1:])
    return windows


def perf(model_dir: Path, seconds: float = 1.0) -> list[dict[str, Any]]:
    """Latency/throughput of the item engine at every bucket shape (gpu_check.time_items)."""
    from model_export.gpu_check import time_items
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
