"""``intent-stream replay``: produce a recorded log at a chosen pace and measure the scores.

One thread produces (pacing on the clock, delivery reports feed the tracker); the calling
thread consumes ``intent-scores`` and the dead-letter topic with ``assign()`` (no group join,
which takes many seconds on the embedded broker) from offsets captured *before* the first
message is sent, so no score of this run can be missed. Records of earlier runs that are
read anyway (a lagging high watermark) are recognised by their timestamps and ignored.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_app.core.config import KafkaSettings, Settings, load_settings
from stream_app.core.errors import ConfigError
from stream_app.ingest.events import DEFAULT_LIMITS, EventLimits
from stream_app.ingest.inputs import check_event_log, check_output_file, check_positive
from stream_app.replay.consumer import LagSampler, open_results_consumer, prepare_topics
from stream_app.replay.producer import Compression, Delivered, EventProducer
from stream_app.replay.report import ReplayResult
from stream_app.replay.timing import (
    TIME_MODES,
    RawMessage,
    Schedule,
    SystemClock,
    TimingConfig,
)
from stream_app.replay.tracker import ScoreTracker
from stream_app.scoring.scores import ScoreRecord
from stream_app.serving.preflight import check_broker, check_tls_files
from stream_app.sessions.windows import WindowRules

log = logging.getLogger(__name__)

SourceFactory = Callable[[], Iterable[RawMessage]]


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    source: Path | SourceFactory  # a recorded log, or a callable yielding (key, value) pairs
    kafka: KafkaSettings
    timing: TimingConfig = field(default_factory=TimingConfig)
    rules: WindowRules = field(default_factory=WindowRules)  # the worker's window rules
    limits: EventLimits = DEFAULT_LIMITS  # the worker's event limits
    drain_timeout_s: float = 60.0  # after the last produce, wait this long for the scores
    wait_for_scores: bool = True  # False: stop once everything is delivered
    dlq_grace_s: float = 3.0  # once all is scored, wait at most this long for dead letters
    compression: Compression = "none"  # see producer.Compression
    idempotent: bool = True
    progress_bar: bool = True
    progress_interval_s: float = 0.5
    lag_group: str | None = None  # the worker's consumer group, to sample its lag
    lag_interval_s: float = 1.0
    session_alias: Callable[[str], str] = str  # e.g. the worker's pseudonymizer


@dataclass(frozen=True, slots=True)
class ReplayProgress:
    """Handed to ``on_progress`` while the tracker lock is held: read it, don't keep it."""

    tracker: ScoreTracker
    elapsed_s: float
    sent: int
    producing: bool


ProgressCallback = Callable[[ReplayProgress], None]


def _open_source(source: Path | SourceFactory) -> SourceFactory:
    if callable(source):
        return source
    from stream_app.ingest.sources import iter_messages

    return lambda: iter_messages(source)


# ---------------------------------------------------------------------------------------------
# The run


class _ProducerThread(threading.Thread):
    """Sends the schedule, then waits for every delivery report."""

    def __init__(self, schedule: Schedule, producer: EventProducer, clock: SystemClock) -> None:
        super().__init__(name="replay-producer", daemon=True)
        self.schedule = schedule
        self.producer = producer
        self.clock = clock
        self.stop = clock.stop
        self.error: BaseException | None = None
        self.finished_ms: int | None = None

    def run(self) -> None:
        try:
            for message in self.schedule:
                if self.stop.is_set():
                    break
                self.producer.send(message.key, message.value, self.clock.wall_ms())
            while self.producer.flush(0.5) and not self.stop.is_set():
                pass
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            self.finished_ms = self.clock.wall_ms()


class _Run:
    def __init__(
        self,
        config: ReplayConfig,
        on_progress: ProgressCallback | None,
        clock: SystemClock,
        stop: threading.Event,
    ) -> None:
        self.config = config
        self.stop_requested = stop  # the caller's; ours is clock.stop
        self.on_progress = on_progress
        self.clock = clock
        self.lock = threading.Lock()
        kafka = config.kafka
        fresh = prepare_topics(kafka)
        self.consumer = open_results_consumer(kafka, fresh)
        self._scored_ms: int | None = None  # when every valid event was first covered
        try:
            self.producer = self._open_producer()
            self.lag = (
                LagSampler(kafka, config.lag_group, config.lag_interval_s)
                if config.lag_group
                else None
            )
        except BaseException:
            self.consumer.close()
            raise
        self.started_ms = clock.wall_ms()
        self.tracker = ScoreTracker(
            rules=config.rules,
            limits=config.limits,
            events_topic=kafka.events_topic,
            start_ms=self.started_ms,
            session_alias=config.session_alias,
        )
        schedule = Schedule(_open_source(config.source), config.timing, clock)
        self.sender = _ProducerThread(schedule, self.producer, clock)

    def _open_producer(self) -> EventProducer:
        config = self.config
        producer = EventProducer(
            config.kafka,
            config.kafka.events_topic,
            self._delivered,
            compression=config.compression,
            idempotent=config.idempotent,
        )
        producer.warm_up()
        return producer

    def _delivered(self, message: Delivered) -> None:
        with self.lock:
            self.tracker.record_sent(message)

    def execute(self) -> ReplayResult:
        bar = _progress_bar(self.config)
        self.sender.start()
        if self.lag is not None:
            self.lag.start()
        try:
            self._consume_until_done(bar)
        except KeyboardInterrupt:
            log.warning("interrupted: reporting what was measured so far")
        finally:
            self.clock.stop.set()
            self.sender.join(timeout=30)
            self.producer.close()
            self.consumer.close()
            if self.lag is not None:
                self.lag.stop.set()
                self.lag.join(timeout=10)
            if bar is not None:
                bar.close()
        if self.sender.error is not None:
            raise self.sender.error
        return self._result()

    def _consume_until_done(self, bar: Any) -> None:
        next_tick = 0.0
        while not self._finished():
            messages = self._next_messages()
            received_ms = self.clock.wall_ms()
            with self.lock:
                for message in messages:
                    self._record(message, received_ms)
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + self.config.progress_interval_s
                self._tick(bar)

    def _next_messages(self) -> list[Any]:
        """Whatever is ready, as soon as anything is: ``consume(n, timeout)`` alone would wait
        for n messages or the whole timeout, adding up to that timeout to every latency."""
        first = self.consumer.poll(0.1)
        if first is None:
            return []
        return [first, *self.consumer.consume(999, timeout=0)]

    def _record(self, message: Any, received_ms: int) -> None:
        if message.error() is not None:
            log.warning("consumer: %s", message.error())
            return
        if message.topic() == self.config.kafka.dlq_topic:
            self.tracker.record_dead_letter(message.value(), message.timestamp()[1])
            return
        try:
            record = ScoreRecord.from_json(message.value())
        except (ValueError, TypeError, KeyError):
            log.warning("unreadable score record at offset %s", message.offset())
            return
        self.tracker.record_score(record, received_ms)

    def _finished(self) -> bool:
        if self.stop_requested.is_set():
            self.clock.stop.set()
            return True
        if self.sender.error is not None or self.sender.finished_ms is None:
            return self.sender.error is not None
        waited_s = (self.clock.wall_ms() - self.sender.finished_ms) / 1000
        if not self.config.wait_for_scores or waited_s >= self.config.drain_timeout_s:
            return True
        with self.lock:
            if not self.tracker.done():
                return False
            if self.tracker.dlq_done():
                return True
            if self._scored_ms is None:
                self._scored_ms = self.clock.wall_ms()
        return (self.clock.wall_ms() - self._scored_ms) / 1000 >= self.config.dlq_grace_s

    def _tick(self, bar: Any) -> None:
        sent = self.sender.schedule.sent
        with self.lock:
            if bar is not None:
                _update_bar(bar, self.tracker, sent)
            if self.on_progress is not None:
                elapsed = (self.clock.wall_ms() - self.started_ms) / 1000
                producing = self.sender.finished_ms is None
                self.on_progress(ReplayProgress(self.tracker, elapsed, sent, producing))

    def _result(self) -> ReplayResult:
        tracker = self.tracker
        return ReplayResult(
            summary=tracker.summary(),
            started_ms=self.started_ms,
            produce_done_ms=self.sender.finished_ms or self.clock.wall_ms(),
            finished_ms=self.clock.wall_ms(),
            first_sent_ms=tracker.first_sent_ms,
            last_score_ms=tracker.last_score_ms,
            done=tracker.done(),
            events_failed=self.producer.failed,
            delivery_errors=dict(self.producer.errors),
            idempotent=self.producer.idempotent,
            sent_per_s=dict(tracker.sent_per_s),
            scores_per_s=dict(tracker.scores_per_s),
            latencies=list(tracker.latencies),
            lag_samples=list(self.lag.samples) if self.lag else [],
            times=self.config.timing.times,
            pace=self.config.timing.describe(),
        )


def _progress_bar(config: ReplayConfig) -> Any:
    if not config.progress_bar:
        return None
    from tqdm import tqdm

    return tqdm(total=config.timing.limit, unit="ev", desc="replay", dynamic_ncols=True)


def _update_bar(bar: Any, tracker: ScoreTracker, sent: int) -> None:
    bar.update(sent - bar.n)
    latest = tracker.latencies[-200:]
    recent_ms = max((lat for _, lat in latest), default=0)
    bar.set_postfix(
        valid=tracker.events_valid,
        covered=len(tracker.latencies),
        scores=tracker.scores_received,
        recent_max_ms=recent_ms,
        refresh=False,
    )


def run_replay(
    config: ReplayConfig,
    on_progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
) -> ReplayResult:
    """Replay ``config.source`` to the events topic and measure scores until done/timeout.

    ``on_progress`` is called from this thread every ``progress_interval_s`` with the tracker
    locked (the demo's live view reads ``progress.tracker.top_sessions(n)`` there). Setting
    ``stop`` ends the sending early; the result covers what was measured.
    """
    run = _Run(config, on_progress, SystemClock(), stop or threading.Event())
    return run.execute()


# ---------------------------------------------------------------------------------------------
# CLI (hooked into ``intent-stream replay`` by stream_app/cli.py)


def _speed(text: str) -> float | None:
    if text.strip().lower() == "max":
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("speed must be > 0 or 'max'")
    return value


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log", type=Path, help="REES46 CSV(.gz), raw JSONL(.gz) or DIGINETICA dir")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=_speed, default=1.0, help="gap divisor, or 'max' (default 1)")
    pace.add_argument("--rate", type=float, help="fixed events per second instead of --speed")
    parser.add_argument("--duration", type=float, help="stop sending after S seconds")
    parser.add_argument("--triggers", action="store_true",
                        help="also report per-rule trigger precision/recall/lead (back-test "
                        "numbers) from the triggers topic")  # fmt: skip
    parser.add_argument("--limit", type=int, help="send at most N messages")
    parser.add_argument("--loop", action="store_true", help="repeat the log (new session ids)")
    times = parser.add_mutually_exclusive_group()
    times.add_argument(
        "--keep-times",
        action="store_const",
        const="keep",
        dest="times",
        help="send recorded event times unchanged (same as --times keep)",
    )
    times.add_argument(
        "--times",
        choices=TIME_MODES,
        help="event times: 'compress' (default) divides the recorded gaps by the speed, so "
        "each time is the scheduled send time and never ahead of it, at any speed and span, "
        "each session's order kept (unpaced runs: the send time - 1 s); 'shift' keeps the "
        "recorded gaps from now (live-looking only at speed <= 1: faster, long logs run past "
        "WINDOW_MAX_FUTURE_SKEW_S into time_in_future); 'send' the send time; 'keep' as recorded",
    )
    parser.set_defaults(times="compress")
    parser.add_argument(
        "--run-tag",
        default="auto",
        help="suffix making session ids unique to this run: 'auto', 'none' or text",
    )
    parser.add_argument(
        "--bootstrap-servers", help="Kafka bootstrap (default $KAFKA_BOOTSTRAP_SERVERS)"
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="after the last send, wait up to S seconds for the scores",
    )
    parser.add_argument("--no-wait", action="store_true", help="do not wait for scores")
    parser.add_argument(
        "--compression",
        choices=("none", "gzip", "lz4"),
        default="none",
        help="batch compression; lz4 only if the worker has the lz4 library (aiokafka needs it)",
    )
    parser.add_argument("--no-idempotence", action="store_true", help="plain producer")
    parser.add_argument("--report-json", type=Path, help="write the report as JSON here")
    parser.add_argument("--plot", type=Path, help="write latency/throughput plots (PNG) here")
    parser.add_argument("--slo-p99-ms", type=float, help="exit 1 if p99 latency exceeds this")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _session_alias(settings: Settings) -> Callable[[str], str]:
    if not settings.privacy.enabled:
        return str
    from stream_app.ingest.privacy import Pseudonymizer

    return Pseudonymizer(settings.privacy.pseudonymize_key.get_secret_value()).pseudonym


def _run_tag(text: str) -> str:
    if text == "auto":
        return f"#r{uuid.uuid4().hex[:6]}"
    return "" if text == "none" else text


def config_from_args(args: argparse.Namespace, settings: Settings) -> ReplayConfig:
    _check_args(args)
    kafka = settings.kafka
    if args.bootstrap_servers:
        kafka = kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    if kafka.embedded:
        raise ConfigError("replay needs a broker: --bootstrap-servers or KAFKA_BOOTSTRAP_SERVERS")
    check_tls_files(kafka, settings.redis)
    check_broker(kafka)
    timing = TimingConfig(
        speed=None if args.rate else args.speed,
        rate=args.rate,
        duration_s=args.duration,
        limit=args.limit,
        loop=args.loop,
        times=args.times,
        run_tag=_run_tag(args.run_tag),
    )
    return ReplayConfig(
        source=args.log,
        kafka=kafka,
        timing=timing,
        rules=WindowRules.from_settings(settings.window),
        limits=EventLimits.from_settings(settings.window, settings.kafka.max_message_bytes),
        drain_timeout_s=args.drain_timeout,
        wait_for_scores=not args.no_wait,
        compression=args.compression,
        idempotent=not args.no_idempotence,
        progress_bar=not args.no_progress,
        lag_group=settings.worker.app_id,
        session_alias=_session_alias(settings),
    )


def _check_args(args: argparse.Namespace) -> None:
    """Inputs first: nothing connects before these hold (one line, exit 2, otherwise)."""
    check_event_log(args.log, "log")
    for flag, value in (("--rate", args.rate), ("--duration", args.duration),
                        ("--drain-timeout", args.drain_timeout),
                        ("--slo-p99-ms", args.slo_p99_ms)):  # fmt: skip
        check_positive(flag, value)
    check_positive("--limit", args.limit, allow_zero=True)
    check_output_file("--report-json", args.report_json)
    check_output_file("--plot", args.plot)


def main_replay(args: argparse.Namespace) -> int:
    """0 = fine; 1 = SLO missed; 2 = bad configuration; 3 = events left unscored."""
    import orjson

    from stream_app.replay import report

    try:
        config = config_from_args(args, load_settings())
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    result = run_replay(config)
    report.print_table(result)
    if args.report_json:
        data = report.report_dict(result)
        args.report_json.parent.mkdir(parents=True, exist_ok=True)
        args.report_json.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    if getattr(args, "triggers", False):
        from stream_app.replay.trigger_report import replay_trigger_report

        triggers = replay_trigger_report(args.log, config.kafka, config.timing.run_tag)
        print(orjson.dumps(triggers, option=orjson.OPT_INDENT_2).decode())
        if args.report_json:
            data = orjson.loads(args.report_json.read_bytes()) | {"triggers": triggers}
            args.report_json.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    if args.plot:
        report.write_plot(result, args.plot)
    if args.slo_p99_ms is not None and not report.slo_met(result, args.slo_p99_ms):
        p99, scored = result.summary.latency.p99, "" if result.done else ", events left unscored"
        log.error("SLO missed: p99 %.1f ms vs %.1f ms%s", p99, args.slo_p99_ms, scored)
        return 1
    if config.wait_for_scores and not result.done:
        log.error("drain timeout: not every valid event was reflected in a score")
        return 3
    return 0
