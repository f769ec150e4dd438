"""The read API over the in-memory latest-score store (no servers): auth, 404, privacy."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from stream_app.api.feed import DashboardState
from stream_app.api.latest import InMemoryLatestScores
from stream_app.api.server import ApiContext, create_api
from stream_app.core.config import ApiSettings, PrivacySettings, Settings
from stream_app.ingest.privacy import Pseudonymizer
from stream_app.scoring.scores import ScoreRecord

TOKEN = "t0ken-for-tests"
NOW_S = 1_700_000_100.0


def record(session: str, user: str, score: float, scored_at: int) -> ScoreRecord:
    return ScoreRecord(session, user, score, "m1", 3, 3, "", 0, scored_at, 0, 0)


async def client(privacy_key: str = "") -> tuple[httpx.AsyncClient, InMemoryLatestScores]:
    settings = Settings(
        api=ApiSettings(token=SecretStr(TOKEN)),
        privacy=PrivacySettings(pseudonymize_key=SecretStr(privacy_key)),
    )
    latest = InMemoryLatestScores()
    app = create_api(ApiContext(settings, latest, DashboardState(), clock=lambda: NOW_S))
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                             headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    return http, latest


async def test_session_and_user_intent() -> None:
    http, latest = await client()
    await latest.write([record("s1", "u1", 0.4, 1_700_000_000_000),
                        record("s2", "u1", 0.7, 1_700_000_050_000)])  # fmt: skip
    async with http:
        s1 = (await http.get("/v1/sessions/s1/intent")).json()
        u1 = (await http.get("/v1/users/u1/intent")).json()
        missing = await http.get("/v1/sessions/nope/intent")
    assert (s1["score"], s1["model_version"], s1["staleness_s"]) == (0.4, "m1", 100.0)
    assert (s1["stale"], s1["purchased"], s1["reasons"]) == (False, False, [])
    assert (u1["session_id"], u1["score"]) == ("s2", 0.7)  # the user's newest score
    assert missing.status_code == 404


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}"])
async def test_bearer_token_required(header: str | None) -> None:
    http, _ = await client()
    headers = {"Authorization": header} if header else {}
    http.headers.pop("Authorization")
    async with http:
        response = await http.get("/v1/sessions/s1/intent", headers=headers)
    assert response.status_code == 401


async def test_raw_ids_are_pseudonymised_like_the_worker_did() -> None:
    key = "k" * 20
    pseudo = Pseudonymizer(key)
    http, latest = await client(privacy_key=key)
    await latest.write([record(pseudo.pseudonym("s1"), pseudo.pseudonym("u1"), 0.5, 1)])
    async with http:
        by_raw = await http.get("/v1/sessions/s1/intent")
        by_pseudonym = await http.get(f"/v1/sessions/{pseudo.pseudonym('s1')}/intent")
    assert by_raw.status_code == by_pseudonym.status_code == 200
    assert by_raw.json()["session_id"] == pseudo.pseudonym("s1")


async def test_openapi_schema_and_dashboard() -> None:
    http, _ = await client()
    async with http:
        schema = (await http.get("/openapi.json")).json()
        page = await http.get("/")
        snapshot = await http.get(f"/v1/dashboard?token={TOKEN}")
        denied = await http.get("/v1/dashboard", headers={"Authorization": ""})
    assert {"/v1/sessions/{session_id}/intent", "/v1/users/{user_id}/intent"} <= set(
        schema["paths"]
    )
    assert "IntentOut" in schema["components"]["schemas"]
    assert "EventSource" in page.text
    assert snapshot.json()["scores_seen"] == 0
    assert denied.status_code == 401


def test_dashboard_state_top_sessions_rate_and_latency() -> None:
    now = [10_000]
    state = DashboardState(clock=lambda: now[0])
    for i, p in enumerate([0.2, 0.9, 0.5]):
        state.add_score({"session_id": f"s{i}", "score": p, "oldest_ingest_ms": 10_000 - 20 * i})
    state.add_trigger({"trigger_id": "t", "rule": "r", "reasons": [{"code": "item_in_cart"}]})
    snap = state.snapshot(top=2)
    assert [s["session_id"] for s in snap["top_sessions"]] == ["s1", "s2"]
    assert snap["scores_per_s"] == 0.3
    assert snap["latency_ms_p50"] == 20.0
    assert snap["triggers"][0]["rule"] == "r"
    now[0] += 20_000
    assert state.snapshot()["scores_per_s"] == 0.0
