"""Product and category conversion rates: a lookup table learnt from training sessions.

For every product (and category) seen in the training users' sessions the table holds
``(sessions, sessions that carted it, sessions that bought it)``. A rate is smoothed toward
the store-wide prior with ``strength`` pseudo-sessions, so a product seen twice says little
and an unseen one gets the prior, and shown to the model as a log-odds. The table is shipped
in the model directory (``rates.json``) and built by training on training users only
(out-of-fold for the rows the model is fitted on: ``model_export/rates.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stream_app.core.errors import ModelLoadError
from stream_app.ingest.events import Event
from stream_app.sessions.windows import WindowSnapshot, category_of

RATES_FILE = "rates.json"
RATE_FEATURE_NAMES: tuple[str, ...] = (
    "last_product_cart_rate",
    "last_product_buy_rate",
    "last_product_log_sessions",
    "last_category_cart_rate",
    "last_category_buy_rate",
    "last_category_log_sessions",
    "window_max_product_buy_rate",
)
Counts = tuple[int, int, int]  # sessions, carted, bought


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


@dataclass(frozen=True)
class RatesTable:
    prior_cart: float = 0.05
    prior_buy: float = 0.02
    strength: float = 20.0
    product: Mapping[str, Counts] = field(default_factory=dict)
    category: Mapping[str, Counts] = field(default_factory=dict)

    def rates(self, counts: Counts | None) -> tuple[float, float, float]:
        """(cart log-odds, buy log-odds, log1p sessions) smoothed toward the prior."""
        n, carted, bought = counts or (0, 0, 0)
        cart = (carted + self.strength * self.prior_cart) / (n + self.strength)
        buy = (bought + self.strength * self.prior_buy) / (n + self.strength)
        return _logit(cart), _logit(buy), math.log1p(n)

    def features(self, snapshot: WindowSnapshot) -> np.ndarray:
        """float32 vector aligned with ``RATE_FEATURE_NAMES``."""
        return self.features_for_keys(*rate_keys(snapshot))

    def features_for_keys(
        self, product: str, category: str, window_products: tuple[str, ...]
    ) -> np.ndarray:
        last_product = self.rates(self.product.get(product)) if product else self.rates(None)
        last_category = self.rates(self.category.get(category)) if category else self.rates(None)
        buys = [self.rates(self.product.get(p))[1] for p in window_products]
        window_max = max(buys) if buys else self.rates(None)[1]
        return np.asarray([*last_product, *last_category, window_max], dtype=np.float32)

    def to_json(self) -> str:
        body = {
            "prior_cart": self.prior_cart,
            "prior_buy": self.prior_buy,
            "strength": self.strength,
            "product": {k: list(v) for k, v in sorted(self.product.items())},
            "category": {k: list(v) for k, v in sorted(self.category.items())},
        }
        return json.dumps(body, separators=(",", ":"), sort_keys=True) + "\n"


def rate_keys(snapshot: WindowSnapshot) -> tuple[str, str, tuple[str, ...]]:
    """(last product id, its category, the window's distinct product ids) of a window."""
    last: Event | None = next((e for e in reversed(snapshot.events) if e.product_id), None)
    products = tuple(sorted({e.product_id for e in snapshot.events if e.product_id}))
    if last is None:
        return "", "", products
    return last.product_id, category_of(last), products


def _counts(raw: object) -> dict[str, Counts]:
    if not isinstance(raw, dict):
        raise ValueError("expected an object of [sessions, carted, bought] lists")
    return {str(k): (int(v[0]), int(v[1]), int(v[2])) for k, v in raw.items()}


def load_rates(model_dir: Path) -> RatesTable:
    path = Path(model_dir) / RATES_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return RatesTable(
            prior_cart=float(raw["prior_cart"]),
            prior_buy=float(raw["prior_buy"]),
            strength=float(raw["strength"]),
            product=_counts(raw["product"]),
            category=_counts(raw["category"]),
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelLoadError(f"unreadable rates table {path}: {exc!r}") from exc
