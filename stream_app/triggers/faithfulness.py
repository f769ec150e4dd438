"""Are the reason codes faithful to the model? A check on held-out sessions.

For each snapshot whose top reason removes window events (k of them), compare the score drop
from removing the top reason's events with the drop from removing k window events chosen at
random (seeded). A faithful explanation names events that matter more than random ones:
``mean_drop_top > mean_drop_random`` and ``top_beats_random`` (the share of sessions where
it does) well above one half. Also measures the cost: explanation seconds per snapshot.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from stream_app.triggers.reasons import OcclusionExplainer, ScoresSnapshots, candidates
from stream_app.windows import WindowSnapshot


def random_removal(snapshot: WindowSnapshot, k: int, rng: random.Random) -> WindowSnapshot:
    from stream_app.triggers.reasons import without_events

    chosen = {id(e) for e in rng.sample(list(snapshot.events), k)}
    return without_events(snapshot, lambda e: id(e) in chosen)


def faithfulness(
    snapshots: Sequence[WindowSnapshot], scorer: ScoresSnapshots, seed: int = 7
) -> dict[str, Any]:
    rng = random.Random(seed)
    explainer = OcclusionExplainer(scorer)
    started = time.perf_counter()
    explained = explainer.explain(snapshots)
    explain_s = time.perf_counter() - started
    pairs = []  # (snapshot, top variant, random variant)
    for snapshot, reasons in zip(snapshots, explained, strict=True):
        if not reasons:
            continue
        top = next(c for c in candidates(snapshot) if c.code == reasons[0].code)
        if 0 < top.removed_events < len(snapshot.events):
            pairs.append((snapshot, top.variant, random_removal(snapshot, top.removed_events, rng)))
    if not pairs:
        return {"sessions": len(snapshots), "compared": 0}
    scores = np.asarray(scorer.score([s for p in pairs for s in p]), dtype=np.float64).reshape(
        -1, 3
    )
    drop_top, drop_random = scores[:, 0] - scores[:, 1], scores[:, 0] - scores[:, 2]
    return {
        "sessions": len(snapshots),
        "compared": len(pairs),
        "mean_score": round(float(scores[:, 0].mean()), 4),
        "mean_drop_top": round(float(drop_top.mean()), 4),
        "mean_drop_random": round(float(drop_random.mean()), 4),
        "top_beats_random": round(float((drop_top > drop_random).mean()), 3),
        "explain_ms_per_snapshot": round(1000 * explain_s / len(snapshots), 2),
    }
