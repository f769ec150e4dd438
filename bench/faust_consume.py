"""Stage (5): a consume-only Faust agent -- parse each event and drop it -- with the worker's
settings (``app.build_faust_app``, ``stream.take(BATCH_MAX_SIZE, within=BATCH_MAX_WAIT_MS)``).

It is the framework's own ceiling for the worker's ingest stage: everything Faust does per
message (Stream iteration, Event objects, acks, offset bookkeeping, commits) and nothing of
ours beyond the parse. Run as ``python -m bench.faust_consume`` configured by the worker's
environment variables.
"""

from __future__ import annotations

import faust

from stream_app.app import build_faust_app
from stream_app.core.config import Settings, load_settings
from stream_app.core.errors import InvalidEvent
from stream_app.ingest.events import EventLimits, parse_event
from stream_app.serving.pipeline import wall_clock_ms


def create_consume_app(settings: Settings) -> faust.App:
    app = build_faust_app(settings)
    topic = app.topic(settings.kafka.events_topic, key_type=bytes, value_type=bytes)
    limits = EventLimits.from_settings(settings.window, settings.kafka.max_message_bytes)
    batch = settings.batch

    @app.agent(topic)
    async def parse_and_drop(stream: faust.StreamT[bytes]) -> None:
        async for values in stream.take(batch.max_size, within=batch.max_wait_ms / 1000):
            now_ms = wall_clock_ms()
            for value in values:
                try:
                    parse_event(value, limits=limits, now_ms=now_ms)
                except InvalidEvent:
                    continue

    return app


def main() -> None:
    settings = load_settings()
    app = create_consume_app(settings)
    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
