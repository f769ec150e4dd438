"""``intent-stream replay --triggers``: the back-test's per-rule numbers from a live replay.

After the replay, the triggers topic is read back; triggers of this run (session ids ending
in the run tag, first pass) are matched to the replayed log's sessions. Leads are measured
on the log's own clock: a trigger's event is the ``facts.n_events``-th event of its session
(so ``--times shift`` does not distort them). Only the rules: the no-model twins are an
offline comparison (``intent-stream backtest``).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from stream_app.core.config import KafkaSettings
from stream_app.core.topics import read_all, security_config
from stream_app.replay.backtest import Session, load_sessions, rule_metrics
from stream_app.triggers.engine import TriggerRecord


def replay_trigger_report(
    source: Path, kafka: KafkaSettings, run_tag: str, limit: int | None = None
) -> dict[str, Any]:
    messages = read_all(kafka.bootstrap_servers, kafka.triggers_topic, timeout_s=30, idle_s=2.0,
                        config=security_config(kafka))  # fmt: skip
    records = [TriggerRecord.from_dict(orjson.loads(m.value() or b"{}")) for m in messages]
    sessions = {s.session_id: s for s in load_sessions(source)}
    by_rule: dict[str, list[TriggerRecord]] = defaultdict(list)
    for record in records:
        original = _original(record.session_id, run_tag)
        session = sessions.get(original) if original is not None else None
        if session is not None:
            by_rule[record.rule].append(_on_log_clock(record, session))
    replayed = list(sessions.values())
    return {"rules": {rule: rule_metrics(fired, replayed) for rule, fired in by_rule.items()},
            "triggers_read": len(records)}  # fmt: skip


def _original(session_id: str, run_tag: str) -> str | None:
    if not run_tag:
        return session_id
    return session_id[: -len(run_tag)] if session_id.endswith(run_tag) else None


def _on_log_clock(record: TriggerRecord, session: Session) -> TriggerRecord:
    n = int(record.facts.get("n_events") or 1)
    event = session.events[min(max(n, 1), len(session.events)) - 1]
    return dataclasses.replace(record, session_id=session.session_id,
                               event_time_ms=event.event_time_ms)  # fmt: skip
