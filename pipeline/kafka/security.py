"""The settings' Kafka security, spelt for each client: one place maps protocol, SASL and TLS onto
kafka-python's keyword arguments and librdkafka's dotted keys, so every producer, consumer and admin
the project makes reaches a secured cluster the same way.

>>> from pydantic import SecretStr
>>> s = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
...              kafka_sasl_username="svc", kafka_sasl_password=SecretStr("pw"))
>>> kafka_python_security(s)["sasl_plain_username"], confluent_security(s)["sasl.mechanism"]
('svc', 'SCRAM-SHA-512')
>>> kafka_python_security(Settings())
{}
"""

from __future__ import annotations

from typing import Any

from pipeline.settings import Settings


def _password(settings: Settings) -> str | None:
    return settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None


def kafka_python_security(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for KafkaProducer/KafkaConsumer/KafkaAdminClient (nothing for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    out: dict[str, Any] = {"security_protocol": protocol}
    if protocol.startswith("SASL_"):
        out |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism or "PLAIN",
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": _password(settings),
        }
    if protocol.endswith("SSL"):
        out |= {
            "ssl_cafile": _path(settings.kafka_ssl_cafile),
            "ssl_certfile": _path(settings.kafka_ssl_certfile),
            "ssl_keyfile": _path(settings.kafka_ssl_keyfile),
            "ssl_check_hostname": True,
        }
    return {k: v for k, v in out.items() if v is not None}


def confluent_security(settings: Settings) -> dict[str, Any]:
    """librdkafka configuration keys (nothing for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    out: dict[str, Any] = {"security.protocol": protocol.lower()}
    if protocol.startswith("SASL_"):
        out |= {
            "sasl.mechanism": settings.kafka_sasl_mechanism or "PLAIN",
            "sasl.username": settings.kafka_sasl_username,
            "sasl.password": _password(settings),
        }
    if protocol.endswith("SSL"):
        out |= {
            "ssl.ca.location": _path(settings.kafka_ssl_cafile),
            "ssl.certificate.location": _path(settings.kafka_ssl_certfile),
            "ssl.key.location": _path(settings.kafka_ssl_keyfile),
            "ssl.endpoint.identification.algorithm": "https",
        }
    return {k: v for k, v in out.items() if v is not None}


def _path(p) -> str | None:
    return str(p) if p else None
