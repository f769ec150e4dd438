"""Security settings reach every client unchanged, and secrets never print.

Kafka: ``KAFKA_*`` security settings -> Faust credentials -> the keyword arguments aiokafka
receives (through Faust's own translation function), and -> librdkafka settings for the
replay producer and the admin client. Redis: ``REDIS_*`` -> the redis-py connection.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings
from redis.asyncio.connection import SSLConnection

from stream_app.core.config import (
    BatchSettings,
    KafkaSettings,
    PrivacySettings,
    RedisSettings,
    WindowSettings,
    load_settings,
)
from stream_app.core.errors import ConfigError
from stream_app.core.security import faust_credentials, kafka_ssl_context
from stream_app.core.topics import security_config
from stream_app.ingest.privacy import Pseudonymizer
from stream_app.local.embedded import TlsFiles, generate_test_certificates
from stream_app.replay.producer import kafka_client_config, producer_config
from stream_app.sessions.store import redis_client

KAFKA_SECRET = "kafka-pa55-#@!"
REDIS_SECRET = "redis-pa55-#@!"
PRIVACY_SECRET = "privacy-key-0123456789"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return generate_test_certificates(tmp_path_factory.mktemp("tls"))


def _kafka(protocol: str, tls: TlsFiles | None = None, **extra: object) -> KafkaSettings:
    files = {}
    if tls is not None:
        files = {"ssl_cafile": tls.ca, "ssl_certfile": tls.cert, "ssl_keyfile": tls.key}
    return KafkaSettings(
        bootstrap_servers="broker-1:9093,broker-2:9093",
        security_protocol=protocol,
        sasl_username="svc-intent",
        sasl_password=SecretStr(KAFKA_SECRET),
        **files,  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- Faust / aiokafka


def test_plaintext_needs_no_credentials() -> None:
    settings = _kafka("PLAINTEXT")
    assert faust_credentials(settings) is None
    assert credentials_to_aiokafka_auth(faust_credentials(settings)) == {
        "security_protocol": "PLAINTEXT"
    }


def test_ssl_gives_aiokafka_a_verifying_context_with_our_ca_and_client_cert(tls: TlsFiles) -> None:
    auth = credentials_to_aiokafka_auth(faust_credentials(_kafka("SSL", tls)))
    assert auth["security_protocol"] == "SSL"
    context: ssl.SSLContext = auth["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    subjects = [str(ca["subject"]) for ca in context.get_ca_certs()]
    assert any("intent-stream-test-ca" in subject for subject in subjects)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_passes_mechanism_and_credentials(mechanism: str) -> None:
    settings = _kafka("SASL_PLAINTEXT", sasl_mechanism=mechanism)
    auth = credentials_to_aiokafka_auth(faust_credentials(settings))
    assert auth == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "svc-intent",
        "sasl_plain_password": KAFKA_SECRET,
        "ssl_context": None,
    }


def test_sasl_ssl_combines_scram_with_tls(tls: TlsFiles) -> None:
    settings = _kafka("SASL_SSL", tls, sasl_mechanism="SCRAM-SHA-512")
    auth = credentials_to_aiokafka_auth(faust_credentials(settings))
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_password"] == KAFKA_SECRET
    assert isinstance(auth["ssl_context"], ssl.SSLContext)


def test_no_tls_context_for_plaintext_protocols(tls: TlsFiles) -> None:
    assert kafka_ssl_context(_kafka("SASL_PLAINTEXT", tls)) is None
    assert kafka_ssl_context(_kafka("PLAINTEXT", tls)) is None


def test_a_missing_ca_file_fails_at_start_not_at_first_connect(tmp_path: Path) -> None:
    settings = _kafka("SSL", ssl_cafile=tmp_path / "missing-ca.pem")
    with pytest.raises(FileNotFoundError):
        kafka_ssl_context(settings)


def test_faust_credentials_do_not_print_the_password() -> None:
    credentials = faust_credentials(_kafka("SASL_PLAINTEXT"))
    assert KAFKA_SECRET not in repr(credentials)
    assert KAFKA_SECRET not in str(credentials)


# --------------------------------------------------------------------------- librdkafka


def test_librdkafka_config_for_sasl_ssl(tls: TlsFiles) -> None:
    config = security_config(_kafka("SASL_SSL", tls, sasl_mechanism="SCRAM-SHA-256"))
    assert config == {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "svc-intent",
        "sasl.password": KAFKA_SECRET,
        "ssl.ca.location": str(tls.ca),
        "ssl.certificate.location": str(tls.cert),
        "ssl.key.location": str(tls.key),
    }


def test_librdkafka_config_for_plaintext_has_no_secrets() -> None:
    assert security_config(_kafka("PLAINTEXT")) == {"security.protocol": "plaintext"}


def test_replay_producer_carries_the_security_settings(tls: TlsFiles) -> None:
    settings = _kafka("SASL_SSL", tls, sasl_mechanism="SCRAM-SHA-512")
    client = kafka_client_config(settings)
    assert client["bootstrap.servers"] == "broker-1:9093,broker-2:9093"
    assert client["sasl.password"] == KAFKA_SECRET
    config = producer_config(settings)
    assert config["security.protocol"] == "sasl_ssl"
    assert config["ssl.ca.location"] == str(tls.ca)


def test_librdkafka_accepts_the_generated_config(tls: TlsFiles) -> None:
    # librdkafka validates names and values when the client is built (no connection needed).
    for protocol in ("SSL", "SASL_SSL", "SASL_PLAINTEXT"):
        settings = _kafka(protocol, tls, sasl_mechanism="SCRAM-SHA-256")
        Producer({**producer_config(settings), "bootstrap.servers": "127.0.0.1:9"}).flush(0)


# --------------------------------------------------------------------------- Redis


def test_redis_tls_and_acl_settings_reach_the_connection(tls: TlsFiles) -> None:
    settings = RedisSettings(
        url="rediss://redis.internal:6380/2",
        username="intent-worker",
        password=SecretStr(REDIS_SECRET),
        ssl_ca_certs=tls.ca,
        ssl_certfile=tls.cert,
        ssl_keyfile=tls.key,
    )
    pool = redis_client(settings).connection_pool
    kwargs = pool.connection_kwargs
    assert pool.connection_class is SSLConnection
    assert kwargs["username"] == "intent-worker"
    assert kwargs["password"] == REDIS_SECRET
    assert kwargs["ssl_ca_certs"] == str(tls.ca)
    assert kwargs["ssl_certfile"] == str(tls.cert)
    assert kwargs["db"] == 2
    assert REDIS_SECRET not in repr(pool)


def test_plain_redis_url_ignores_tls_files(tls: TlsFiles) -> None:
    settings = RedisSettings(url="redis://127.0.0.1:6379/0", ssl_ca_certs=tls.ca)
    pool = redis_client(settings).connection_pool
    assert pool.connection_class is not SSLConnection
    assert "ssl_ca_certs" not in pool.connection_kwargs


# --------------------------------------------------------------------------- secrets


def test_secrets_from_the_environment_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", KAFKA_SECRET)
    monkeypatch.setenv("REDIS_PASSWORD", REDIS_SECRET)
    monkeypatch.setenv("PRIVACY_PSEUDONYMIZE_KEY", PRIVACY_SECRET)
    settings = load_settings()
    assert settings.kafka.sasl_password.get_secret_value() == KAFKA_SECRET
    assert settings.redis.password.get_secret_value() == REDIS_SECRET
    assert settings.privacy.pseudonymize_key.get_secret_value() == PRIVACY_SECRET
    shown = [repr(settings), str(settings), settings.model_dump_json(), repr(settings.model_dump())]
    for text in shown:
        for secret in (KAFKA_SECRET, REDIS_SECRET, PRIVACY_SECRET):
            assert secret not in text


def test_a_bad_setting_error_does_not_echo_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", REDIS_SECRET)
    monkeypatch.setenv("PRIVACY_PSEUDONYMIZE_KEY", "tiny-secret")  # < 16 chars: invalid
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "tiny-secret" not in str(caught.value)
    assert REDIS_SECRET not in str(caught.value)


def test_pseudonymizer_hides_its_key_and_is_keyed() -> None:
    one, other = Pseudonymizer(PRIVACY_SECRET), Pseudonymizer(PRIVACY_SECRET[::-1])
    assert PRIVACY_SECRET not in repr(one)
    assert one.pseudonym("session-1") == one.pseudonym("session-1")
    assert one.pseudonym("session-1") != other.pseudonym("session-1")
    assert "session-1" not in one.pseudonym("session-1")


def test_privacy_key_must_be_long_enough() -> None:
    with pytest.raises(ValidationError):
        PrivacySettings(pseudonymize_key=SecretStr("too-short"))


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize(
    ("settings_class", "field", "too_big"),
    [
        (KafkaSettings, "max_message_bytes", 16 * 1024 * 1024 + 1),
        (WindowSettings, "max_events", 1001),
        (WindowSettings, "max_seen_ids", 1_000_001),
        (BatchSettings, "max_size", 4097),
        (BatchSettings, "max_score_batch", 4097),
        (RedisSettings, "key_prefix", "k" * 33),
    ],
)
def test_every_size_setting_has_an_upper_bound(
    settings_class: type[BaseSettings], field: str, too_big: object
) -> None:
    values: dict[str, Any] = {field: too_big}
    with pytest.raises(ValidationError):
        settings_class(**values)


def test_queue_depth_is_bounded_by_a_positive_setting() -> None:
    with pytest.raises(ValidationError):
        BatchSettings(max_pending_sessions=0)
    assert BatchSettings().max_pending_sessions == 20_000
