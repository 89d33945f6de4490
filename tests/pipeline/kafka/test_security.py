"""One security setting, each client's spelling: the whole mapping, so neither client drifts."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from pipeline.kafka.security import confluent_security, kafka_python_security
from pipeline.settings import Settings


def test_sasl_ssl_is_spelt_for_each_client_and_unset_files_are_left_out() -> None:
    s = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password=SecretStr("pw"),
        kafka_ssl_cafile=Path("/ca.pem"),
    )
    assert kafka_python_security(s) == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "pw",
        "ssl_cafile": "/ca.pem",
        "ssl_check_hostname": True,
    }
    assert confluent_security(s) == {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": "pw",
        "ssl.ca.location": "/ca.pem",
        "ssl.endpoint.identification.algorithm": "https",
    }


def test_plaintext_needs_nothing_and_sasl_plaintext_no_tls_keys() -> None:
    assert kafka_python_security(Settings()) == confluent_security(Settings()) == {}
    s = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u")
    assert kafka_python_security(s) == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                                        "sasl_plain_username": "u"}  # fmt: skip
    assert set(confluent_security(s)) == {"security.protocol", "sasl.mechanism", "sasl.username"}
