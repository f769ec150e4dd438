"""The trained intent model's committed weights: what they hold and how to rebuild it.

The repository carries only the small trained parts (``model_export/weights/``):

- ``item_head.safetensors``: the item encoder's projection and its fine-tuned top layers
  (none when ``tune_layers`` is 0: the encoder is the frozen base MiniLM);
- ``session_model.safetensors``: the session model, its feature scaling and Platt buffers;
- ``rates.json``: product/category rates of the training users;
- ``metadata.json``: encoding spec, feature names, calibration, training provenance.

``load_trained`` rebuilds the full modules from the base encoder deterministically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, PreTrainedModel

from stream_app.scoring.network import ItemEncoder, SessionModel

ITEM_HEAD_FILE = "item_head.safetensors"
SESSION_FILE = "session_model.safetensors"
METADATA_FILE = "metadata.json"


def load_encoder(encoder_dir: str | Path) -> PreTrainedModel:
    """Any local Hugging Face BERT-style encoder directory (never touches a hub), eager
    attention (plain MatMul/Softmax: exportable, and the layers accept additive masks)."""
    return AutoModel.from_pretrained(
        str(encoder_dir), local_files_only=True, attn_implementation="eager"
    )


def item_head_state(encoder: ItemEncoder) -> dict[str, torch.Tensor]:
    """The projection and the tuned top layers (named ``top.<i>.*``)."""
    state = {f"proj.{k}": v for k, v in encoder.proj.state_dict().items()}
    for i, layer in enumerate(encoder.top_layers()):
        state.update({f"top.{i}.{k}": v for k, v in layer.state_dict().items()})
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def save_weights(encoder: ItemEncoder, model: SessionModel, rates_json: str, out_dir: Path,
                 metadata: dict[str, Any]) -> None:  # fmt: skip
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(item_head_state(encoder), str(out_dir / ITEM_HEAD_FILE))
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / SESSION_FILE))
    (out_dir / "rates.json").write_text(rates_json, encoding="utf-8")
    text = json.dumps(metadata, indent=2, sort_keys=True, default=float)
    (out_dir / METADATA_FILE).write_text(text + "\n", encoding="utf-8")


def build_encoder(encoder_dir: str | Path, item_dim: int, tune_layers: int,
                  head: dict[str, torch.Tensor] | None = None) -> ItemEncoder:  # fmt: skip
    encoder = ItemEncoder(load_encoder(encoder_dir), item_dim, tune_layers)
    if head is not None:
        encoder.proj.load_state_dict({k[5:]: v for k, v in head.items() if k.startswith("proj.")})
        for i, layer in enumerate(encoder.top_layers()):
            prefix = f"top.{i}."
            layer.load_state_dict({k[len(prefix) :]: v for k, v in head.items()
                                   if k.startswith(prefix)})  # fmt: skip
    return encoder.eval()


def load_trained(weights_dir: str | Path, encoder_dir: str | Path
                 ) -> tuple[ItemEncoder, SessionModel, dict[str, Any]]:  # fmt: skip
    """Base encoder + committed weights → (item encoder, session model, metadata), eval mode."""
    from safetensors.torch import load_file

    weights = Path(weights_dir)
    meta = json.loads((weights / METADATA_FILE).read_text(encoding="utf-8"))
    encoder = build_encoder(encoder_dir, int(meta["item_dim"]), int(meta.get("tune_layers", 0)),
                            load_file(str(weights / ITEM_HEAD_FILE)))  # fmt: skip
    arch = meta["architecture"]
    model = SessionModel(int(meta["item_dim"]), len(meta["feature_names"]), int(arch["hidden"]),
                         int(arch["mlp_hidden"]))  # fmt: skip
    model.load_state_dict(load_file(str(weights / SESSION_FILE)))
    return encoder, model.eval(), meta
