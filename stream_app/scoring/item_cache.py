"""An in-process LRU cache: item text → item embedding (one per scorer).

Distinct item texts are few and recur constantly (a shop's catalogue), so after warm-up
almost every window needs no encoder call at all; only texts never seen before are encoded.
Thread-safe: the worker scores from a thread pool.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

DEFAULT_CAPACITY = 200_000


class ItemEmbeddingCache:
    def __init__(self, dim: int, capacity: int = DEFAULT_CAPACITY) -> None:
        self.dim = dim
        self.capacity = capacity
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """Embeddings [len(texts), dim] (zeros where missing) and the missing positions."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        missing = []
        with self._lock:
            for i, text in enumerate(texts):
                vector = self._entries.get(text)
                if vector is None:
                    missing.append(i)
                    continue
                self._entries.move_to_end(text)
                out[i] = vector
            self.hits += len(texts) - len(missing)
            self.misses += len(missing)
        return out, missing

    def store(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        with self._lock:
            for text, vector in zip(texts, vectors, strict=True):
                self._entries[text] = np.array(vector, dtype=np.float32)
                self._entries.move_to_end(text)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
