"""Tools shared by the fault, hostile-input and security tests (real workers, real servers)."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from stream_app.local.stack import LocalStack, WorkerProcess
from stream_app.sessions.windows import WindowRules, WindowSnapshot, expected_window
from tests.integration.helpers import stored_windows, valid_events, wait_for_scores

Message = tuple[bytes | None, bytes]


def expected_windows(messages: Iterable[Message], rules: WindowRules) -> dict[str, WindowSnapshot]:
    """Per session, the window the worker must end with (each event applied exactly once)."""
    return {
        sid: expected_window(sid, events, rules) for sid, events in valid_events(messages).items()
    }


def window_mismatches(
    expected: dict[str, WindowSnapshot], stored: dict[str, WindowSnapshot | None]
) -> list[str]:
    """Sessions whose stored window differs from the expected one (events or event count)."""
    bad = []
    for sid, want in expected.items():
        got = stored.get(sid)
        same = got is not None and got.events == want.events
        if not same or got.aggregates.n_events != want.aggregates.n_events:  # type: ignore[union-attr]
            bad.append(sid)
    return bad


@dataclass
class TrackedProducer:
    """Produces keyed messages and remembers the highest offset per partition it landed at."""

    bootstrap: str
    topic: str
    ends: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "linger.ms": 5,
                "acks": "all",
                "message.max.bytes": 4 * 1024 * 1024,
            }
        )

    def _delivered(self, error: object, message: object) -> None:
        assert error is None, error
        partition, offset = message.partition(), message.offset()  # type: ignore[attr-defined]
        self.ends[partition] = max(self.ends.get(partition, 0), offset + 1)

    def send(self, messages: Iterable[Message]) -> int:
        count = 0
        for key, value in messages:
            self._producer.produce(self.topic, value=value, key=key, on_delivery=self._delivered)
            self._producer.poll(0)
            count += 1
        assert self._producer.flush(30) == 0
        return count

    def send_paced(self, messages: Sequence[Message], per_second: float) -> threading.Thread:
        """Produce in the background at about ``per_second`` messages a second."""

        def run() -> None:
            step = max(1, int(per_second / 10))
            for start in range(0, len(messages), step):
                self.send(messages[start : start + step])
                time.sleep(step / per_second)

        thread = threading.Thread(target=run, name="paced-producer", daemon=True)
        thread.start()
        return thread


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The consumer group's committed offset per partition (-1001 = nothing committed)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        wanted = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: tp.offset for tp in consumer.committed(wanted, timeout=10)}
    finally:
        consumer.close()


def health_status(process: WorkerProcess) -> tuple[int, bytes]:
    """HTTP status and body of the worker's ``/health`` (0 when it does not answer)."""
    return http_get(process, "/health")


def http_get(process: WorkerProcess, path: str) -> tuple[int, bytes]:
    url = f"http://127.0.0.1:{process.web_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``condition`` until true; returns the seconds it took, fails the test on timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.25)
    return time.monotonic() - started


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def metric_value(metrics_text: str, name: str) -> float:
    """Sum of every sample of ``name`` (all label sets) in a Prometheus text payload."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def assert_complete(
    stack: LocalStack, expected: dict[str, WindowSnapshot], timeout_s: float = 120
) -> None:
    """Every session's window in Redis is exactly the expected one, and its newest score
    covers that whole window."""
    settings = stack.settings
    counts = {sid: snap.aggregates.n_events for sid, snap in expected.items()}
    latest = wait_for_scores(stack.bootstrap_servers, settings.kafka.scores_topic, counts,
                             timeout_s=timeout_s)  # fmt: skip
    stale = [sid for sid, n in counts.items() if sid not in latest
             or latest[sid].session_events != n
             or latest[sid].window_events != len(expected[sid].events)]  # fmt: skip
    assert not stale, f"{len(stale)} sessions without a score on their complete window"
    wrong = window_mismatches(expected, stored_windows(settings, expected))
    assert not wrong, f"{len(wrong)} windows differ from applying each event once: {wrong[:3]}"
