"""The user-history probe counts only sessions that started before the one it describes."""

from __future__ import annotations

import numpy as np

from model_export.history_probe import history_of_sessions
from stream_app.ingest.events import Event


def _session(user: str, sid: str, start_ms: int, *kinds: str) -> list[Event]:
    return [Event(f"{sid}-{i}", start_ms + i * 1000, kind, sid, user, product_id="p")
            for i, kind in enumerate(kinds)]  # fmt: skip


def test_history_counts_earlier_sessions_of_the_same_user_only() -> None:
    sessions = {
        "late": _session("u", "late", 3_000_000, "view", "purchase"),
        "first": _session("u", "first", 1_000_000, "view", "cart"),
        "middle": _session("u", "middle", 2_000_000, "view", "cart", "purchase"),
        "other": _session("v", "other", 500_000, "view", "cart", "purchase"),
        "anon": _session("", "anon", 4_000_000, "view"),
    }
    history = history_of_sessions("shop", sessions)

    def counts(sid: str) -> list[float]:
        earlier, carted, bought, returning = history[f"shop:{sid}"]
        return [round(float(np.expm1(x))) for x in (earlier, carted, bought)] + [returning]

    assert counts("first") == [0, 0, 0, 0.0]
    assert counts("middle") == [1, 1, 0, 1.0]
    assert counts("late") == [2, 2, 1, 1.0]  # its own purchase is not in its history
    assert counts("other") == [0, 0, 0, 0.0]  # another user's sessions never count
    assert counts("anon") == [0, 0, 0, 0.0]  # an anonymous session is its own user
