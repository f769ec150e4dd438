"""``intent-stream demo``: the whole pipeline on one machine with nothing configured.

Starts (unless ``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL`` say otherwise) an embedded broker and
Redis, creates the topics, starts one worker process, replays a recorded log through it, shows
the sessions with the highest intent live, waits until every valid event is reflected in a
published score, and shuts everything down (Ctrl-C included).
"""

from __future__ import annotations

import argparse
import logging
import secrets
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from stream_app.core.config import Settings, load_settings
from stream_app.core.errors import IntentStreamError
from stream_app.core.logs import configure_logging
from stream_app.ingest.events import EventLimits
from stream_app.ingest.inputs import check_event_log, check_output_file, check_positive
from stream_app.local.stack import LocalStack
from stream_app.replay import report
from stream_app.replay.runner import (
    ReplayConfig,
    ReplayProgress,
    run_replay,
)
from stream_app.replay.timing import TimingConfig
from stream_app.serving.preflight import check_broker, check_tls_files, run_checks
from stream_app.sessions.windows import WindowRules

log = logging.getLogger(__name__)

SUMMARY_KEYS = (
    "events_sent",
    "events_valid",
    "dlq",
    "sessions",
    "sessions_scored",
    "latency_ms_p50",
    "latency_ms_p99",
)


@dataclass(frozen=True, slots=True)
class Sample:
    """A bundled log (``stream_app/demo_data/``, see its ATTRIBUTION.md) and its pace."""

    file: str
    speed: str  # the default --speed: the whole sample in about a minute

    def path(self) -> Path:
        return Path(str(resources.files("stream_app") / "demo_data" / self.file))


SAMPLES = {
    # One day of the Google Merchandise Store (457 complete sessions, 48 of them buying, 204
    # with a cart; real product names and session context) in about a minute.
    "ga_merch": Sample("ga_merch_2016-08-12_sample.csv.gz", speed="1440"),
    # 2,000 consecutive REES46 rows (a few minutes of a busy multi-category shop).
    "rees46": Sample("rees46_2019-Oct_sample.csv", speed="20"),
}
DEFAULT_SAMPLE = "ga_merch"
EVENTS_SPEED = "20"  # the default --speed for a log given with --events


def bundled_sample(name: str = DEFAULT_SAMPLE) -> Path:
    return SAMPLES[name].path()


def _speed(text: str | None, args: argparse.Namespace) -> float | None:
    if text is None:
        text = EVENTS_SPEED if args.events else SAMPLES[args.sample].speed
    if text.strip().lower() == "max":
        return None
    speed = float(text)
    if speed <= 0:
        raise ValueError("--speed must be > 0 or 'max'")
    return speed


def run_demo(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    console = Console()
    try:
        settings = load_settings()
        speed = _speed(args.speed, args)
        _check_inputs(args, settings)
        model_dir = _model_dir(settings, console)
    except (IntentStreamError, ValueError) as exc:
        console.print(f"[red]cannot start the demo:[/] {exc}", soft_wrap=True)
        return 2
    source = Path(args.events) if args.events else bundled_sample(args.sample)
    env = {"MODEL_DIR": str(model_dir), "WORKER_LOG_LEVEL": "WARNING"}
    token = secrets.token_urlsafe(16)
    try:
        with LocalStack(settings, worker_env=env, triggers=1) as stack:
            api = stack.add_service("api", 0, {"API_TOKEN": token, "API_HOST": "127.0.0.1"})
            console.print(_where(stack))
            stack.wait_healthy(assigned=True)
            console.print(
                f"live dashboard: [bold]http://127.0.0.1:{api.web_port}/?token={token}[/]"
            )
            result = _replay(stack, settings, source, speed, args, console)
            fired = _triggers_fired(stack, settings)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: everything was shut down[/]")
        return 130
    except IntentStreamError as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        return 1
    report.print_table(result)
    _print_triggers(console, fired)
    summary = demo_summary(report.report_dict(result)) | {"triggers": len(fired)}
    if args.summary_json:
        Path(args.summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary_json).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    if not result.done:
        console.print("[red]not every valid event was reflected in a score before the timeout[/]")
        return 3
    return 0


def _check_inputs(args: argparse.Namespace, settings: Settings) -> None:
    """Inputs and configured servers, before any server starts or the model loads."""
    if args.events:
        check_event_log(args.events, "--events")
    check_positive("--limit", args.limit, allow_zero=True)
    check_positive("--timeout", args.timeout)
    check_positive("--top", args.top, allow_zero=True)
    check_output_file("--summary-json", args.summary_json)
    check_tls_files(settings.kafka, settings.redis)
    if not settings.kafka.embedded:
        check_broker(settings.kafka)
    if not settings.redis.embedded and settings.redis.url.startswith(("redis://", "rediss://")):
        run_checks(settings.redis, WindowRules.from_settings(settings.window))


def _triggers_fired(stack: LocalStack, settings: Settings) -> list[dict[str, Any]]:
    """The triggers the replay fired (read back from the triggers topic)."""
    from stream_app.core.topics import read_all, security_config

    kafka = settings.kafka
    messages = read_all(stack.bootstrap_servers, kafka.triggers_topic, timeout_s=15, idle_s=2.0,
                        config=security_config(kafka))  # fmt: skip
    return [orjson.loads(m.value() or b"{}") for m in messages]


def _print_triggers(console: Console, fired: list[dict[str, Any]]) -> None:
    table = Table(title=f"Campaign triggers fired: {len(fired)}", expand=False)
    for name in ("rule", "session", "score", "reasons"):
        table.add_column(name)
    for t in fired[-12:]:
        reasons = ", ".join(r.get("code", "") for r in t.get("reasons") or [])
        table.add_row(t["rule"], str(t["session_id"])[:18], f"{t['score']:.3f}", reasons)
    console.print(table)


def _model_dir(settings: Settings, console: Console) -> Path:
    if settings.model.dir is not None:
        return Path(settings.model.dir)
    from model_export.bundle import default_model_dir

    with console.status("building the model (first run only, then cached)..."):
        return default_model_dir()


def _where(stack: LocalStack) -> Text:
    broker = "embedded Tansu" if stack.broker else "external Kafka"
    redis = "embedded Redis" if stack.redis else "external Redis"
    return Text.assemble(
        ("intent-stream demo ", "bold"),
        f"{broker} at {stack.bootstrap_servers}, {redis}, {len(stack.processes)} worker, "
        f"{stack.triggers} triggers worker, read API",
    )


def _replay(
    stack: LocalStack,
    settings: Settings,
    source: Path,
    speed: float | None,
    args: argparse.Namespace,
    console: Console,
) -> report.ReplayResult:
    kafka = settings.kafka.model_copy(update={"bootstrap_servers": stack.bootstrap_servers})
    config = ReplayConfig(
        source=source,
        kafka=kafka,
        timing=TimingConfig(
            speed=speed, limit=args.limit or None, times=args.times, run_tag=_run_tag()
        ),
        rules=WindowRules.from_settings(settings.window),
        limits=EventLimits.from_settings(settings.window, settings.kafka.max_message_bytes),
        drain_timeout_s=args.timeout,
        progress_bar=False,
        lag_group=settings.worker.app_id,
    )
    if args.no_live:
        return run_replay(config, on_progress=_printer(console))
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        return run_replay(config, on_progress=lambda p: live.update(live_view(p, args.top)))


def _run_tag() -> str:
    # Each demo run gets its own session ids, so reruns against the same (external) stack
    # do not merge into the previous run's windows.
    return f"#demo{int(time.time()) % 100_000}"


def _printer(console: Console) -> Any:
    last = [0.0]

    def show(progress: ReplayProgress) -> None:
        if progress.elapsed_s - last[0] >= 2 or not progress.producing:
            last[0] = progress.elapsed_s
            s = progress.tracker.summary()
            console.print(
                f"{progress.elapsed_s:6.1f}s sent={s.events_sent} valid={s.events_valid} "
                f"dlq={s.dlq} sessions={s.sessions} scored={s.sessions_scored} "
                f"bought={s.sessions_purchased}"
            )

    return show


def live_view(progress: ReplayProgress, top: int) -> Group:
    """Header line plus the sessions with the highest intent right now."""
    s = progress.tracker.summary()
    header = Text.assemble(
        (f"{progress.elapsed_s:6.1f}s  ", "dim"),
        f"sent {s.events_sent}  valid {s.events_valid}  dead-lettered {s.dlq}  ",
        f"sessions {s.sessions_scored}/{s.sessions} fully scored, {s.sessions_purchased} bought  ",
        (f"p50 {s.latency.p50:.0f} ms  p99 {s.latency.p99:.0f} ms" if s.latency.count else ""),
    )
    table = Table(title="Sessions most likely to buy (not bought yet)", expand=False)
    for name, justify in (("session", "left"), ("user", "left"), ("score", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_column("events", justify="right")
    table.add_column("", justify="left")
    for view in progress.tracker.top_sessions(top):
        bar = "█" * round(view.score * 20)
        table.add_row(
            view.session_id[:18],
            view.user_id[:12],
            f"{view.score:.3f}",
            f"{view.session_events}/{view.expected_events}",
            Text(bar, style="green" if view.score >= 0.5 else "yellow"),
        )
    return Group(header, table)


def demo_summary(report_data: dict[str, Any]) -> dict[str, Any]:
    """The ``--summary-json`` content: the required keys first, then the full report."""
    summary = {key: report_data.get(key) for key in SUMMARY_KEYS}
    return summary | {k: v for k, v in report_data.items() if k not in summary and k != "timeline"}
