"""Typed settings, one class per concern, read from environment variables.

Every variable and its default is listed in the README's configuration table; keep the two
in step. Secrets are ``SecretStr`` so they never show in logs, errors or ``repr``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream_app.core.errors import ConfigError

BackendName = Literal["onnx", "torch", "tensorrt"]


def _env(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, extra="ignore", frozen=True)


class KafkaSettings(BaseSettings):
    """Broker connection and topic names (``KAFKA_*``)."""

    model_config = _env("KAFKA_")

    bootstrap_servers: str = Field(
        default="", description="host:port[,host:port]; empty means 'start an embedded broker'"
    )
    events_topic: str = "user-events"
    scores_topic: str = "intent-scores"
    dlq_topic: str = "user-events-dlq"
    triggers_topic: str = "intent-triggers"
    partitions: int = Field(default=8, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=16)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    # Group-membership timeouts. Apache Kafka is happy with the defaults; the embedded
    # broker rebalances in ~5 s instead of 30-60 s with 10 s.
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    rebalance_timeout_ms: int = Field(default=10_000, ge=1_000)
    max_message_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)

    @property
    def embedded(self) -> bool:
        return not self.bootstrap_servers.strip()


class RedisSettings(BaseSettings):
    """Session-store connection (``REDIS_*``). ``rediss://`` enables TLS; ``+cluster`` and
    ``+sentinel`` schemes pick Redis Cluster or Sentinel (``stream_app.core.redis_connect``)."""

    model_config = _env("REDIS_")

    url: str = Field(
        default="",
        description="redis[s]://, redis[s]+cluster://, redis[s]+sentinel://; empty = embedded",
    )
    username: str = ""
    password: SecretStr = SecretStr("")
    ssl_ca_certs: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    key_prefix: str = Field(default="is", min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")
    socket_timeout_s: float = Field(default=2.0, gt=0)
    retries: int = Field(default=8, ge=0, le=100)
    backoff_base_s: float = Field(default=0.05, gt=0)
    backoff_cap_s: float = Field(default=2.0, gt=0)

    @property
    def embedded(self) -> bool:
        return not self.url.strip()


class WindowSettings(BaseSettings):
    """Session-window rules (``WINDOW_*``)."""

    model_config = _env("WINDOW_")

    max_events: int = Field(default=50, ge=1, le=1000)
    session_gap_s: int = Field(default=30 * 60, ge=1, le=7 * 24 * 3600)
    # Bounds on event times relative to the worker's clock (hostile-input protection).
    max_future_skew_s: int = Field(default=24 * 3600, ge=0)
    max_age_days: int = Field(default=365 * 20, ge=1)
    max_seen_ids: int = Field(default=5_000, ge=10, le=1_000_000)


class BatchSettings(BaseSettings):
    """Micro-batching and backpressure (``BATCH_*``)."""

    model_config = _env("BATCH_")

    max_size: int = Field(default=64, ge=1, le=4096)
    max_wait_ms: int = Field(default=20, ge=1, le=60_000)
    max_score_batch: int = Field(default=64, ge=1, le=4096)
    max_pending_sessions: int = Field(default=20_000, ge=1)
    # Bytes of consumed event values waiting for a score (issue 8: 64 KiB events x 160 000
    # messages would otherwise be GiB).
    max_pending_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)


class ScoreSettings(BaseSettings):
    """When a scoring batch is released (``stream_app/serving/deadline.py``) and what a published
    score says (``SCORE_*``)."""

    model_config = _env("SCORE_")

    # 0 (size-only: score whatever waits, up to BATCH_MAX_SCORE_BATCH) by measurement: with
    # the item-sequence model the 100 ms deadline policy had the higher p99 at every load of
    # the 2026-12-07 benchmark sweep (bench/results/2026-12-07-2cpu.md).
    latency_budget_ms: int = Field(
        default=0,
        ge=0,
        le=60_000,
        description="target from an event's arrival to its score; 0 = score whatever waits at once",
    )
    # A score whose newest event is older than this (event time vs the worker's clock) is
    # published with ``stale: true`` (its window is still updated); 0 turns the rule off.
    stale_after_s: int = Field(default=3600, ge=0)


class ModelSettings(BaseSettings):
    """Which model to serve and how (``MODEL_*``)."""

    model_config = _env("MODEL_")

    dir: Path | None = Field(default=None, description="model directory; empty = bundled model")
    backend: BackendName = "onnx"
    device: str = "cpu"
    threads: int = Field(default=0, ge=0, le=256, description="0 = let the runtime decide")
    variant: Literal["fp32", "int8"] = "fp32"
    inference_timeout_s: float = Field(default=10.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)
    # Circuit breaker: this many backend failures in a row open it (scoring and consumption
    # stop, readiness 503); it is probed again after the cooldown, doubling up to 8x.
    breaker_failures: int = Field(default=3, ge=1, le=100)
    breaker_cooldown_s: float = Field(default=5.0, gt=0, le=600)


class WorkerSettings(BaseSettings):
    """Process-level settings (``WORKER_*``)."""

    model_config = _env("WORKER_")

    app_id: str = Field(default="intent-stream", description="Faust app id = consumer group")
    web_port: int = Field(default=6066, ge=0, le=65535)
    web_host: str = "127.0.0.1"
    data_dir: Path = Path("/tmp/intent-stream")  # noqa: S108 - faust table dir, overridable
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False
    # SIGTERM (or a fatal error) ends the process within this many seconds, whatever is down.
    shutdown_timeout_s: float = Field(default=15.0, gt=0, le=600)


class PrivacySettings(BaseSettings):
    """Pseudonymisation of ids before they reach Redis or output topics (``PRIVACY_*``)."""

    model_config = _env("PRIVACY_")

    pseudonymize_key: SecretStr = SecretStr("")

    @field_validator("pseudonymize_key")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if secret and len(secret) < 16:
            raise ValueError("PRIVACY_PSEUDONYMIZE_KEY must be at least 16 characters")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.pseudonymize_key.get_secret_value())


class TriggersSettings(BaseSettings):
    """The campaign-triggers worker (``TRIGGERS_*``)."""

    model_config = _env("TRIGGERS_")

    rules_path: Path | None = Field(default=None, description="empty = the shipped examples")
    app_id: str = Field(default="intent-stream-triggers", description="its consumer group")
    # Unset: WORKER_WEB_PORT / WORKER_WEB_HOST (one process per pod needs no other port).
    web_port: int | None = Field(default=None, ge=0, le=65535)
    web_host: str | None = None
    reasons: bool = Field(default=True, description="reason codes on every trigger")
    state_ttl_s: int = Field(default=2 * 3600, ge=60, description="per (rule, session) state")


class ApiSettings(BaseSettings):
    """The read API and dashboard (``API_*``); the worker writes what the API reads."""

    model_config = _env("API_")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    token: SecretStr = SecretStr("")
    score_ttl_s: int = Field(default=3600, ge=1, description="latest score kept in Redis")
    write_latest: bool = Field(default=True, description="the worker writes latest scores")
    dashboard_feed: bool = Field(default=True, description="the dashboard consumes the topics")


class Settings(BaseSettings):
    """All settings; each concern reads its own prefix."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    window: WindowSettings = Field(default_factory=WindowSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    score: ScoreSettings = Field(default_factory=ScoreSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    triggers: TriggersSettings = Field(default_factory=TriggersSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)


def load_settings() -> Settings:
    """Read settings from the environment, turning validation errors into a ``ConfigError``."""
    groups: dict[str, Any] = {}
    problems: list[str] = []
    # Each concern on its own, so an error names the whole variable (BATCH_MAX_SIZE): the
    # nested model would only report the field (max_size).
    for name, field in Settings.model_fields.items():
        group = field.annotation
        assert isinstance(group, type)
        assert issubclass(group, BaseSettings)
        try:
            groups[name] = group()
        except ValidationError as exc:
            prefix = str(group.model_config.get("env_prefix", ""))
            problems.extend(_problems(exc, prefix))
    if problems:
        raise ConfigError(f"invalid configuration: {'; '.join(problems)}")
    return Settings.model_validate(groups)


def _problems(exc: ValidationError, prefix: str) -> list[str]:
    """``VARIABLE: rule`` per error -- never the rejected value: it may be a secret."""
    return [
        f"{prefix}{'_'.join(str(part) for part in error['loc'])}".upper() + f": {error['msg']}"
        for error in exc.errors(include_input=False, include_url=False)
    ]
