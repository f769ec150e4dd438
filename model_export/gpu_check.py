"""The one prepared GPU check: GPU backends vs ONNX Runtime CPU on real held-out prefixes, and
the end-to-end scoring time per batch size.

    python -m model_export.gpu_check --out DIR [--backends auto] [--max-prefixes 3000]
        [--model-dir DIR] [--events LOG ...] [--batches 1,8,32,64,128] [--seconds 2]
        [--engine-cache DIR] [--budget-s 480]

1. Examples: for each ``--events`` log (default: the shared ga_merch and REES46 logs), the
   labelled prefixes of its held-out test users (the seeded user split training and
   ``evaluate`` use: ``corpus.SPLIT_SEED``, ``DEFAULT_TEST_FRACTION``), at most
   ``--max-prefixes`` per log (a seeded sample stratified by label).
2. Backends (``--backends``): ``onnx`` (ONNX Runtime CPU fp32, the reference, always run),
   ``torch-cpu``, ``torch-cuda`` (fp16 + CUDA graphs), ``tensorrt`` (engines built or reused
   through ``engine_cache``, the GPU image's own path). ``auto``: onnx plus every GPU backend
   this machine can run; the others are listed as skipped with the reason. A backend named
   explicitly that cannot run is an error.
3. Quality, per log and overall: ROC-AUC and PR-AUC of each backend, their difference to
   ONNX Runtime, and max / mean |Δp|. A GPU backend beyond ``--max-dp`` or ``--max-dauc``
   fails the check (exit 1, after the report is written).
4. Time of the end-to-end scoring call, ``Scorer.score`` on window snapshots (tokenise +
   features + item cache + both graphs), per batch size: ``cold`` (item cache cleared before
   each call: every item text is encoded) and ``warm`` (every text cached, the steady state).
   Consecutive held-out snapshots form the batches; p50/p95/mean ms and windows/s. Start-up
   time (load + engine build + graph capture) per backend too.

Writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` (also printed). Errors a user can fix
(no GPU for a named backend, a missing log or model directory) are one line on stderr and
exit 2. ``--budget-s`` bounds the timing part: cells past it are listed as skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream_app.core.errors import ConfigError, ModelLoadError

log = logging.getLogger("gpu_check")

BACKENDS = ("onnx", "torch-cpu", "torch-cuda", "tensorrt")
GPU_BACKENDS = ("torch-cuda", "tensorrt")
DEFAULT_BATCHES = (1, 8, 32, 64, 128)
MAX_DP = 2e-3  # max |Δp| vs ONNX Runtime fp32 (fp16 engines)
MAX_DAUC = 1e-3  # |Δ ROC-AUC| and |Δ PR-AUC| vs ONNX Runtime fp32
SCORE_CHUNK = 128  # rows per score call in the quality pass (the largest bucket)
Clock = Callable[[], float]


class GpuCheckError(ConfigError):
    """Something the person running the check can fix: reported in one line, exit 2."""


# ---------------------------------------------------------------------------- examples


@dataclass
class Prefixes:
    """Held-out labelled prefixes of one log, as window snapshots (the serving input)."""

    store: str
    snapshots: list[Any]
    labels: np.ndarray
    users: list[str]
    total: int  # held-out prefixes before sampling


def stratified_sample(labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """At most ``limit`` row indices, each class kept in proportion (at least one of each
    class when both exist, so AUCs stay defined); seeded, sorted."""
    if limit <= 0 or len(labels) <= limit:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picks = []
    for value in (0, 1):
        rows = np.flatnonzero(labels == value)
        if len(rows) == 0:
            continue
        share = max(1, round(limit * len(rows) / len(labels)))
        picks.append(rng.choice(rows, size=min(share, len(rows)), replace=False))
    return np.sort(np.concatenate(picks))[: max(limit, len(picks))]


def default_events() -> list[Path]:
    """The shared ga_merch and REES46 logs: ``$INTENT_STREAM_SHARED_DATA`` or ``shared/data``
    beside (or inside) the checkout."""
    from model_export.select import DEFAULT_EVENTS

    root = Path(__file__).resolve().parents[1]
    bases = [Path(os.environ["INTENT_STREAM_SHARED_DATA"])] if os.environ.get(
        "INTENT_STREAM_SHARED_DATA") else [root.parent / "shared" / "data",
                                           root / "shared" / "data"]  # fmt: skip
    for base in bases:
        paths = [base / p.parent.name / p.name for p in DEFAULT_EVENTS]
        if all(p.is_file() for p in paths):
            return paths
    return [bases[0] / p.parent.name / p.name for p in DEFAULT_EVENTS]


def heldout_prefixes(path: Path, limit: int, seed: int = 0) -> Prefixes:
    """The held-out test users' labelled prefixes of ``path`` (at most ``limit``)."""
    from model_export.corpus import DEFAULT_TEST_FRACTION, SPLIT_SEED, store_name
    from model_export.data import load_dataset, split_by_user
    from model_export.tables import store_examples

    if not Path(path).exists():
        raise GpuCheckError(f"no event log at {path} (pass --events or set "
                            f"INTENT_STREAM_SHARED_DATA)")  # fmt: skip
    dataset = load_dataset(path)
    split = split_by_user(dataset, (1 - DEFAULT_TEST_FRACTION, 0.0, DEFAULT_TEST_FRACTION),
                          SPLIT_SEED)  # fmt: skip
    examples = store_examples(dataset, split.test)
    labels = np.asarray([e.label for e in examples], dtype=np.int64)
    keep = stratified_sample(labels, limit, seed)
    return Prefixes(store_name(path), [examples[i].snapshot for i in keep], labels[keep],
                    [examples[i].user_id or examples[i].session_id for i in keep],
                    len(examples))  # fmt: skip


# ---------------------------------------------------------------------------- backends


@dataclass(frozen=True)
class Availability:
    cuda: bool
    tensorrt: bool
    torch: bool = True

    def reason(self, backend: str) -> str | None:
        """Why ``backend`` cannot run here, or None."""
        if backend in ("torch-cpu", "torch-cuda") and not self.torch:
            return "torch is not installed"
        if backend in GPU_BACKENDS and not self.cuda:
            return "no CUDA GPU is visible"
        if backend == "tensorrt" and not self.tensorrt:
            return "tensorrt is not installed (intent-stream[gpu])"
        return None


def probe_availability() -> Availability:
    try:
        import torch
    except ImportError:
        return Availability(cuda=False, tensorrt=False, torch=False)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        has_trt = False
    else:
        has_trt = True
    return Availability(cuda=bool(torch.cuda.is_available()), tensorrt=has_trt)


def resolve_backends(text: str, available: Availability) -> tuple[list[str], dict[str, str]]:
    """(backends to run, onnx first; skipped backend → reason). ``auto``: what can run here."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in (*BACKENDS, "auto")]
    if unknown:
        raise GpuCheckError(
            f"unknown backend(s) {unknown}; choose from auto, {', '.join(BACKENDS)}"
        )
    skipped: dict[str, str] = {}
    if names == ["auto"]:
        chosen = ["onnx"]
        for name in GPU_BACKENDS:
            reason = available.reason(name)
            if reason is None:
                chosen.append(name)
            else:
                skipped[name] = reason
        return chosen, skipped
    for name in names:
        reason = available.reason(name)
        if reason is not None:
            raise GpuCheckError(f"backend {name} cannot run here: {reason}")
    return ["onnx", *[n for n in dict.fromkeys(names) if n != "onnx"]], skipped


def make_scorer(name: str, model_dir: Path, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The backend's scorer and what its start-up cost (load, engine build, graph capture)."""
    start = time.perf_counter()
    info: dict[str, Any] = {}
    scorer: Any
    if name == "onnx":
        from stream_app.scoring.onnx_backend import OnnxScorer

        scorer = OnnxScorer(model_dir, threads=args.threads)
    elif name in ("torch-cpu", "torch-cuda"):
        from stream_app.scoring.torch_backend import TorchScorer

        scorer = TorchScorer(model_dir, device=name.split("-")[1], threads=args.threads)
    else:
        from model_export.engine_cache import ensure_engines, probe_gpu
        from stream_app.scoring.tensorrt_backend import TensorRTScorer

        build_start = time.perf_counter()
        served = ensure_engines(model_dir, args.engine_cache or args.out / "engines", probe_gpu())
        info["engines_s"] = round(time.perf_counter() - build_start, 1)
        info["engines"] = str(served)
        scorer = TensorRTScorer(served)
    info["start_s"] = round(time.perf_counter() - start, 2)
    info["model_version"] = scorer.model_version
    if hasattr(scorer, "describe"):
        info["runtime"] = scorer.describe()
    return scorer, info


# ---------------------------------------------------------------------------- quality


def score_all(scorer: Any, snapshots: Sequence[Any], chunk: int = SCORE_CHUNK) -> np.ndarray:
    parts = [scorer.score(snapshots[i : i + chunk]) for i in range(0, len(snapshots), chunk)]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def _aucs(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    if not 0 < int(y.sum()) < len(y):
        return {"roc_auc": None, "pr_auc": None}
    return {"roc_auc": float(roc_auc_score(y, p)), "pr_auc": float(average_precision_score(y, p))}


def quality(y: np.ndarray, p: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """AUCs of ``p``, their difference to ``reference``'s, and max / mean |Δp|."""
    own, ref = _aucs(y, p), _aucs(y, reference)
    diff = np.abs(np.asarray(p) - np.asarray(reference))
    out: dict[str, Any] = {"n": len(y), "positives": int(y.sum()), **own,
                           "max_abs_dp": float(diff.max()) if len(diff) else 0.0,
                           "mean_abs_dp": float(diff.mean()) if len(diff) else 0.0}  # fmt: skip
    for metric in ("roc_auc", "pr_auc"):
        a, b = own[metric], ref[metric]
        out[f"d_{metric}"] = None if a is None or b is None else a - b
    return out


def within_tolerance(block: dict[str, Any], max_dp: float, max_dauc: float) -> bool:
    aucs = [abs(block[k]) for k in ("d_roc_auc", "d_pr_auc") if block[k] is not None]
    return block["max_abs_dp"] <= max_dp and all(d <= max_dauc for d in aucs)


# ---------------------------------------------------------------------------- timing


@dataclass
class Deadline:
    seconds: float
    clock: Clock = time.monotonic
    start: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.start = self.clock()

    def passed(self) -> bool:
        return self.clock() - self.start > self.seconds


def time_scoring(
    scorer: Any, snapshots: Sequence[Any], batch: int, cold: bool, seconds: float,
    max_runs: int = 500, clock: Clock = time.perf_counter,
) -> dict[str, Any]:  # fmt: skip
    """Time ``scorer.score`` on consecutive ``batch``-sized slices of ``snapshots`` (cycling)
    for about ``seconds`` (at least 3 calls). ``cold`` clears the item cache before each."""
    if len(snapshots) < batch:
        raise GpuCheckError(f"{len(snapshots)} held-out prefixes < batch {batch}: raise "
                            "--max-prefixes or drop that batch size")  # fmt: skip
    latencies: list[float] = []
    offset, stop = 0, clock() + seconds
    while len(latencies) < 3 or (clock() < stop and len(latencies) < max_runs):
        if offset + batch > len(snapshots):
            offset = 0
        part = snapshots[offset : offset + batch]
        offset += batch
        if cold:
            scorer.item_cache.clear()
        start = clock()
        scorer.score(part)
        latencies.append(clock() - start)
    ms = np.asarray(latencies) * 1000.0
    p50 = float(np.percentile(ms, 50))
    return {"batch": batch, "cache": "cold" if cold else "warm", "runs": len(ms),
            "p50_ms": round(p50, 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "mean_ms": round(float(ms.mean()), 3),
            "windows_per_s": round(batch / p50 * 1000.0, 1) if p50 > 0 else None}  # fmt: skip


# ---------------------------------------------------------------------------- report


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(),
                            "cpu_count": os.cpu_count()}  # fmt: skip
    for module in ("numpy", "onnxruntime", "torch", "tensorrt"):
        try:
            info[module] = str(__import__(module).__version__)
        except ImportError:
            info[module] = None
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        info["gpu"] = None
    return info


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"# GPU check: {report['model_version']}",
        "",
        f"Machine: {env.get('gpu') or 'no GPU'}, {env.get('cpu_count')} CPUs; "
        f"torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}, "
        f"TensorRT {env.get('tensorrt')}. Held-out prefixes: "
        + ", ".join(
            f"{s['store']} {s['n']} of {s['total']} ({s['positives']} positive)"
            for s in report["stores"]
        )
        + ".",
        "",
        "## Quality vs ONNX Runtime CPU fp32",
        "",
        "| backend | store | ROC-AUC | Δ ROC-AUC | PR-AUC | Δ PR-AUC | max abs Δp "
        "| mean abs Δp | ok |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, result in report["backends"].items():
        for store, q in result.get("quality", {}).items():
            ok = "" if name == "onnx" or store != "all" else ("yes" if result["ok"] else "NO")
            cells = (name, store, _fmt(q["roc_auc"]), _fmt(q["d_roc_auc"], 2), _fmt(q["pr_auc"]),
                     _fmt(q["d_pr_auc"], 2), _fmt(q["max_abs_dp"], 2), _fmt(q["mean_abs_dp"], 2),
                     ok)  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## End-to-end `Scorer.score` time (tokenise + features + cache + models)", "",
              "| backend | batch | item cache | runs | p50 ms | p95 ms | windows/s |",
              "|---|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for name, result in report["backends"].items():
        for t in result.get("timings", []):
            row = (name, t["batch"], t["cache"], t["runs"], t["p50_ms"], t["p95_ms"],
                   t["windows_per_s"])  # fmt: skip
            lines.append("| " + " | ".join(str(c) for c in row) + " |")
    lines += ["", "## Start-up", ""]
    for name, result in report["backends"].items():
        lines.append(f"- {name}: {json.dumps(result.get('startup', {}), sort_keys=True)}")
    for name, reason in report["skipped"].items():
        lines.append(f"- {name}: skipped ({reason})")
    for cell in report.get("timings_skipped", []):
        lines.append(f"- timing skipped (budget): {cell}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- main


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text}") from exc


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m model_export.gpu_check",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument("--backends", default="auto", help=f"auto or some of {BACKENDS}")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="default: the bundled model (built from the weights if needed)",
    )
    parser.add_argument(
        "--events",
        type=Path,
        nargs="+",
        default=None,
        help="labelled logs (default: shared ga_merch and REES46)",
    )
    parser.add_argument("--max-prefixes", type=int, default=3000, help="per log")
    parser.add_argument("--batches", type=_ints, default=list(DEFAULT_BATCHES))
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per cell")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: all)")
    parser.add_argument("--engine-cache", type=Path, default=None, help="default: OUT/engines")
    parser.add_argument("--budget-s", type=float, default=480.0, help="timing deadline")
    parser.add_argument("--max-dp", type=float, default=MAX_DP)
    parser.add_argument("--max-dauc", type=float, default=MAX_DAUC)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _model_dir(args: argparse.Namespace) -> Path:
    if args.model_dir is not None:
        if not (args.model_dir / "metadata.json").is_file():
            raise GpuCheckError(f"{args.model_dir} is not a model directory (no metadata.json)")
        return Path(args.model_dir)
    from model_export.bundle import default_model_dir

    return default_model_dir()


def run_check(args: argparse.Namespace, available: Availability | None = None) -> dict[str, Any]:
    """Everything but the exit code: returns the report (also written under ``args.out``)."""
    backends, skipped = resolve_backends(args.backends, available or probe_availability())
    if any(b < 1 for b in args.batches):
        raise GpuCheckError(f"batch sizes must be positive, got {args.batches}")
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = _model_dir(args)
    logs = args.events or default_events()
    stores = [heldout_prefixes(Path(p), args.max_prefixes, args.seed) for p in logs]
    snapshots = [s for store in stores for s in store.snapshots]
    y = np.concatenate([s.labels for s in stores])
    spans = np.cumsum([0, *[len(s.snapshots) for s in stores]])
    report: dict[str, Any] = {
        "environment": environment(), "model_dir": str(model_dir), "skipped": skipped,
        "stores": [{"store": s.store, "n": len(s.labels), "total": s.total,
                    "positives": int(s.labels.sum())} for s in stores],
        "tolerance": {"max_dp": args.max_dp, "max_dauc": args.max_dauc},
        "backends": {}, "timings_skipped": [],
    }  # fmt: skip
    log.info("held-out prefixes: %s", report["stores"])
    deadline = Deadline(args.budget_s)
    reference: np.ndarray | None = None
    for name in backends:
        scorer, startup = make_scorer(name, model_dir, args)
        report.setdefault("model_version", scorer.metadata.model_version)
        p = score_all(scorer, snapshots)  # also fills the item cache: the "warm" state
        reference = p if reference is None else reference
        blocks = {s.store: quality(y[a:b], p[a:b], reference[a:b])
                  for s, a, b in zip(stores, spans[:-1], spans[1:], strict=True)}  # fmt: skip
        blocks["all"] = quality(y, p, reference)
        ok = name == "onnx" or within_tolerance(blocks["all"], args.max_dp, args.max_dauc)
        timings = []
        for batch in args.batches:
            for cold in (False, True):
                if deadline.passed():
                    report["timings_skipped"].append(f"{name} batch {batch} "
                                                     f"{'cold' if cold else 'warm'}")  # fmt: skip
                    continue
                timings.append(time_scoring(scorer, snapshots, batch, cold, args.seconds))
                log.info("%s %s", name, timings[-1])
        report["backends"][name] = {"startup": startup, "quality": blocks, "ok": ok,
                                    "timings": timings}  # fmt: skip
        scorer.close()
    report["ok"] = all(r["ok"] for r in report["backends"].values())
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    (args.out / "gpu_check.md").write_text(markdown(report), "utf-8")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)  # fmt: skip
    args = parse_args(argv)
    try:
        report = run_check(args)
    except (GpuCheckError, ConfigError, ModelLoadError, OSError) as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2
    print(markdown(report))
    if not report["ok"]:
        bad = [n for n, r in report["backends"].items() if not r["ok"]]
        print(f"gpu_check: {', '.join(bad)} beyond tolerance (see {args.out})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
