"""The benchmark's plot: end-to-end p99 against offered load, one line per batching policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def latency_vs_load(sweep: list[dict[str, Any]], path: Path, title: str) -> Path:
    """``sweep``: one dict per (policy, load) point with ``policy``, ``rate``, ``fraction``,
    ``p99_ms`` and ``p50_ms``; writes a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for policy in dict.fromkeys(point["policy"] for point in sweep):
        points = sorted((p for p in sweep if p["policy"] == policy), key=lambda p: p["rate"])
        rates = [p["rate"] for p in points]
        line = ax.plot(rates, [p["p99_ms"] for p in points], marker="o", label=f"{policy} p99")
        ax.plot(
            rates,
            [p["p50_ms"] for p in points],
            marker=".",
            linestyle=":",
            color=line[0].get_color(),
            label=f"{policy} p50",
        )
    ax.set_xlabel("offered load, events/s (live pace: about one new session per event)")
    ax.set_ylabel("end-to-end latency, ms")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
