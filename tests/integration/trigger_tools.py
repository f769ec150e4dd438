"""Helpers for tests that run real triggers workers: expected triggers from the scores."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from stream_app.core.config import Settings
from stream_app.core.topics import read_all
from stream_app.triggers.engine import TriggerEngine, TriggerRecord
from stream_app.triggers.rules import RuleSet, load_rules
from stream_app.triggers.state import InMemoryTriggerState
from stream_app.triggers.worker import parse_scores

# Low thresholds, no cooldown or rate limit (wall-clock dependent): whether a trigger fires
# then depends only on the score sequence, so the expected set can be recomputed offline.
TEST_RULES = """\
rules:
  - name: engaged
    threshold: {enter: 0.03, exit: 0.015}
    persistence: 2
    conditions: {min_events: 2}
  - name: any_high
    threshold: {enter: 0.05, exit: 0.02}
    once_per_session: false
"""


def write_rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(TEST_RULES)
    return path


def triggers_env(settings: Settings, rules_path: Path, name: str, **extra: str) -> dict[str, str]:
    return {
        "KAFKA_TRIGGERS_TOPIC": settings.kafka.triggers_topic,
        "TRIGGERS_RULES_PATH": str(rules_path),
        "TRIGGERS_APP_ID": f"{name}-trg",
        **extra,
    }


def published_triggers(settings: Settings) -> list[TriggerRecord]:
    import orjson

    messages = read_all(settings.kafka.bootstrap_servers, settings.kafka.triggers_topic,
                        timeout_s=30, idle_s=1.5)  # fmt: skip
    return [TriggerRecord.from_dict(orjson.loads(m.value())) for m in messages]


def expected_triggers(settings: Settings, rules: RuleSet) -> dict[str, tuple[str, str]]:
    """Trigger id -> (rule, session) from replaying the scores topic through the pure engine,
    each session's scores in topic (= partition) order."""
    messages = read_all(settings.kafka.bootstrap_servers, settings.kafka.scores_topic,
                        timeout_s=30, idle_s=1.5)  # fmt: skip
    scores = parse_scores([m.value() for m in messages])
    fired: list[TriggerRecord] = []

    async def publish(records: Sequence[TriggerRecord]) -> None:
        fired.extend(records)

    engine = TriggerEngine(rules=rules, state=InMemoryTriggerState(), publish=publish)
    asyncio.run(engine.process(scores))
    return {r.trigger_id: (r.rule, r.session_id) for r in fired}


def duplicates(records: Sequence[TriggerRecord]) -> list[str]:
    return [tid for tid, n in Counter(r.trigger_id for r in records).items() if n > 1]


def rules_of(path: Path) -> RuleSet:
    return load_rules(path)
