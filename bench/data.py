"""The benchmark's event log: a recorded REES46 log looped to N events, built once in memory.

Every pass over the log gets its own session and event ids (the replay tool's ``--loop``), so
the worker sees N distinct events in ``N / len(log)`` times as many sessions; recorded event
times are kept, so every run of the benchmark feeds the worker byte-identical input.
"""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import Producer

from stream_app.ingest.sources import iter_messages
from stream_app.replay.timing import RawMessage, Schedule, SystemClock, TimingConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_LOG = REPO.parent / "shared/data/rees46_multicategory/2019-Oct_head_users_a.csv"
BUNDLED_LOG = REPO / "stream_app/demo_data/rees46_2019-Oct_sample.csv"


def default_log() -> Path:
    """The shared REES46 log when the checkout has ../shared, else the bundled sample."""
    return SHARED_LOG if SHARED_LOG.exists() else BUNDLED_LOG


def looped_messages(path: Path, count: int, tag: str = "#b") -> list[RawMessage]:
    """``count`` messages: the log repeated, each pass with its own ids (recorded times kept)."""
    recorded = list(iter_messages(path))
    timing = TimingConfig(speed=None, limit=count, loop=True, times="keep", run_tag=tag)
    schedule = Schedule(lambda: recorded, timing, SystemClock())
    return [(message.key, message.value) for message in schedule]


def preload(bootstrap: str, topic: str, messages: list[RawMessage]) -> None:
    """Produce everything before any consumer starts, so each stage reads the same backlog."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    for key, value in messages:
        producer.produce(topic, value=value, key=key)
        producer.poll(0)
    remaining = producer.flush(120)
    if remaining:
        raise RuntimeError(f"{remaining} benchmark events were not delivered")
