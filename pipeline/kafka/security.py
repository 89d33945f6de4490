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

# one setting, two spellings: kafka-python's keyword arguments and librdkafka's dotted keys
KAFKA_PYTHON = {
    "protocol": "security_protocol",
    "mechanism": "sasl_mechanism",
    "username": "sasl_plain_username",
    "password": "sasl_plain_password",
    "cafile": "ssl_cafile",
    "certfile": "ssl_certfile",
    "keyfile": "ssl_keyfile",
    "check_host": "ssl_check_hostname",
}
CONFLUENT = {
    "protocol": "security.protocol",
    "mechanism": "sasl.mechanism",
    "username": "sasl.username",
    "password": "sasl.password",
    "cafile": "ssl.ca.location",
    "certfile": "ssl.certificate.location",
    "keyfile": "ssl.key.location",
    "check_host": "ssl.endpoint.identification.algorithm",
}


def kafka_python_security(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for KafkaProducer/KafkaConsumer/KafkaAdminClient (nothing for PLAINTEXT)."""
    return _spelt(settings, KAFKA_PYTHON, settings.kafka_security_protocol, check_host=True)


def confluent_security(settings: Settings) -> dict[str, Any]:
    """librdkafka configuration keys (nothing for PLAINTEXT)."""
    return _spelt(settings, CONFLUENT, settings.kafka_security_protocol.lower(), check_host="https")


def _spelt(settings: Settings, names: dict[str, str], protocol: str, check_host: object) -> dict[str, Any]:
    """The settings' security in one client's spelling; unset values are left out."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return {}
    values: dict[str, Any] = {"protocol": protocol}
    if settings.kafka_security_protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        values |= {
            "mechanism": settings.kafka_sasl_mechanism or "PLAIN",
            "username": settings.kafka_sasl_username,
            "password": password.get_secret_value() if password else None,
        }
    if settings.kafka_security_protocol.endswith("SSL"):
        values |= {
            "cafile": _path(settings.kafka_ssl_cafile),
            "certfile": _path(settings.kafka_ssl_certfile),
            "keyfile": _path(settings.kafka_ssl_keyfile),
            "check_host": check_host,
        }
    return {names[k]: v for k, v in values.items() if v is not None}


def _path(p) -> str | None:
    return str(p) if p else None
