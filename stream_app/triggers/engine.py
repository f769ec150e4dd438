"""The trigger engine: scores in, triggers out, exactly one per (rule, session episode).

Framework-free (``app.py`` feeds it micro-batches of ``intent-scores`` records; the back-test
feeds it a log). Per batch, in rounds (a session's scores in order, one per round):

1. read the stored state of every (rule, session) in one round trip;
2. a state holding a ``pending`` trigger was left by a crash between the check-and-set and
   the publish: publish it now (unless ``already_published`` finds it on the topic), clear it;
3. ``evaluate.step`` each score; for the steps that want to fire, compute reason codes (one
   batched call), build the trigger record (deterministic id) and put it in the state as
   ``pending``;
4. commit every new state with the atomic check-and-set (one round trip); a conflict (another
   worker moved the state) re-reads and re-evaluates that score next round;
5. publish the fired triggers (broker acks), then clear their ``pending`` (one round trip).

The caller acknowledges the score offsets only after ``process`` returns.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream_app.triggers import metrics
from stream_app.triggers.evaluate import RuleState, ScoreInput, Step, step, trigger_id
from stream_app.triggers.rules import Rule, RuleSet
from stream_app.triggers.state import Commit, Decision, TriggerStateStore

log = logging.getLogger(__name__)

MAX_ROUNDS_PER_SCORE = 8  # bound on check-and-set conflicts for one score

Publish = Callable[[Sequence["TriggerRecord"]], Awaitable[None]]
Explain = Callable[[Sequence[ScoreInput]], Awaitable[list[list[dict[str, Any]]]]]
AlreadyPublished = Callable[[Sequence[str], int], Awaitable[set[str]]]
NowOf = Callable[[ScoreInput], int]


def wall_clock_ms(_: ScoreInput | None = None) -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class TriggerRecord:
    """An ``intent-triggers`` message (key = session id)."""

    trigger_id: str
    rule: str
    session_id: str
    user_id: str
    episode: int
    score: float
    model_version: str
    reasons: list[dict[str, Any]]
    facts: dict[str, Any]
    event_time_ms: int  # newest event the score covered
    scored_at: int
    fired_at: int
    ingest_ms: int = 0  # Kafka timestamp of the newest event the score covered

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TriggerRecord:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


@dataclass
class _Item:
    rule: Rule
    session_id: str
    scores: deque[ScoreInput]
    rounds: int = 0


@dataclass
class BatchResult:
    fired: list[TriggerRecord] = field(default_factory=list)
    recovered: list[TriggerRecord] = field(default_factory=list)  # published after a crash
    decisions: Counter[str] = field(default_factory=Counter)


class TriggerEngine:
    def __init__(
        self,
        *,
        rules: RuleSet,
        state: TriggerStateStore,
        publish: Publish,
        explain: Explain | None = None,
        already_published: AlreadyPublished | None = None,
        now_of: NowOf = wall_clock_ms,
    ) -> None:
        self.rules = rules
        self.state = state
        self._publish = publish
        self._explain = explain
        self._already_published = already_published
        self._now_of = now_of

    async def process(self, scores: Sequence[ScoreInput]) -> BatchResult:
        result = BatchResult()
        items = _work_items(self.rules, scores)
        while items:
            items = await self._round(items, result)
        return result

    async def _round(self, items: list[_Item], result: BatchResult) -> list[_Item]:
        raws = await self.state.load([(i.rule.name, i.session_id) for i in items])
        states = [RuleState.from_json(raw) for raw in raws]
        if any(s.pending for s in states):
            await self._recover(items, raws, states, result)
            return items  # re-read what was cleared
        steps = [step(i.rule, s, i.scores[0]) for i, s in zip(items, states, strict=True)]
        commits = await self._commits(items, raws, steps)
        decisions = await self.state.commit(commits)
        fired = [c.if_fired for c, d in zip(commits, decisions, strict=True) if d is Decision.FIRED]
        records = [TriggerRecord.from_dict(s.pending) for s in fired if s and s.pending]
        if records:
            await self._publish(records)
            await self._clear(
                [c for c, d in zip(commits, decisions, strict=True) if d is Decision.FIRED]
            )
        result.fired.extend(records)
        return self._advance(items, steps, decisions, result)

    def _advance(
        self, items: list[_Item], steps: list[Step], decisions: list[Decision], result: BatchResult
    ) -> list[_Item]:
        remaining = []
        for item, s, decision in zip(items, steps, decisions, strict=True):
            label = decision.value if s.wants_fire or decision is Decision.CONFLICT else s.why
            result.decisions[f"{item.rule.name}:{label}"] += 1
            metrics.DECISIONS.labels(item.rule.name, label).inc()
            item.rounds += 1
            if decision is not Decision.CONFLICT or item.rounds >= MAX_ROUNDS_PER_SCORE:
                if decision is Decision.CONFLICT:
                    log.warning("trigger state for %s kept changing; score skipped", item.rule.name)
                item.scores.popleft()
                item.rounds = 0
            if item.scores:
                remaining.append(item)
        return remaining

    async def _commits(
        self, items: list[_Item], raws: list[bytes | None], steps: list[Step]
    ) -> list[Commit]:
        wanting = [k for k, s in enumerate(steps) if s.wants_fire]
        reasons = await self._reasons([items[k].scores[0] for k in wanting])
        records = {
            k: self._record(items[k], steps[k], r) for k, r in zip(wanting, reasons, strict=True)
        }
        commits = []
        for k, (item, raw, s) in enumerate(zip(items, raws, steps, strict=True)):
            if_fired = s.if_fired
            if k in records and if_fired is not None:
                if_fired = dataclasses.replace(if_fired, pending=records[k].to_dict())
            score = item.scores[0]
            commits.append(
                Commit(
                    item.rule,
                    item.session_id,
                    score.user_id,
                    raw,
                    s.if_not,
                    if_fired,
                    self._now_of(score),
                )
            )
        return commits

    async def _reasons(self, scores: list[ScoreInput]) -> list[list[dict[str, Any]]]:
        if not scores:
            return []
        if self._explain is None:
            return [list(s.reasons) for s in scores]
        started = time.perf_counter()
        try:
            reasons = await self._explain(scores)
        except Exception as exc:  # reasons are an explanation, never a reason not to fire
            log.warning("reason codes failed, firing without them: %r", exc)
            return [list(s.reasons) for s in scores]
        metrics.REASONS_SECONDS.observe(time.perf_counter() - started)
        return reasons

    def _record(self, item: _Item, s: Step, reasons: list[dict[str, Any]]) -> TriggerRecord:
        score = item.scores[0]
        episode = s.if_fired.episode if s.if_fired else 0
        return TriggerRecord(
            trigger_id=trigger_id(item.rule.name, item.session_id, episode),
            rule=item.rule.name,
            session_id=item.session_id,
            user_id=score.user_id,
            episode=episode,
            score=score.score,
            model_version=score.model_version,
            reasons=reasons,
            facts=score.facts.to_dict(),
            event_time_ms=score.last_event_time_ms,
            scored_at=score.scored_at,
            fired_at=self._now_of(score),
            ingest_ms=score.ingest_ms,
        )

    async def _clear(self, fired: list[Commit]) -> None:
        """Drop ``pending`` from states whose trigger the broker has acknowledged."""
        clears = []
        for c in fired:
            assert c.if_fired is not None
            done = dataclasses.replace(c.if_fired, pending=None)
            clears.append(
                dataclasses.replace(c, expected=c.if_fired.to_json(), if_not=done, if_fired=None)
            )
        await self.state.commit(clears)

    async def _recover(
        self,
        items: list[_Item],
        raws: list[bytes | None],
        states: list[RuleState],
        result: BatchResult,
    ) -> None:
        """Publish triggers a crash left reserved but maybe unpublished, then clear them."""
        found = [(i, raw, s) for i, raw, s in zip(items, raws, states, strict=True) if s.pending]
        records = [TriggerRecord.from_dict(s.pending or {}) for _, _, s in found]
        since = min(r.fired_at for r in records)
        out = (
            await self._already_published([r.trigger_id for r in records], since)
            if self._already_published
            else set()
        )
        todo = [r for r in records if r.trigger_id not in out]
        if todo:
            await self._publish(todo)
        metrics.RECOVERED.inc(len(todo))
        result.recovered.extend(todo)
        clears = [
            Commit(i.rule, i.session_id, "", raw, dataclasses.replace(s, pending=None), None, 0)
            for i, raw, s in found
        ]
        await self.state.commit(clears)


def _work_items(rules: RuleSet, scores: Sequence[ScoreInput]) -> list[_Item]:
    by_session: dict[str, list[ScoreInput]] = {}
    for score in scores:
        by_session.setdefault(score.session_id, []).append(score)
    items = []
    for rule in rules.rules:
        for session_id, session_scores in by_session.items():
            ordered = sorted(session_scores, key=lambda s: (s.session_events, s.scored_at))
            items.append(_Item(rule, session_id, deque(ordered)))
    return items
