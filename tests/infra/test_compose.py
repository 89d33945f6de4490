"""docker-compose.yml cannot run here (no Docker engine), so check that it agrees with the settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.settings import REPO_ROOT, Settings

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
OURS = [name for name, svc in SERVICES.items() if svc.get("image") == "sensorcast:latest"]
STANDARD_ENV = {"KAFKA_BOOTSTRAP_SERVERS", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"}


def _host_port(service: str, container_port: int) -> int:
    for mapping in SERVICES[service].get("ports", []):
        host, container = str(mapping).split(":")[-2:]
        if int(container) == container_port:
            return int(host)
    raise AssertionError(f"{service} publishes no port for {container_port}")


def test_every_service_has_an_image_or_a_build_that_exists() -> None:
    assert {"kafka", "postgres", "mlflow", "prefect-server", "prefect-worker", "forecaster", "producer"} <= set(
        SERVICES
    )
    for name, svc in SERVICES.items():
        assert svc.get("image") or svc.get("build"), name
        if "build" in svc:
            assert (REPO_ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file(), name
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:4.")


@pytest.mark.parametrize("service", OURS)
def test_our_services_env_names_real_settings(service: str) -> None:
    env = SERVICES[service].get("environment", {})
    fields = set(Settings.model_fields)
    for key in env:
        if key in STANDARD_ENV:
            continue
        if key.startswith("SENSORCAST_"):
            assert key.removeprefix("SENSORCAST_").lower() in fields, f"{service}: {key} is no setting"
    if service in {"forecaster", "forecaster-cpu", "producer", "prefect-worker", "prefect-deploy", "monitor"}:
        assert STANDARD_ENV <= set(env), f"{service} lacks one of {STANDARD_ENV}"


@pytest.mark.parametrize("service", ["forecaster", "producer", "prefect-worker", "prefect-deploy", "monitor"])
def test_addresses_point_at_compose_services(service: str) -> None:
    env = {k: str(v) for k, v in SERVICES[service]["environment"].items()}
    settings = Settings(**{k: v for k, v in env.items() if k in STANDARD_ENV})
    kafka_host, kafka_port = settings.bootstrap_servers.split(":")
    assert kafka_host in SERVICES and kafka_port in SERVICES["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    for url, target in [(settings.tracking_uri, "mlflow"), (settings.prefect_url, "prefect-server")]:
        assert f"//{target}:" in url


def test_published_ports_match_the_settings_defaults() -> None:
    defaults = Settings(_env_file=None)
    assert _host_port("kafka", 29092) == defaults.kafka_port
    assert "HOST://localhost:9092" in SERVICES["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert _host_port("mlflow", 5000) == defaults.mlflow_port
    assert _host_port("prefect-server", 4200) == defaults.prefect_port
    assert _host_port("forecaster", defaults.metrics_port) == defaults.metrics_port


def test_topics_and_model_match_the_settings_defaults() -> None:
    env = SERVICES["forecaster"]["environment"]
    defaults = Settings(_env_file=None)
    assert env["SENSORCAST_READINGS_TOPIC"] == defaults.readings_topic
    assert env["SENSORCAST_FORECASTS_TOPIC"] == defaults.forecasts_topic
    assert env["SENSORCAST_DLQ_TOPIC"] == defaults.dlq_topic
    assert env["SENSORCAST_MODEL_NAME"] == defaults.model_name


def test_forecaster_reserves_a_gpu_and_has_a_cpu_variant() -> None:
    devices = SERVICES["forecaster"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert SERVICES["forecaster-cpu"]["profiles"] == ["cpu"]
    assert SERVICES["forecaster"]["environment"]["SENSORCAST_DEVICE"] == "auto"


def test_mlflow_and_prefect_run_on_postgres() -> None:
    assert any("postgresql://" in arg for arg in SERVICES["mlflow"]["command"])
    assert SERVICES["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://"
    )
    init = Path(REPO_ROOT / "infra" / "postgres-init.sql").read_text()
    assert "CREATE DATABASE prefect" in init


def test_the_worker_runs_the_pool_the_deploy_step_registers_the_retrain_on() -> None:
    deploy, worker = SERVICES["prefect-deploy"]["command"], SERVICES["prefect-worker"]["command"]
    assert deploy[:3] == ["sensorcast", "flows", "deploy"] and worker[:3] == ["prefect", "worker", "start"]
    pool = deploy[deploy.index("--pool") + 1]
    assert worker[worker.index("--pool") + 1] == pool and worker[worker.index("--type") + 1] == "process"
    assert deploy[deploy.index("--source") + 1] == "/app"  # where infra/Dockerfile puts the code
    assert "WORKDIR /app" in (REPO_ROOT / "infra/Dockerfile").read_text()
    assert SERVICES["prefect-worker"]["depends_on"]["prefect-deploy"]["condition"] == "service_completed_successfully"
    assert SERVICES["monitor"]["command"] == ["sensorcast", "monitor"]
