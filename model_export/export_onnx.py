"""The two graphs → ONNX (item encoder fp32 + INT8, session model fp32), always validated.

``export_item_encoder`` traces the item encoder (MiniLM + mean pooling + projection) with
the TorchScript-based exporter and eager attention (plain MatMul/Softmax, no SDPA NaN
guards), folds constants with ONNX Runtime's *basic* optimizer (standard ops only, so
TensorRT can still parse the file) and compares torch and ONNX Runtime on real tokenised
item texts at several (rows, tokens) shapes. ``export_session_model`` does the same for the
session model on seeded random windows. Fusions are left to the session-time
``ORT_ENABLE_ALL`` level, which is hardware-specific.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stream_app.core.errors import ModelLoadError
from stream_app.scoring.network import ItemEncoder, SessionModel
from stream_app.scoring.onnx_backend import create_session, run_items, run_session_model
from stream_app.scoring.preprocess import ITEM_INPUTS, SESSION_INPUTS, pad_tokens
from stream_app.sessions.features import EVENT_NUMERIC_NAMES, N_EVENT_TYPES

log = logging.getLogger(__name__)

# (rows, tokens) shapes the item validation runs; 1-row, odd and bucket-sized batches.
ITEM_SHAPES: tuple[tuple[int, int], ...] = ((1, 8), (5, 13), (8, 16), (3, 32))
# (rows, events) shapes for the session model.
SESSION_SHAPES: tuple[tuple[int, int], ...] = ((1, 16), (5, 16), (64, 16))
_SAMPLE_TEXTS: tuple[str, ...] = (
    "google men's 100% cotton short sleeve hero tee white",
    "electronics smartphone samsung",
    "appliances kitchen refrigerators lg",
    "youtube twill cap",
    "",
    "running shoes",
)


class ExportValidationError(ModelLoadError):
    """An exported graph whose outputs do not match the reference within tolerance."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    seconds: float
    max_abs_diff: float
    n_nodes: int
    size_bytes: int


def item_samples(tokenizer_dir: Path, shapes: Sequence[tuple[int, int]] = ITEM_SHAPES,
                 seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Real tokenised item texts, right-padded (rows of different lengths), seeded."""
    from stream_app.scoring.preprocess import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    rng = np.random.default_rng(seed)
    batches = []
    for rows, length in shapes:
        texts = [" ".join(rng.choice(_SAMPLE_TEXTS, size=1 + i % 3)) for i in range(rows)]
        encoded = tokenizer(texts, truncation=True, max_length=length, padding=False)
        tokens = [t[: max(2, length - 2 * i)] for i, t in enumerate(encoded["input_ids"])]
        batches.append(pad_tokens(tokens, length, int(tokenizer.pad_token_id or 0)))
    return batches


def session_samples(item_dim: int, n_features: int, shapes: Sequence[tuple[int, int]] =
                    SESSION_SHAPES, seed: int = 0) -> list[tuple[np.ndarray, ...]]:  # fmt: skip
    """Seeded random windows of every fill level (1 event up to full)."""
    rng = np.random.default_rng(seed)
    out: list[tuple[np.ndarray, ...]] = []
    for rows, k in shapes:
        filled = 1 + np.arange(rows) % k
        mask = (np.arange(k)[None, :] >= (k - filled)[:, None]).astype(np.float32)
        types = rng.integers(1, N_EVENT_TYPES, size=(rows, k)) * mask.astype(np.int64)
        out.append((
            rng.normal(size=(rows, k, item_dim)).astype(np.float32),
            types.astype(np.int64),
            rng.normal(size=(rows, k, len(EVENT_NUMERIC_NAMES))).astype(np.float32)
            * mask[..., None],
            mask,
            rng.normal(size=(rows, n_features)).astype(np.float32),
        ))  # fmt: skip
    return out


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _trace(module: torch.nn.Module, args: tuple[torch.Tensor, ...], out_path: Path,
           inputs: Sequence[str], output: str, axes: dict[str, dict[int, str]],
           opset: int) -> None:  # fmt: skip
    with warnings.catch_warnings():
        # The tracer's own chatter (legacy-exporter notice, shape-constant notes in
        # transformers' mask code that are shape-only and validated below).
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(out_path), dynamo=False, input_names=list(inputs),
                          output_names=[output], dynamic_axes=axes, opset_version=opset,
                          do_constant_folding=True)  # fmt: skip


def _fold_constants(path: Path) -> int:
    """Rewrite ``path`` with ORT's basic optimizer (standard ONNX ops only); node count."""
    import onnxruntime as ort

    tmp = path.with_suffix(".basic.onnx")
    create_session(path, level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, save_to=tmp)
    tmp.replace(path)
    return _node_count(path)


def _node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def compare(path: Path, reference: Sequence[np.ndarray], got: Sequence[np.ndarray],
            atol: float) -> float:  # fmt: skip
    """max |Δ| between reference and ONNX Runtime outputs; raise above ``atol``."""
    worst = 0.0
    for expected, value in zip(reference, got, strict=True):
        if value.shape != expected.shape:
            raise ExportValidationError(f"{path}: output shape {value.shape} != {expected.shape}")
        if not np.all(np.isfinite(value)):
            raise ExportValidationError(f"{path}: non-finite outputs at shape {value.shape}")
        worst = max(worst, float(np.max(np.abs(value - expected))))
    if worst > atol:
        raise ExportValidationError(f"{path}: max |Δ| {worst:.3g} > atol {atol:.3g}")
    return worst


@torch.inference_mode()
def torch_outputs(module: torch.nn.Module, batches: Sequence[tuple[np.ndarray, ...]]
                  ) -> list[np.ndarray]:  # fmt: skip
    return [module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in b)).float().numpy()
            for b in batches]  # fmt: skip


def validate_items(path: Path, encoder: ItemEncoder, tokenizer_dir: Path, atol: float) -> float:
    batches = item_samples(tokenizer_dir)
    session = create_session(path)
    got = [run_items(session, *b) for b in batches]
    return compare(path, torch_outputs(encoder, batches), got, atol)


def validate_session(path: Path, model: SessionModel, item_dim: int, atol: float) -> float:
    batches = session_samples(item_dim, int(model.feature_mean.shape[0]))
    session = create_session(path)
    got = [run_session_model(session, b) for b in batches]
    return compare(path, torch_outputs(model, batches), got, atol)


def export_item_encoder(encoder: ItemEncoder, tokenizer_dir: Path, out_path: Path,
                        opset: int = 17, atol: float = 1e-4) -> ExportReport:  # fmt: skip
    """fp32 ONNX with dynamic (rows, tokens) axes; validated vs torch (max |Δ| ≤ atol)."""
    start = time.perf_counter()
    sample = item_samples(tokenizer_dir)[1]
    axes = {name: {0: "rows", 1: "tokens"} for name in ITEM_INPUTS}
    axes["item_embedding"] = {0: "rows"}
    with _eval_mode(encoder):
        _trace(encoder, tuple(torch.from_numpy(a) for a in sample), out_path, ITEM_INPUTS,
               "item_embedding", axes, opset)  # fmt: skip
        n_nodes = _fold_constants(out_path)
        worst = validate_items(out_path, encoder, tokenizer_dir, atol)
    return _report(out_path, start, worst, n_nodes)


def export_session_model(model: SessionModel, item_dim: int, out_path: Path, opset: int = 17,
                         atol: float = 1e-5) -> ExportReport:  # fmt: skip
    """fp32 ONNX with a dynamic batch axis (K fixed by the model); validated vs torch."""
    start = time.perf_counter()
    sample = session_samples(item_dim, int(model.feature_mean.shape[0]))[1]
    axes = {name: {0: "batch"} for name in SESSION_INPUTS}
    axes["probability"] = {0: "batch"}
    with _eval_mode(model):
        _trace(model, tuple(torch.from_numpy(a) for a in sample), out_path, SESSION_INPUTS,
               "probability", axes, opset)  # fmt: skip
        n_nodes = _fold_constants(out_path)
        worst = validate_session(out_path, model, item_dim, atol)
    return _report(out_path, start, worst, n_nodes)


def _report(path: Path, start: float, worst: float, n_nodes: int) -> ExportReport:
    seconds = time.perf_counter() - start
    log.info("exported %s: %d nodes, max |Δ| %.2e, %.1f s", path, n_nodes, worst, seconds)
    return ExportReport(path, seconds, worst, n_nodes, path.stat().st_size)


def quantize_int8(onnx_path: Path, out_path: Path, tokenizer_dir: Path,
                  max_rel_diff: float = 0.1) -> ExportReport:  # fmt: skip
    """Dynamic INT8 item encoder (QInt8 per-channel MatMul/Gemm/Gather weights); parity vs
    the fp32 graph on real item texts (max |Δ| of the embedding over its largest |value|)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    start = time.perf_counter()
    with _quiet_root_logger():
        quantize_dynamic(Path(onnx_path), Path(out_path), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm", "Gather"],
                         per_channel=True)  # fmt: skip
    batches = item_samples(tokenizer_dir, seed=1)
    fp32, int8 = create_session(onnx_path), create_session(out_path)
    reference = [run_items(fp32, *b) for b in batches]
    # Relative to the embedding's scale: int8 noise grows with the weights' magnitude.
    scale = max(float(np.max(np.abs(r))) for r in reference)
    got = [run_items(int8, *b) / scale for b in batches]
    worst = compare(out_path, [r / scale for r in reference], got, max_rel_diff)
    return _report(Path(out_path), start, worst, _node_count(Path(out_path)))


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    # onnxruntime.quantization logs one root-logger INFO line per tensor (hundreds).
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING + 1))
    try:
        yield
    finally:
        root.setLevel(level)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Rank-based ROC AUC (Mann-Whitney U; ties count half)."""
    y = np.asarray(labels).astype(bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("AUC needs both classes")
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="mergesort")
    sorted_scores = np.asarray(scores, dtype=np.float64)[order]
    ranks = np.empty(len(y), dtype=np.float64)
    # Average ranks over runs of equal scores so ties count half.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts, strict=True):
        ranks[order[start : start + count]] = start + (count + 1) / 2.0
    return float((ranks[y].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def auc_drop(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> float:
    """AUC(reference) - AUC(candidate) on the same labelled rows (positive = worse)."""
    return roc_auc(reference, labels) - roc_auc(candidate, labels)


def check_auc_drop(
    reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray, max_drop: float = 0.005
) -> float:
    """``auc_drop`` that raises ``ExportValidationError`` above ``max_drop``."""
    drop = auc_drop(reference, candidate, labels)
    if drop > max_drop:
        raise ExportValidationError(f"AUC drop {drop:.4f} > {max_drop}")
    return drop
