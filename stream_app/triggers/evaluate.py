"""Pure trigger evaluation: one score in, the rule's next state out. No I/O, no clock.

Per (rule, session) the state is ``RuleState``. For each new score of the session:

1. A score whose ``session_events`` is not above the last one counted is a re-delivery or a
   re-score of the same window: nothing changes (so a crash and its re-deliveries cannot
   count a window twice toward persistence).
2. A ``stale`` score (old backlog) resets the streak and never fires.
3. A session that has bought (``purchased`` or a purchase among its facts) never fires.
4. Below ``exit``: the streak resets and, after a fire, the rule re-arms (a new *episode*)
   unless the rule fires once per session.
5. At or above ``enter``: the streak grows; with ``streak >= persistence``, the rule not
   fired in this episode and the conditions holding, the step *wants to fire*. Whether it
   fires (per-user cooldown, per-rule rate limit) is decided atomically by the state store,
   which picks ``if_fired`` or ``if_not`` as the new state.
6. Between ``exit`` and ``enter``: the streak resets (persistence means consecutive).

The trigger id is a function of (rule, session, episode) only, so every worker, every
re-delivery and every restart names the same trigger the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream_app.triggers.facts import WindowFacts
from stream_app.triggers.rules import Rule


@dataclass(frozen=True, slots=True)
class ScoreInput:
    """What a rule reads from one ``intent-scores`` record (missing fields: false / empty)."""

    session_id: str
    user_id: str
    score: float
    model_version: str = ""
    session_events: int = 0
    last_event_time_ms: int = 0
    scored_at: int = 0
    ingest_ms: int = 0
    oldest_ingest_ms: int = 0
    stale: bool = False
    purchased: bool = False
    facts: WindowFacts = field(default_factory=WindowFacts)
    reasons: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> ScoreInput:
        """From a decoded score record; raises ``KeyError``/``TypeError``/``ValueError``."""
        return cls(
            session_id=str(data["session_id"]),
            user_id=str(data.get("user_id") or ""),
            score=float(data["score"]),
            model_version=str(data.get("model_version") or ""),
            session_events=int(data.get("session_events") or 0),
            last_event_time_ms=int(data.get("last_event_time_ms") or 0),
            scored_at=int(data.get("scored_at") or 0),
            ingest_ms=int(data.get("ingest_ms") or 0),
            oldest_ingest_ms=int(data.get("oldest_ingest_ms") or 0),
            stale=data.get("stale") is True,
            purchased=data.get("purchased") is True,
            facts=WindowFacts.from_dict(data.get("facts")),
            reasons=tuple(r for r in data.get("reasons") or () if isinstance(r, dict)),
        )


@dataclass(frozen=True, slots=True)
class RuleState:
    fired: bool = False  # fired in the current episode
    streak: int = 0  # consecutive counted scores >= enter
    episode: int = 0
    last_seq: int = -1  # session_events of the last counted score
    # A trigger reserved by the state store but not yet confirmed as published (a crash
    # between the two leaves it here; the next evaluation publishes it first).
    pending: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> RuleState:
        if not raw:
            return cls()
        data = orjson.loads(raw)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one score: the next state, and whether the rule wants to fire."""

    if_not: RuleState
    wants_fire: bool = False
    if_fired: RuleState | None = None  # the next state if the store lets it fire
    why: str = ""  # duplicate | stale | purchased | below_exit | between | streak | conditions


def trigger_id(rule: str, session_id: str, episode: int) -> str:
    raw = f"{rule}\x00{session_id}\x00{episode}".encode("utf-8", "surrogatepass")
    return "trg-" + hashlib.sha256(raw).hexdigest()[:32]


def step(rule: Rule, state: RuleState, score: ScoreInput) -> Step:
    """Apply one score to one rule's state for the session (see the module docstring)."""
    if score.session_events <= state.last_seq:
        return Step(state, why="duplicate")
    counted = dataclasses.replace(state, last_seq=score.session_events)
    if score.stale:
        return Step(dataclasses.replace(counted, streak=0), why="stale")
    if score.purchased or score.facts.has_purchase:
        return Step(dataclasses.replace(counted, streak=0), why="purchased")
    threshold = rule.threshold
    if score.score < threshold.exit:
        rearm = state.fired and not rule.once_per_session
        episode = state.episode + 1 if rearm else state.episode
        fired = state.fired and not rearm
        return Step(
            dataclasses.replace(counted, streak=0, fired=fired, episode=episode), why="below_exit"
        )
    if score.score < threshold.enter:
        return Step(dataclasses.replace(counted, streak=0), why="between")
    grown = dataclasses.replace(counted, streak=state.streak + 1)
    if grown.fired:
        return Step(grown, why="fired_already")
    if grown.streak < rule.persistence:
        return Step(grown, why="streak")
    if not rule.conditions.hold(score.facts):
        return Step(grown, why="conditions")
    return Step(grown, wants_fire=True, if_fired=dataclasses.replace(grown, fired=True))
