"""``intent-stream api``: the personalization read API and the live dashboard (FastAPI).

- ``GET /v1/sessions/{id}/intent``, ``GET /v1/users/{id}/intent``: the latest score the worker
  wrote to Redis (score, model version, scored_at, staleness, reasons if present); 404 when
  unknown or expired. Bearer token (``API_TOKEN``) required when set. With
  ``PRIVACY_PSEUDONYMIZE_KEY`` set, raw ids are pseudonymised the way the worker did before
  the lookup (an id that already is a pseudonym is used as it is).
- ``GET /``: the dashboard page; ``GET /v1/dashboard/stream``: its server-sent events
  (token in the ``Authorization`` header or ``?token=``, since ``EventSource`` cannot send
  headers); ``GET /v1/dashboard``: one snapshot as JSON.
- ``/livez``, ``/readyz`` (Redis answers), ``/metrics``; OpenAPI at ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from pydantic import BaseModel

from stream_app.api.feed import DashboardState, TopicFeed
from stream_app.api.latest import LatestScore, LatestScores
from stream_app.core import metrics
from stream_app.core.config import RedisSettings, Settings
from stream_app.core.errors import StoreUnavailable
from stream_app.core.redis_connect import RedisClient
from stream_app.ingest.privacy import Pseudonymizer

log = logging.getLogger(__name__)

PSEUDONYM = re.compile(r"^p-[0-9a-f]{32}$")
SSE_INTERVAL_S = 1.0
API_REDIS_POOL = 32  # connections to Redis; more requests than that wait for one


class ReasonOut(BaseModel):
    code: str
    text: str
    weight: float


class IntentOut(BaseModel):
    """The latest intent of a session or a user."""

    session_id: str
    user_id: str
    score: float
    model_version: str
    scored_at: int
    staleness_s: float
    stale: bool
    purchased: bool
    reasons: list[ReasonOut]


class ApiContext:
    def __init__(
        self,
        settings: Settings,
        latest: LatestScores,
        dashboard: DashboardState,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.latest = latest
        self.dashboard = dashboard
        self.clock = clock
        privacy = settings.privacy
        key = privacy.pseudonymize_key.get_secret_value()
        self.pseudonymizer = Pseudonymizer(key) if privacy.enabled else None
        self.token = settings.api.token.get_secret_value().encode()

    def lookup_id(self, raw: str) -> str:
        if self.pseudonymizer is None or PSEUDONYM.match(raw):
            return raw
        return self.pseudonymizer.pseudonym(raw)

    def authorised(self, presented: str) -> bool:
        return not self.token or hmac.compare_digest(presented.encode(), self.token)

    def check_bearer(self, authorization: str) -> None:
        scheme, _, presented = authorization.partition(" ")
        if not self.authorised(presented if scheme.lower() == "bearer" else ""):
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    def body(self, found: LatestScore) -> bytes:
        staleness = max(self.clock() - found.scored_at / 1000, 0.0)
        return orjson.dumps(
            {"session_id": found.session_id, "user_id": found.user_id, "score": found.score,
             "model_version": found.model_version, "scored_at": found.scored_at,
             "staleness_s": round(staleness, 3), "stale": found.stale,
             "purchased": found.purchased, "reasons": found.reasons}
        )  # fmt: skip


def create_api(context: ApiContext, feed: TopicFeed | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if feed is not None:
            feed.start()
        yield
        if feed is not None:
            feed.stop()
        await context.latest.close()

    app = FastAPI(title="intent-stream read API", version="1", lifespan=lifespan)

    # The hot routes check the token inline (no dependency injection: a measurable share of
    # a sub-millisecond request); the OpenAPI schema still declares the bearer scheme.
    secured: dict[str, Any] = {"security": [{"bearer": []}]}
    found_doc: dict[int | str, dict[str, Any]] = {
        200: {"model": IntentOut}, 401: {"description": "no or wrong bearer token"},
        404: {"description": "unknown session/user, or its latest score expired"},
    }  # fmt: skip

    @app.get("/v1/sessions/{session_id}/intent", responses=found_doc, openapi_extra=secured)
    async def session_intent(session_id: str, request: Request) -> Response:
        context.check_bearer(request.headers.get("authorization", ""))
        found = await context.latest.session(context.lookup_id(session_id))
        return _answer(context, found, "session")

    @app.get("/v1/users/{user_id}/intent", responses=found_doc, openapi_extra=secured)
    async def user_intent(user_id: str, request: Request) -> Response:
        context.check_bearer(request.headers.get("authorization", ""))
        found = await context.latest.user(context.lookup_id(user_id))
        return _answer(context, found, "user")

    app.openapi = lambda: _with_bearer_scheme(app)  # type: ignore[method-assign]

    @app.exception_handler(StoreUnavailable)
    async def store_down(request: Request, exc: StoreUnavailable) -> Response:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return Response(orjson.dumps({"detail": "score store unavailable"}), status_code=503,
                        media_type="application/json")  # fmt: skip

    _dashboard_routes(app, context)
    _probe_routes(app, context)
    return app


def _with_bearer_scheme(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearer"] = {"type": "http", "scheme": "bearer"}
        app.openapi_schema = schema
    return app.openapi_schema


def _answer(context: ApiContext, found: LatestScore | None, what: str) -> Response:
    if found is None:
        raise HTTPException(404, f"no current intent for this {what}")
    return Response(context.body(found), media_type="application/json")


def _dashboard_routes(app: FastAPI, context: ApiContext) -> None:
    page = resources.files("stream_app.api").joinpath("dashboard.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard_page() -> HTMLResponse:
        return HTMLResponse(page)

    def sse_auth(
        token: Annotated[str, Query()] = "", authorization: Annotated[str, Header()] = ""
    ) -> None:
        presented = token or authorization.partition(" ")[2]
        if not context.authorised(presented):
            raise HTTPException(401, "missing or wrong token")

    @app.get("/v1/dashboard", dependencies=[Depends(sse_auth)])
    async def dashboard_snapshot() -> dict[str, Any]:
        return context.dashboard.snapshot()

    @app.get("/v1/dashboard/stream", dependencies=[Depends(sse_auth)])
    async def dashboard_stream(request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            while not await request.is_disconnected():
                yield b"data: " + orjson.dumps(context.dashboard.snapshot()) + b"\n\n"
                await asyncio.sleep(SSE_INTERVAL_S)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})  # fmt: skip


def _probe_routes(app: FastAPI, context: ApiContext) -> None:
    @app.get("/livez", include_in_schema=False)
    async def livez() -> dict[str, bool]:
        return {"live": True}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        up = await context.latest.ping()
        return Response(orjson.dumps({"ready": up}), status_code=200 if up else 503,
                        media_type="application/json")  # fmt: skip

    @app.get("/health", include_in_schema=False)
    async def health() -> Response:
        return await readyz()

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        payload, content_type = metrics.render()
        return Response(payload, media_type=content_type)


def pooled_client(settings: RedisSettings) -> RedisClient:
    """The API's Redis client: on one node, a bounded pool where a request waits for a free
    connection (up to the socket timeout) instead of failing under a burst; Cluster and
    Sentinel clients as ``redis_connect`` builds them."""
    from redis.asyncio import BlockingConnectionPool, Redis

    from stream_app.core.redis_connect import connection_options, parse_redis_url, redis_client

    target = parse_redis_url(settings.url.strip())
    if target.topology != "single":
        return redis_client(settings)
    options = connection_options(settings, target)
    pool = BlockingConnectionPool.from_url(
        settings.url.strip(),
        max_connections=API_REDIS_POOL,
        timeout=settings.socket_timeout_s,
        **options,
    )
    return Redis(connection_pool=pool)


def build_api(settings: Settings) -> FastAPI:
    from stream_app.api.latest import RedisLatestScores
    from stream_app.core.errors import ConfigError

    if settings.redis.embedded or settings.redis.url.startswith("memory://"):
        raise ConfigError("REDIS_URL must name a Redis for the read API")
    redis = settings.redis
    client = pooled_client(redis)
    latest = RedisLatestScores(client, redis.key_prefix, settings.api.score_ttl_s)
    dashboard = DashboardState()
    feed = None
    if settings.api.dashboard_feed and not settings.kafka.embedded:
        feed = TopicFeed(settings.kafka, dashboard)
    return create_api(ApiContext(settings, latest, dashboard), feed)


def run_api() -> int:
    import uvicorn

    from stream_app.core.config import load_settings
    from stream_app.core.errors import ConfigError
    from stream_app.core.logs import configure_logging

    try:
        settings = load_settings()
        configure_logging(settings.worker.log_level, settings.worker.log_json)
        app = build_api(settings)
    except ConfigError as exc:
        log.error("cannot start the api: %s", exc)
        return 2
    if not settings.api.token.get_secret_value():
        log.warning("API_TOKEN is not set: the read API answers without authentication")
    # A long keep-alive: personalization servers hold pooled connections open.
    uvicorn.run(app, host=settings.api.host, port=settings.api.port, log_level="warning",
                access_log=False, timeout_keep_alive=30)  # fmt: skip
    return 0
