"""Shared fixtures: real services for integration tests.

Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` if set; else testcontainers' KafkaContainer when a Docker engine
answers; else the project's own broker from the jars, on free ports in a temporary state folder.
MLflow: a temporary SQLite tracking store.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from models.data import shared_data_dir
from pipeline import stack
from pipeline.settings import Settings

SHARED_DATA = shared_data_dir()


def docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def local_settings(state_dir: Path) -> Settings:
    """Settings for a private local stack on free ports, so tests never touch a user's stack."""
    kafka, controller, mlflow, prefect = stack.free_ports(4)
    return Settings.load(
        state_dir=state_dir,
        kafka_port=kafka,
        kafka_controller_port=controller,
        mlflow_port=mlflow,
        prefect_port=prefect,
        kafka_bootstrap_servers="",
    )


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    if docker_available():
        # testcontainers' KafkaContainer drives Confluent's images; cp-kafka 8.0 is Apache Kafka 4.0
        # in KRaft mode. (No Docker engine on the development machines: this branch is unexercised there.)
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:
            from testcontainers.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:8.0.0").with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    settings = local_settings(tmp_path_factory.mktemp("stack"))
    stack.up(settings, ["kafka"], log=lambda _m: None)
    try:
        yield settings.bootstrap_servers
    finally:
        stack.down(settings, ["kafka"], log=lambda _m: None)


@pytest.fixture
def kafka_settings(kafka_bootstrap: str) -> Settings:
    """Settings on the test broker with topic and group names unique to this test."""
    tag = uuid.uuid4().hex[:8]
    return Settings.load(
        kafka_bootstrap_servers=kafka_bootstrap,
        readings_topic=f"readings-{tag}",
        forecasts_topic=f"forecasts-{tag}",
        dlq_topic=f"dlq-{tag}",
        models_topic=f"models-{tag}",
        consumer_group=f"group-{tag}",
    )


@pytest.fixture
def mlflow_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A temporary SQLite tracking store with a local artifact folder."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "ETTh1.csv").exists():
        pytest.fail(f"real benchmark data not found at {SHARED_DATA}; set SENSORCAST_SHARED_DATA")
    return SHARED_DATA
