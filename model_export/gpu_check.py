"""The one prepared GPU check: build, parity, and timings of every available backend.

    python -m model_export.gpu_check --out DIR [--batches 1,8,32,128] [--seqs 8,16,32]

Steps: (1) build the model directory (the bundled trained model if its weights are
committed, plus an untrained one for timing: speed does not depend on weights); (2) ONNX
Runtime CPU timings of the item encoder (the only costly graph; it runs on cache misses),
the baseline; (3) with CUDA: torch fp16, parity of whole scores vs ONNX Runtime and
timings; (4) with ``tensorrt`` importable: build both engines (one profile per token bucket
to keep the build short), parity, timings. Writes ``DIR/gpu_check.json`` and prints a
markdown table last. A deadline (``--budget-s``) skips what would not fit.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stream_app.scoring.preprocess import EncodedBatch

log = logging.getLogger("gpu_check")
FP16_TOLERANCE = 2e-3


def time_items(scorer: Any, batch: EncodedBatch, seconds: float = 1.0) -> dict[str, Any]:
    """Warm up, then time the item encoder (``run_items``) for ~``seconds`` (>= 3 runs)."""
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
    return {
        "batch": rows,
        "seq": tokens,
        "runs": len(latencies),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "seq_per_s": round(rows / float(np.percentile(ms, 50)) * 1000.0, 1),
    }


def environment() -> dict[str, Any]:
    import onnxruntime
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        import tensorrt

        info["tensorrt"] = str(tensorrt.__version__)
    except ImportError:
        info["tensorrt"] = None
    return info


def model_dirs(cache: Path) -> dict[str, Path]:
    from model_export.bundle import WEIGHTS_DIR, build_model_dir, untrained_model_dir

    dirs = {"timing": cache / "untrained"}
    if not (dirs["timing"] / "metadata.json").is_file():
        untrained_model_dir(dirs["timing"])
    if (WEIGHTS_DIR / "metadata.json").is_file():
        dirs["trained"] = build_model_dir(WEIGHTS_DIR)
    else:
        log.warning("no trained weights committed yet: parity runs on the untrained model only")
    return dirs


def parity(candidate: Any, reference: Any) -> float:
    """max |Δp| of whole scores (both graphs) on real windows of the bundled sample."""
    from model_export.tensorrt_build import sample_windows

    snapshots = sample_windows(300)
    return float(np.max(np.abs(candidate.score(snapshots) - reference.score(snapshots))))


class Check:
    """Accumulates results and enforces the overall deadline."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline = time.monotonic() + args.budget_s
        self.results: dict[str, Any] = {"environment": environment(), "timings": {}}

    def time_grid(self, name: str, scorer: Any) -> None:
        from model_export.tensorrt_build import synthetic_batch

        rows = []
        for tokens in self.args.seqs:
            for batch in self.args.batches:
                if time.monotonic() > self.deadline:
                    log.warning("%s: deadline reached, skipping %dx%d", name, batch, tokens)
                    continue
                timing = time_items(scorer, synthetic_batch(batch, tokens), self.args.seconds)
                log.info("%s %s", name, timing)
                rows.append(timing)
        self.results["timings"][name] = rows

    def guarded(self, name: str, step: Callable[[], None]) -> None:
        """Run one step; a failure is recorded, and later steps still run."""
        try:
            step()
        except Exception as exc:
            log.exception("%s failed", name)
            self.results.setdefault("errors", {})[name] = repr(exc)


def run_onnx(check: Check, dirs: dict[str, Path]) -> Any:
    from stream_app.scoring.onnx_backend import OnnxScorer

    scorer = OnnxScorer(dirs["timing"], threads=check.args.threads)
    check.time_grid("onnx-cpu-fp32", scorer)
    return scorer


def run_torch_cuda(check: Check, dirs: dict[str, Path], onnx: Any) -> None:
    from stream_app.scoring.onnx_backend import OnnxScorer
    from stream_app.scoring.torch_backend import TorchScorer

    for label, model_dir in dirs.items():
        scorer = TorchScorer(model_dir, device="cuda")
        reference = onnx if label == "timing" else OnnxScorer(model_dir)
        worst = parity(scorer, reference)
        check.results[f"parity_torch_cuda_fp16_{label}"] = worst
        log.info("torch cuda fp16 vs onnx (%s): max |Δp| %.2e", label, worst)
        if label == "timing":
            check.time_grid("torch-cuda-fp16", scorer)
        scorer.close()
    if check.results["parity_torch_cuda_fp16_timing"] > FP16_TOLERANCE:
        raise AssertionError(f"torch fp16 parity above {FP16_TOLERANCE}")


def run_tensorrt(check: Check, dirs: dict[str, Path], onnx: Any) -> None:
    from model_export.tensorrt_build import build_engines
    from stream_app.scoring.tensorrt_backend import TensorRTScorer

    start = time.perf_counter()
    build_engines(dirs["timing"], mode="seq", timing_cache=check.args.out / "timing.cache")
    check.results["tensorrt_build_s"] = round(time.perf_counter() - start, 1)
    scorer = TensorRTScorer(dirs["timing"])
    worst = parity(scorer, onnx)
    check.results["parity_tensorrt_fp16"] = worst
    check.time_grid("tensorrt-fp16", scorer)
    if worst > FP16_TOLERANCE:
        raise AssertionError(f"TensorRT parity {worst:.2e} above {FP16_TOLERANCE}")


def markdown_table(timings: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| backend | batch | seq | p50 ms | p99 ms | seq/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, rows in timings.items():
        for r in rows:
            cells = (name, r["batch"], r["seq"], r["p50_ms"], r["p99_ms"], r["seq_per_s"])
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _default_cache() -> Path:
    from model_export.bundle import cache_root

    return cache_root() / "gpu-check"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batches", type=_ints, default=[1, 8, 32, 128])
    parser.add_argument("--seqs", type=_ints, default=[8, 16, 32])
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per shape")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip timings after this")
    parser.add_argument("--cache", type=Path, default=None, help="model dirs (default: cache)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args)
    log.info("environment: %s", check.results["environment"])
    dirs = model_dirs(args.cache or _default_cache())
    onnx = run_onnx(check, dirs)
    if not check.results["environment"]["cuda"]:
        log.warning("no CUDA device: timing ONNX Runtime CPU only")
    else:
        check.guarded("torch_cuda", lambda: run_torch_cuda(check, dirs, onnx))
        if check.results["environment"]["tensorrt"]:
            check.guarded("tensorrt", lambda: run_tensorrt(check, dirs, onnx))
        else:
            log.warning("tensorrt is not installed: skipping engine build")
    (args.out / "gpu_check.json").write_text(json.dumps(check.results, indent=2) + "\n")
    print(markdown_table(check.results["timings"]))
    return check.results


if __name__ == "__main__":
    main()
