"""Back-test: metrics from triggers and labels, the twin's threshold search, a whole run."""

from __future__ import annotations

from pathlib import Path

import orjson

from stream_app.ingest.events import Event
from stream_app.replay.backtest import (
    Session,
    backtest,
    fit_twin,
    heuristic_score,
    rule_metrics,
    run_rules,
)
from stream_app.scoring.onnx_backend import OnnxScorer
from stream_app.triggers.engine import TriggerRecord
from stream_app.triggers.evaluate import ScoreInput
from stream_app.triggers.facts import WindowFacts
from stream_app.triggers.rules import RuleSet, parse_rules
from tests.shared_data import BUNDLED_SAMPLE

RULE = parse_rules("rules:\n  - name: r\n    threshold: {enter: 0.5, exit: 0.2}\n").rules[0]


def session(sid: str, purchase_ms: int | None) -> Session:
    first = Event(f"{sid}-0", 1000, "view", sid)
    return Session(sid, (first,), purchase_ms)


def fired(sid: str, at_ms: int) -> TriggerRecord:
    return TriggerRecord(f"t-{sid}", "r", sid, "", 0, 0.9, "m", [], {}, at_ms, at_ms, at_ms)


def test_precision_recall_and_lead() -> None:
    sessions = [session("a", 61_000), session("b", None), session("c", 10_000), session("d", None)]
    metrics = rule_metrics([fired("a", 1_000), fired("b", 2_000)], sessions)
    assert metrics == {"fired": 2, "sessions": 2, "precision": 0.5, "recall": 0.5,
                       "median_lead_s": 60.0}  # fmt: skip


def test_heuristic_is_monotone_in_carts_and_views() -> None:
    base = WindowFacts(n_views=2, max_product_views=1)
    assert heuristic_score(WindowFacts(n_views=2, n_cart=1)) > heuristic_score(base)
    assert heuristic_score(WindowFacts(n_views=3, max_product_views=3)) > heuristic_score(base)


def test_twin_threshold_fires_as_often_as_asked() -> None:
    scores = [ScoreInput(f"s{i}", "", i / 20, session_events=1, last_event_time_ms=i)
              for i in range(20)]  # fmt: skip
    twin, count = fit_twin(RULE, scores, target=5)
    assert count == 5
    assert len(run_rules(RuleSet(rules=(twin,)), scores)) == 5
    assert abs(twin.threshold.exit / twin.threshold.enter - 0.4) < 1e-9


def test_backtest_runs_the_model_and_the_twin(model_dir: Path, tmp_path: Path) -> None:
    rules = parse_rules("rules:\n  - name: r\n    threshold: {enter: 0.3, exit: 0.1}\n")
    report = backtest(BUNDLED_SAMPLE, rules, OnnxScorer(model_dir), max_sessions=60)
    assert report["sessions"] == 60
    assert report["prefixes_scored"] >= 60
    model, twin = report["rules"]["r"], report["no_model"]["r"]
    assert set(model) == {"fired", "sessions", "precision", "recall", "median_lead_s"}
    assert abs(twin["fired"] - model["fired"]) <= max(2, model["fired"] // 5)
    orjson.dumps(report)


def test_live_replay_triggers_map_back_to_the_log_clock() -> None:
    from stream_app.replay.trigger_report import _on_log_clock, _original

    assert _original("abc#r12", "#r12") == "abc"
    assert _original("abc#r12#L2", "#r12") is None  # later loop passes are not the log
    assert _original("abc", "") == "abc"
    log_session = Session("abc", tuple(Event(f"e{i}", 1000 * i, "view", "abc") for i in range(4)),
                          None)  # fmt: skip
    shifted = fired("abc#r12", 99_999_999)
    shifted = TriggerRecord(**{**shifted.to_dict(), "facts": {"n_events": 3}})
    assert _on_log_clock(shifted, log_session).event_time_ms == 2000
