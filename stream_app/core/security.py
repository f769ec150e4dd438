"""Kafka TLS/SASL settings turned into what Faust (aiokafka) expects."""

from __future__ import annotations

import ssl

import faust

from stream_app.core.config import KafkaSettings


def kafka_ssl_context(settings: KafkaSettings) -> ssl.SSLContext | None:
    """A verifying client TLS context, or None for plaintext protocols."""
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    cafile = str(settings.ssl_cafile) if settings.ssl_cafile else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if settings.ssl_certfile:
        keyfile = str(settings.ssl_keyfile) if settings.ssl_keyfile else None
        context.load_cert_chain(str(settings.ssl_certfile), keyfile)
    return context


def faust_credentials(settings: KafkaSettings) -> faust.types.auth.CredentialsT | None:
    """Faust ``broker_credentials`` for the configured security protocol."""
    context = kafka_ssl_context(settings)
    if settings.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value(),
            mechanism=settings.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None
