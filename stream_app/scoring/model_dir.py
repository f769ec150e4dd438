"""The model directory contract: ``metadata.json`` plus the files it names.

A scorer reads the directory once at start-up. Everything that can be wrong with it (missing
file, bad JSON, bucket lists that do not fit ``max_tokens``) is a ``ModelLoadError`` raised
here, before the first batch, so a broken deployment fails fast instead of dead-lettering
traffic.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stream_app.errors import ModelLoadError

METADATA_FILE = "metadata.json"
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
DEFAULT_SEQ_BUCKETS: tuple[int, ...] = (16, 32, 64, 128)
DEFAULT_BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)


def seq_buckets_for(
    max_tokens: int, candidates: tuple[int, ...] = DEFAULT_SEQ_BUCKETS
) -> tuple[int, ...]:
    """Sequence buckets up to ``max_tokens``; ``max_tokens`` itself is always the last one."""
    below = tuple(b for b in candidates if b < max_tokens)
    return (*below, max_tokens)


@dataclass(frozen=True)
class ModelMetadata:
    model_version: str
    max_tokens: int
    feature_names: tuple[str, ...]
    base_model: str
    onnx: dict[str, str] = field(
        default_factory=lambda: {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    )
    torch: str = "model.pt"
    threshold: float = 0.5
    calibration: dict[str, Any] = field(default_factory=dict)
    seq_buckets: tuple[int, ...] = ()
    batch_buckets: tuple[int, ...] = DEFAULT_BATCH_BUCKETS
    tensorrt: dict[str, Any] = field(default_factory=dict)
    text_events: int = 8  # events in session_text; must match training
    source_hash: str = ""  # hash of the committed weights + base encoder it was built from

    def __post_init__(self) -> None:
        if not self.seq_buckets:
            object.__setattr__(self, "seq_buckets", seq_buckets_for(self.max_tokens))
        _check_buckets("seq_buckets", self.seq_buckets)
        _check_buckets("batch_buckets", self.batch_buckets)
        if self.seq_buckets[-1] != self.max_tokens:
            raise ModelLoadError(
                f"seq_buckets {self.seq_buckets} must end at max_tokens={self.max_tokens}"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def _check_buckets(name: str, buckets: tuple[int, ...]) -> None:
    if not buckets or any(b <= 0 for b in buckets) or list(buckets) != sorted(set(buckets)):
        raise ModelLoadError(f"{name} must be distinct, positive and ascending, got {buckets}")


def metadata_from_dict(raw: dict[str, Any]) -> ModelMetadata:
    """Build metadata from parsed JSON; unknown keys are ignored (forward compatible)."""
    try:
        return ModelMetadata(
            model_version=str(raw["model_version"]),
            max_tokens=int(raw["max_tokens"]),
            feature_names=tuple(str(n) for n in raw["feature_names"]),
            base_model=str(raw.get("base_model", "")),
            onnx=dict(raw.get("onnx") or {"fp32": "model.onnx", "int8": "model.int8.onnx"}),
            torch=str(raw.get("torch", "model.pt")),
            threshold=float(raw.get("threshold", 0.5)),
            calibration=dict(raw.get("calibration") or {}),
            seq_buckets=tuple(int(b) for b in raw.get("seq_buckets") or ()),
            batch_buckets=tuple(int(b) for b in raw.get("batch_buckets") or DEFAULT_BATCH_BUCKETS),
            tensorrt=dict(raw.get("tensorrt") or {}),
            text_events=int(raw.get("text_events", 8)),
            source_hash=str(raw.get("source_hash", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"invalid model metadata: {exc!r}") from exc


def load_metadata(model_dir: Path) -> ModelMetadata:
    """Read and validate ``metadata.json``; check the tokenizer files are there."""
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        raise ModelLoadError(f"not a model directory (no {METADATA_FILE}): {model_dir}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"unreadable {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    require_files(model_dir, TOKENIZER_FILES[:1])
    return metadata_from_dict(raw)


def require_files(model_dir: Path, names: tuple[str, ...] | list[str]) -> None:
    missing = [n for n in names if not (Path(model_dir) / n).is_file()]
    if missing:
        raise ModelLoadError(f"model directory {model_dir} lacks {', '.join(missing)}")


def write_metadata(model_dir: Path, metadata: ModelMetadata) -> None:
    (Path(model_dir) / METADATA_FILE).write_text(metadata.to_json(), encoding="utf-8")
