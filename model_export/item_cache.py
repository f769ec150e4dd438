"""Frozen-encoder outputs per distinct item text, computed once and cached on disk.

Distinct item texts are few (thousands: product titles, category+brand strings, queries),
so the frozen part of the encoder runs once per text, not once per event or per epoch:

- ``pooled``: the mean-pooled last layer (the frozen-encoder model reads only this);
- ``hidden``: the states entering the top ``tune_layers`` layers (fine-tuning runs only
  those layers, on the distinct texts of each batch).

Cached under ``$INTENT_STREAM_CACHE/item-cache/<hash>.npz``; the hash covers the texts, the
encoder files and the layer, so a different encoder or vocabulary never reads a stale entry.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model_export.bundle import cache_root
from stream_app.scoring.network import mean_pool
from stream_app.scoring.preprocess import frozen_truncating_tokenizer, load_tokenizer, pad_tokens

log = logging.getLogger(__name__)
ITEM_MAX_TOKENS = 32


@dataclass(frozen=True)
class ItemTable:
    texts: tuple[str, ...]
    input_ids: np.ndarray  # int64 [T, L]
    attention_mask: np.ndarray  # int64 [T, L]
    pooled: np.ndarray  # float32 [T, H]
    hidden: np.ndarray | None  # float16 [T, L, H]: input of the top ``tune_layers`` layers
    tune_layers: int


def tokenize_items(texts: list[str], encoder_dir: Path, max_tokens: int = ITEM_MAX_TOKENS
                   ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Token ids exactly as the serving backends produce them (padded to the longest)."""
    tokenizer = load_tokenizer(encoder_dir)
    core = frozen_truncating_tokenizer(tokenizer, max_tokens)
    tokens = [enc.ids for enc in core.encode_batch(texts)]
    width = max((len(t) for t in tokens), default=1)
    return pad_tokens(tokens, width, int(tokenizer.pad_token_id or 0))


def _digest(texts: list[str], encoder_dir: Path, tune_layers: int) -> str:
    digest = hashlib.sha256(f"items-v1:{tune_layers}:{ITEM_MAX_TOKENS}".encode())
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        path = Path(encoder_dir) / name
        if path.is_file():
            digest.update(path.read_bytes())
    digest.update("\n".join(texts).encode())
    return digest.hexdigest()[:20]


@torch.no_grad()
def _run_frozen(bert: torch.nn.Module, ids: np.ndarray, mask: np.ndarray, tune_layers: int,
                batch: int = 256) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    pooled, hidden = [], []
    for start in range(0, len(ids), batch):
        i = torch.from_numpy(ids[start : start + batch])
        m = torch.from_numpy(mask[start : start + batch])
        out = bert(input_ids=i, attention_mask=m, output_hidden_states=True)
        pooled.append(mean_pool(out.last_hidden_state, m).numpy())
        if tune_layers:
            hidden.append(out.hidden_states[-1 - tune_layers].to(torch.float16).numpy())
    return np.concatenate(pooled), (np.concatenate(hidden) if tune_layers else None)


def item_table(texts: list[str], encoder_dir: Path, tune_layers: int = 0) -> ItemTable:
    """The frozen encoder's outputs for ``texts`` (row i = texts[i]), cached on disk."""
    from model_export.model import load_encoder

    ids, mask = tokenize_items(texts, encoder_dir)
    path = cache_root() / "item-cache" / f"{_digest(texts, encoder_dir, tune_layers)}.npz"
    if path.is_file():
        data = np.load(path)
        hidden = data["hidden"] if tune_layers else None
        return ItemTable(tuple(texts), ids, mask, data["pooled"], hidden, tune_layers)
    log.info("encoding %d distinct item texts with the frozen encoder (cached after)", len(texts))
    pooled, hidden = _run_frozen(load_encoder(encoder_dir).eval(), ids, mask, tune_layers)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    arrays = {"pooled": pooled} if hidden is None else {"pooled": pooled, "hidden": hidden}
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)
    return ItemTable(tuple(texts), ids, mask, pooled, hidden, tune_layers)
