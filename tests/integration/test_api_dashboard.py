"""The read API and the live dashboard against a real stack (broker, Redis, a worker, a
triggers worker, the api), the dashboard checked in a real headless Chromium.

The screenshot is written to ``artifacts/dashboard.png`` (path printed) as a test artifact.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from stream_app.local.stack import LocalStack, WorkerProcess
from stream_app.sessions.windows import WindowRules
from tests.integration.browser import capture
from tests.integration.fault_tools import TrackedProducer, expected_windows, wait_until
from tests.integration.helpers import load_messages, stack_settings, wait_for_scores, worker_env
from tests.integration.trigger_tools import triggers_env, write_rules

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TOKEN = "dashboard-test-token"
READY_JS = "document.querySelectorAll('.trigger-row').length > 0"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def get(api: WorkerProcess, path: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{api.web_port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - http only
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_read_api_and_dashboard_in_a_browser(
    kafka_bootstrap: str, redis_url: str, unique_name: str, model_dir: Path, rees46_path: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    settings = stack_settings(kafka_bootstrap, redis_url, unique_name, 4)
    kafka = settings.kafka.model_copy(update={"triggers_topic": f"{unique_name}-trg"})
    settings = settings.model_copy(update={"kafka": kafka})
    messages = load_messages(rees46_path, limit=400)
    env = worker_env(settings, model_dir) | triggers_env(settings, write_rules(tmp_path),
                                                         unique_name)  # fmt: skip
    with LocalStack(settings, worker_env=env, work_dir=tmp_path, triggers=1) as stack:
        api = stack.add_service("api", 0, {"API_TOKEN": TOKEN})
        stack.wait_healthy(assigned=True)
        TrackedProducer(kafka_bootstrap, kafka.events_topic).send(messages)
        windows = expected_windows(messages, WindowRules())
        counts = {s: w.aggregates.n_events for s, w in windows.items()}
        latest = wait_for_scores(kafka_bootstrap, kafka.scores_topic, counts, 180)
        session = max(latest.values(), key=lambda r: r.score)

        status, body = get(api, f"/v1/sessions/{session.session_id}/intent")
        assert status == 200, body
        answer = orjson.loads(body)
        assert (answer["score"], answer["model_version"]) == (session.score, session.model_version)
        assert answer["staleness_s"] >= 0
        assert get(api, f"/v1/users/{session.user_id}/intent")[0] == 200
        assert get(api, "/v1/sessions/never-seen/intent")[0] == 404
        assert get(api, f"/v1/sessions/{session.session_id}/intent", token=None)[0] == 401

        def dashboard() -> dict[str, int]:
            return dict(orjson.loads(get(api, "/v1/dashboard")[1]))

        wait_until(lambda: dashboard()["triggers_seen"] >= 1, 90, "a trigger on the dashboard")
        url = f"http://127.0.0.1:{api.web_port}/?token={TOKEN}"
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        dom = capture(url, shot, READY_JS)
    assert dom.count('class="session-row"') >= 3
    assert 'class="trigger-row"' in dom
    assert 'id="status">live<' in dom
    assert shot.stat().st_size > 10_000
    print(f"dashboard screenshot: {shot}")
