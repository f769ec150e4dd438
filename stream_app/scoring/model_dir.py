"""The model directory contract: ``metadata.json`` plus the files it names.

    item_encoder.onnx       input_ids, attention_mask [N, T] → item_embedding [N, d]
    session_model.onnx      items [B,K,d], event_types [B,K], numerics [B,K,E], mask [B,K],
                            features [B,F] → probability [B] (calibrated)
    model.pt                both torch modules' weights (the torch backend)
    rates.json              product/category rates (``stream_app.scoring.rates``)
    tokenizer files, metadata.json (written last: its presence marks a complete directory)

A scorer reads the directory once at start-up. Everything that can be wrong with it is a
``ModelLoadError`` raised here, before the first batch, so a broken deployment fails fast.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stream_app.core.errors import ModelLoadError
from stream_app.scoring.inputs import InputSpec

METADATA_FILE = "metadata.json"
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
DEFAULT_SEQ_BUCKETS: tuple[int, ...] = (8, 16, 32)
DEFAULT_BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
# No INT8 variant: dynamic INT8 moved item embeddings by >10 % of their scale, and the item
# encoder only runs on cache misses, so it would buy almost nothing per score.
DEFAULT_ONNX = {"fp32": "item_encoder.onnx", "session": "session_model.onnx"}


def seq_buckets_for(
    max_tokens: int, candidates: tuple[int, ...] = DEFAULT_SEQ_BUCKETS
) -> tuple[int, ...]:
    """Token buckets up to ``max_tokens``; ``max_tokens`` itself is always the last one."""
    below = tuple(b for b in candidates if b < max_tokens)
    return (*below, max_tokens)


@dataclass(frozen=True)
class ModelMetadata:
    model_version: str
    max_tokens: int  # item text tokens (the item encoder's input)
    feature_names: tuple[str, ...]
    base_model: str
    item_dim: int = 64
    max_events: int = 16
    context_vocab: tuple[tuple[str, ...], ...] = ((), (), ())
    onnx: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ONNX))
    torch: str = "model.pt"
    threshold: float = 0.5
    calibration: dict[str, Any] = field(default_factory=dict)
    seq_buckets: tuple[int, ...] = ()  # item-encoder token buckets
    batch_buckets: tuple[int, ...] = DEFAULT_BATCH_BUCKETS  # rows per model call
    tensorrt: dict[str, Any] = field(default_factory=dict)
    tune_layers: int = 0
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
        expected = self.spec.feature_names
        if tuple(self.feature_names) != expected:
            raise ModelLoadError(
                f"model expects features {self.feature_names}, "
                f"stream_app.scoring.inputs provides {expected}"
            )

    @property
    def spec(self) -> InputSpec:
        return InputSpec(max_events=self.max_events, context_vocab=self.context_vocab)

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
            item_dim=int(raw.get("item_dim", 64)),
            max_events=int(raw.get("max_events", 16)),
            context_vocab=tuple(
                tuple(str(v) for v in f) for f in raw.get("context_vocab") or ((), (), ())
            ),
            onnx=dict(raw.get("onnx") or DEFAULT_ONNX),
            torch=str(raw.get("torch", "model.pt")),
            threshold=float(raw.get("threshold", 0.5)),
            calibration=dict(raw.get("calibration") or {}),
            seq_buckets=tuple(int(b) for b in raw.get("seq_buckets") or ()),
            batch_buckets=tuple(int(b) for b in raw.get("batch_buckets") or DEFAULT_BATCH_BUCKETS),
            tensorrt=dict(raw.get("tensorrt") or {}),
            tune_layers=int(raw.get("tune_layers", 0)),
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
