"""``intent-stream backtest``: trigger rules over a labelled log, offline (no broker, no Redis).

Each session's events run through the same window rules (``windows.apply_events``), one
event at a time; every prefix that ends before the session's first purchase is scored by
the same model (``load_scorer``), with the same window facts, and the scores go through the
same trigger engine (in-memory state, the event time as the clock for cooldowns and rate
limits). A session is *positive* if it goes on to buy. Every prefix is scored, whereas the
live worker may fold several events of a micro-batch into one score, so live persistence
counts over fewer (coarser) scores.

Per rule (``rules.<name>``): ``fired`` (triggers), ``precision`` (share of triggered
sessions that bought), ``recall`` (share of buying sessions triggered before their purchase,
of those with at least one event before it), ``median_lead_s`` (trigger to first purchase).

``no_model.<name>``: the rule's twin with the model score replaced by the transparent
``heuristic_score`` (below), same conditions, persistence, once-per-session, cooldown and
rate limit; its ``enter`` threshold is searched so it fires as many triggers as the rule on
this log (``exit`` keeps the rule's exit/enter ratio). So the difference is what the model
adds over simple cart and view counts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream_app.core.errors import IntentStreamError, InvalidEvent
from stream_app.ingest.events import Event, parse_event
from stream_app.ingest.sources import iter_messages
from stream_app.serving.batching import length_sorted_chunks
from stream_app.sessions.windows import WindowRules, WindowSnapshot, WindowState, apply_events
from stream_app.triggers.engine import TriggerEngine, TriggerRecord
from stream_app.triggers.evaluate import ScoreInput
from stream_app.triggers.facts import WindowFacts, window_facts
from stream_app.triggers.rules import Rule, RuleSet, Threshold, load_rules
from stream_app.triggers.state import InMemoryTriggerState

log = logging.getLogger(__name__)

HEURISTIC = (
    "1 - exp(-(n_cart + 0.3 * max(max_product_views - 1, 0) + 0.05 * n_views)): "
    "carts count most, then repeated views of one product, then views"
)
SCORE_CHUNK = 32


def heuristic_score(facts: WindowFacts) -> float:
    """The no-model twin's score (documented in ``HEURISTIC``): monotone in carts and views."""
    x = facts.n_cart + 0.3 * max(facts.max_product_views - 1, 0) + 0.05 * facts.n_views
    return 1.0 - math.exp(-x)


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    events: tuple[Event, ...]  # ordered by (time, id)
    purchase_ms: int | None  # first purchase time

    def prefixes(self, rules: WindowRules) -> Iterable[WindowSnapshot]:
        """The snapshot after each event, up to (not including) the first purchase."""
        state = WindowState.empty(self.session_id)
        for event in self.events:
            if event.event_type == "purchase":
                return
            outcome = apply_events(state, [event], rules)
            if outcome.state is not None and outcome.accepted:
                state = outcome.state
                yield state.snapshot


def load_sessions(path: Path, max_sessions: int = 0) -> list[Session]:
    """Valid events of the log grouped per session (the first ``max_sessions`` sessions)."""
    now_ms = time.time_ns() // 1_000_000
    by_session: dict[str, list[Event]] = {}
    for _, value in iter_messages(path):
        try:
            event = parse_event(value, now_ms=now_ms)
        except InvalidEvent:
            continue
        if (
            event.user_session not in by_session
            and max_sessions
            and len(by_session) >= max_sessions
        ):
            continue
        by_session.setdefault(event.user_session, []).append(event)
    sessions = []
    for sid, events in by_session.items():
        ordered = tuple(sorted(events, key=lambda e: (e.event_time_ms, e.event_id)))
        purchases = [e.event_time_ms for e in ordered if e.event_type == "purchase"]
        sessions.append(Session(sid, ordered, min(purchases) if purchases else None))
    return sessions


def score_prefixes(
    sessions: Sequence[Session], scorer: Any, rules: WindowRules
) -> list[tuple[ScoreInput, float]]:
    """Every prefix as a ``ScoreInput`` with the model score, plus its heuristic score."""
    snapshots = [snap for s in sessions for snap in s.prefixes(rules)]
    probabilities = np.zeros(len(snapshots))
    for chunk in length_sorted_chunks([len(s.events) for s in snapshots], SCORE_CHUNK):
        probabilities[chunk] = scorer.score([snapshots[i] for i in chunk])
    out = []
    for snap, p in zip(snapshots, probabilities, strict=True):
        facts = window_facts(snap)
        last_ms = snap.events[-1].event_time_ms
        score = ScoreInput(snap.session_id, snap.user_id, float(p), scorer.model_version,
                           snap.aggregates.n_events, last_ms, last_ms, facts=facts)  # fmt: skip
        out.append((score, heuristic_score(facts)))
    return out


def run_rules(rules: RuleSet, scores: Sequence[ScoreInput]) -> list[TriggerRecord]:
    """The trigger engine over ``scores`` in event-time order, state in memory."""
    fired: list[TriggerRecord] = []

    async def publish(records: Sequence[TriggerRecord]) -> None:
        fired.extend(records)

    engine = TriggerEngine(rules=rules, state=InMemoryTriggerState(), publish=publish,
                           now_of=lambda s: s.last_event_time_ms)  # fmt: skip
    ordered = sorted(scores, key=lambda s: (s.last_event_time_ms, s.session_id, s.session_events))

    async def run() -> None:
        for start in range(0, len(ordered), 2000):
            await engine.process(ordered[start : start + 2000])

    asyncio.run(run())
    return fired


def rule_metrics(fired: Sequence[TriggerRecord], sessions: Sequence[Session]) -> dict[str, Any]:
    purchase = {s.session_id: s.purchase_ms for s in sessions}
    buyers = {s.session_id for s in sessions
              if s.purchase_ms is not None and s.events[0].event_type != "purchase"}  # fmt: skip
    first: dict[str, int] = {}
    for r in fired:
        first[r.session_id] = min(first.get(r.session_id, r.event_time_ms), r.event_time_ms)
    hits = [sid for sid in first if purchase.get(sid) is not None]
    leads = [((purchase[sid] or 0) - first[sid]) / 1000 for sid in hits]
    return {
        "fired": len(fired),
        "sessions": len(first),
        "precision": round(len(hits) / len(first), 4) if first else None,
        "recall": round(len(set(hits) & buyers) / len(buyers), 4) if buyers else None,
        "median_lead_s": round(statistics.median(leads), 1) if leads else None,
    }


def twin(rule: Rule, enter: float) -> Rule:
    ratio = rule.threshold.exit / rule.threshold.enter
    threshold = Threshold(enter=min(max(enter, 1e-9), 1.0), exit=min(max(enter, 1e-9), 1.0) * ratio)
    return rule.model_copy(update={"threshold": threshold})


def fit_twin(rule: Rule, heuristic: Sequence[ScoreInput], target: int) -> tuple[Rule, int]:
    """The twin whose enter threshold fires closest to ``target`` triggers (binary search
    over the heuristic's distinct values: fewer fire as the threshold rises)."""
    values = sorted({s.score for s in heuristic if s.score > 0})
    if not values:
        return twin(rule, 1.0), 0
    lo, hi = 0, len(values) - 1
    best: tuple[int, Rule, int] | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = twin(rule, values[mid])
        fired = len(run_rules(RuleSet(rules=(candidate,)), heuristic))
        if best is None or abs(fired - target) < best[0]:
            best = (abs(fired - target), candidate, fired)
        if fired > target:
            lo = mid + 1
        elif fired < target:
            hi = mid - 1
        else:
            break
    assert best is not None
    return best[1], best[2]


def backtest(events: Path, rules: RuleSet, scorer: Any, max_sessions: int = 0) -> dict[str, Any]:
    sessions = load_sessions(events, max_sessions)
    window_rules = WindowRules()
    started = time.perf_counter()
    scored = score_prefixes(sessions, scorer, window_rules)
    scoring_s = time.perf_counter() - started
    model_scores = [s for s, _ in scored]
    heuristic = [ScoreInput(**{**_fields(s), "score": h}) for s, h in scored]
    report: dict[str, Any] = {
        "events": str(events), "sessions": len(sessions),
        "buying_sessions": sum(s.purchase_ms is not None for s in sessions),
        "prefixes_scored": len(scored), "scoring_s": round(scoring_s, 1),
        "model_version": scorer.model_version, "heuristic": HEURISTIC,
        "score_quantiles": _quantiles([s.score for s in model_scores]),
        "rules": {}, "no_model": {},
    }  # fmt: skip
    for rule in rules.rules:
        fired = run_rules(RuleSet(rules=(rule,)), model_scores)
        report["rules"][rule.name] = rule_metrics(fired, sessions)
        fitted, _ = fit_twin(rule, heuristic, len(fired))
        twin_fired = run_rules(RuleSet(rules=(fitted,)), heuristic)
        report["no_model"][rule.name] = rule_metrics(twin_fired, sessions) | {
            "enter": round(fitted.threshold.enter, 4)
        }
    return report


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    qs = np.percentile(np.asarray(values), [50, 90, 99, 100])
    return {f"p{q}": round(float(v), 4) for q, v in zip((50, 90, 99, 100), qs, strict=True)}


def _fields(score: ScoreInput) -> dict[str, Any]:
    return {name: getattr(score, name) for name in ScoreInput.__dataclass_fields__}


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["rules"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("precision", "recall"), strict=True):
        x = np.arange(len(names))
        model = [report["rules"][n][metric] or 0 for n in names]
        base = [report["no_model"][n][metric] or 0 for n in names]
        ax.bar(x - 0.2, model, 0.4, label="model")
        ax.bar(x + 0.2, base, 0.4, label="no-model twin (same # triggers)")
        ax.set_xticks(x, names)
        ax.set_title(metric)
        ax.legend(fontsize=8)
    fig.suptitle(f"back-test: {Path(report['events']).name}, {report['sessions']} sessions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(report: dict[str, Any]) -> None:
    print(f"{'rule':<24}{'':>10}{'fired':>8}{'precision':>11}{'recall':>9}{'lead s':>9}")
    for name in report["rules"]:
        for label, key in (("model", "rules"), ("no-model", "no_model")):
            m = report[key][name]
            print(f"{name:<24}{label:>10}{m['fired']:>8}{_fmt(m['precision']):>11}"
                  f"{_fmt(m['recall']):>9}{_fmt(m['median_lead_s']):>9}")  # fmt: skip


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def main_backtest(args: argparse.Namespace) -> int:
    from stream_app.core.config import load_settings
    from stream_app.core.errors import ModelLoadError
    from stream_app.core.logs import configure_logging
    from stream_app.scoring import load_scorer

    configure_logging("WARNING")
    try:
        rules = load_rules(Path(args.rules) if args.rules else None)
        events = Path(args.events)
        if not events.exists():
            raise IntentStreamError(f"{events}: no such file")
        scorer = load_scorer(load_settings().model)
        report = backtest(events, rules, scorer, args.max_sessions)
    except (IntentStreamError, ModelLoadError) as exc:
        print(f"backtest: {exc}")
        return 2
    out = Path(args.report_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    plot(report, out.with_suffix(".png"))
    print_table(report)
    print(f"report: {out}  plot: {out.with_suffix('.png')}")
    return 0
