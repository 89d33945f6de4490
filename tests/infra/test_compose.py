"""docker-compose.yml cannot run here (no Docker engine), so check that it agrees with the settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.kafka.roles import ROLES, username
from pipeline.settings import REPO_ROOT, Settings
from pipeline.tools.deploy import ADMIN_USER, COMPOSE_BROKERS, password_variable, write_broker_config
from pipeline.tools.principals import MLFLOW_RIGHTS

TEXT = (REPO_ROOT / "docker-compose.yml").read_text()
RAW = yaml.safe_load(TEXT)["services"]  # before compose substitutes anything
# as compose reads it with .env's values: ${VAR:-default} with VAR unset, ${VAR:?why} set to a value
SET = "value-from-dotenv"
COMPOSE = yaml.safe_load(re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", SET, re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", TEXT)))
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
    advertised = [a for b in COMPOSE_BROKERS if b.name == "kafka" for _, a in b.listeners.values()]
    assert settings.bootstrap_servers in advertised and settings.bootstrap_servers.split(":")[0] in SERVICES
    for url, target in [(settings.tracking_uri, "mlflow"), (settings.prefect_url, "prefect-server")]:
        assert f"//{target}:" in url


def test_published_ports_match_the_settings_defaults() -> None:
    defaults = Settings(_env_file=None)
    assert _host_port("kafka", 29092) == defaults.kafka_port
    kafka = next(b for b in COMPOSE_BROKERS if b.name == "kafka")
    assert kafka.listeners["HOST"] == (":29092", f"localhost:{defaults.kafka_port}")
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


def test_the_gpu_forecaster_is_a_profile_and_shares_the_cpu_ones_group() -> None:
    gpu, cpu = SERVICES["forecaster-gpu"], SERVICES["forecaster"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"] and gpu["profiles"] == ["gpu"]
    assert "deploy" not in cpu and "profiles" not in cpu  # a plain `docker compose up` needs no GPU
    for svc in (gpu, cpu):  # a real consumer group: run together, they share the partitions
        assert svc["environment"]["SENSORCAST_KAFKA_CLIENT"] == "confluent"
        assert svc["environment"]["SENSORCAST_METRICS_HOST"] == "0.0.0.0"


def test_mlflow_and_prefect_run_on_postgres() -> None:
    assert SERVICES["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
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


def test_one_kafka_version_across_the_jars_compose_and_testcontainers() -> None:
    import re

    from tests.fixtures.kafka import KAFKA_IMAGE

    pom = (REPO_ROOT / "infra" / "kafka" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom).group(1)
    images = {svc["image"] for svc in SERVICES.values() if str(svc.get("image", "")).startswith("apache/kafka:")}
    assert images == {f"apache/kafka:{version}"} and KAFKA_IMAGE == f"apache/kafka:{version}"


def test_every_long_running_service_has_a_healthcheck_and_plain_up_needs_no_gpu() -> None:
    for name, svc in SERVICES.items():
        if svc.get("restart") != "no":
            assert "healthcheck" in svc, f"{name} has no healthcheck"
    for name, svc in SERVICES.items():
        if "nvidia" in str(svc.get("deploy", "")):
            assert "gpu" in svc.get("profiles", []), f"{name} reserves a GPU outside the gpu profile"


def test_the_cluster_profile_is_three_voters_with_replication_three(tmp_path: Path) -> None:
    nodes = {f"kafka-{i}": SERVICES[f"kafka-{i}"] for i in (1, 2, 3)}
    assert all(n["profiles"] == ["cluster"] for n in nodes.values())
    assert {n["environment"]["SENSORCAST_KAFKA_NODE"] for n in nodes.values()} == set(nodes)
    write_broker_config(tmp_path, tmp_path / "ca", "a" * 16, "c" * 16, owner=None)
    for name in nodes:
        props = dict(
            line.split("=", 1) for line in (tmp_path / f"{name}.properties").read_text().splitlines() if "=" in line
        )
        assert props["controller.quorum.voters"].count("@kafka-") == 3 and props["node.id"] == name[-1]
        assert int(props["min.insync.replicas"]) == 2 and int(props["default.replication.factor"]) == 3
        assert len({v.split(":")[0] for v in nodes[name]["volumes"] if v.endswith("/var/lib/kafka/data")}) == 1
    assert (
        len({v for n in nodes.values() for v in n["volumes"] if v.endswith("/var/lib/kafka/data")}) == 3
    )  # its own data


# each app's Kafka and MLflow login: its own principal (pipeline/kafka/roles.py, MLFLOW_RIGHTS), none the admin
APP_LOGINS = {
    "forecaster": ("service", "service"),
    "forecaster-gpu": ("service", "service"),
    "producer": ("producer", None),
    "monitor": ("monitor", "monitor"),
    "prefect-worker": ("retrain", "retrain"),
}


@pytest.mark.parametrize("service", list(APP_LOGINS))
def test_every_app_logs_in_as_its_own_principal_on_kafka_and_mlflow(service: str) -> None:
    kafka_role, mlflow_role = APP_LOGINS[service]
    env = SERVICES[service]["environment"]
    assert (
        env["SENSORCAST_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        and env["SENSORCAST_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    )
    assert (
        env["SENSORCAST_KAFKA_SASL_USERNAME"] == username(kafka_role) and env["SENSORCAST_KAFKA_SASL_PASSWORD"] == SET
    )
    assert env["SENSORCAST_KAFKA_SSL_CAFILE"] == "/etc/sensorcast/ca/ca.pem"
    assert "kafka-ca:/etc/sensorcast/ca:ro" in SERVICES[service]["volumes"]
    if mlflow_role is None:
        assert "MLFLOW_TRACKING_USERNAME" not in env and "MLFLOW_TRACKING_PASSWORD" not in env
    else:
        assert env["MLFLOW_TRACKING_USERNAME"] == username(mlflow_role) and env["MLFLOW_TRACKING_PASSWORD"] == SET
    assert SERVICES[service]["depends_on"]["kafka-grant"] == {"condition": "service_completed_successfully"}


def test_each_login_reads_its_own_password_variable_and_the_grant_steps_set_every_one() -> None:
    for service, (kafka_role, mlflow_role) in APP_LOGINS.items():
        merged = {k: str(v) for k, v in RAW[service]["environment"].items()}  # before substitution
        assert password_variable("kafka", kafka_role) in merged["SENSORCAST_KAFKA_SASL_PASSWORD"], service
        if mlflow_role:
            assert password_variable("mlflow", mlflow_role) in merged["MLFLOW_TRACKING_PASSWORD"], service
    grant = SERVICES["kafka-grant"]
    assert grant["command"] == ["sensorcast", "deploy", "grant", "kafka"]
    assert {password_variable("kafka", r) for r in ROLES} <= set(grant["environment"])
    assert grant["environment"]["SENSORCAST_KAFKA_SASL_USERNAME"] == ADMIN_USER
    assert "${KAFKA_ADMIN_PASSWORD:?" in RAW["kafka-grant"]["environment"]["SENSORCAST_KAFKA_SASL_PASSWORD"]
    mlflow = SERVICES["mlflow-grant"]
    assert {password_variable("mlflow", r) for r in MLFLOW_RIGHTS} <= set(mlflow["environment"])


def test_every_broker_runs_the_secured_config_that_kafka_config_writes() -> None:
    config = SERVICES["kafka-config"]
    assert config["command"][:3] == ["sensorcast", "deploy", "kafka-config"] and config["restart"] == "no"
    assert config["depends_on"]["secrets-check"] == {"condition": "service_completed_successfully"}
    out = config["command"][config["command"].index("--out") + 1]
    for name in ("kafka", "kafka-1", "kafka-2", "kafka-3"):
        broker = SERVICES[name]
        assert broker["command"] == ["bash", "/opt/sensorcast/start-secure.sh"]
        assert f"kafka-config:{out}" in broker["volumes"]
        assert "./infra/kafka/start-secure.sh:/opt/sensorcast/start-secure.sh:ro" in broker["volumes"]
        assert broker["depends_on"]["kafka-config"] == {"condition": "service_completed_successfully"}
        assert f"--command-config {out}/admin.properties" in broker["healthcheck"]["test"][1]
        assert not any(k.startswith("KAFKA_") for k in broker["environment"])  # no image-made PLAINTEXT config
    apps = [n for n, svc in SERVICES.items() if f"kafka-config:{out}" in svc.get("volumes", [])]
    assert sorted(apps) == ["kafka", "kafka-1", "kafka-2", "kafka-3", "kafka-config"]  # no app sees the admin's files


def test_every_dashboard_query_names_a_metric_the_service_or_the_monitor_exports() -> None:
    import json
    import re

    from prometheus_client import CollectorRegistry, generate_latest

    from flows.calibration import CoverageGauges
    from flows.coverage import CoverageTracker
    from flows.monitor_outputs import mae_ratio_gauge
    from pipeline.core import BatchStats
    from pipeline.metrics import ServiceMetrics
    from pipeline.records import Record

    service = ServiceMetrics()
    service.set_model("m", "1")
    service.set_lag({0: 1})
    service.on_batch(BatchStats(readings=1, batch_rows=1, dead={"not_json": 1}), [Record(b"", timestamp_ms=1)], 1.0)
    monitor = CollectorRegistry()
    mae_ratio_gauge(monitor).labels(entity="a", channel="t", model="model").set(1.0)
    coverage = CoverageTracker(["t"], ["0.9"], horizon=1)
    coverage.observe(0, "t", 1.0, (0.0, 2.0))
    CoverageGauges(monitor).export(coverage)
    text = generate_latest(service.registry).decode() + generate_latest(monitor).decode()
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}

    board = json.loads((REPO_ROOT / "infra" / "grafana" / "dashboards" / "sensorcast.json").read_text())
    queries = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    named = {m for q in queries for m in re.findall(r"\bsensorcast_[a-z0-9_]+", q)}
    assert len(queries) >= 10 and named, queries
    assert named <= exported, f"the dashboard queries metrics nobody exports: {sorted(named - exported)}"
    scraped = (REPO_ROOT / "infra" / "prometheus.yml").read_text()
    assert "forecaster:9308" in scraped and "monitor:9309" in scraped


def test_every_published_port_binds_loopback_unless_one_variable_opens_them() -> None:
    published = [(name, str(p)) for name, svc in SERVICES.items() for p in svc.get("ports", [])]
    assert len(published) >= 8
    for name, mapping in published:
        assert mapping.startswith("127.0.0.1:") and mapping.count(":") == 2, f"{name} publishes {mapping}"
    for name, svc in RAW.items():
        for mapping in svc.get("ports", []):
            assert str(mapping).startswith("${SENSORCAST_PUBLISH_HOST:-127.0.0.1}:"), f"{name}: {mapping}"


SECRET_KEYS = re.compile(r"(PASSWORD|SECRET|AUTH_STRING|SECRET_KEY)")


def test_no_secret_literal_remains_every_one_comes_from_dotenv() -> None:
    for name, svc in RAW.items():
        env = svc.get("environment", {})
        for key, value in env.items() if isinstance(env, dict) else []:
            if SECRET_KEYS.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"{name}: {key} is not from .env"
            for user_pw in re.findall(r"://[^:/@]+:([^@]+)@", str(value)):  # a password inside a URL
                assert user_pw.startswith("${POSTGRES_PASSWORD:?"), f"{name}: {key} holds a password"
        assert not any(re.search(r"://[^:/@]+:[^@]+@", str(arg)) for arg in svc.get("command", []) or []), name
    for literal in ("sensorcast:sensorcast", "password1234", "admin:admin", "admin:pass"):
        assert literal not in TEXT, literal


def test_dotenv_example_names_every_secret_compose_requires_and_dotenv_is_never_committed() -> None:
    required = set(re.findall(r"\$\{([A-Z_]+):\?", TEXT))
    example = dict(
        line.split("=", 1)
        for line in (REPO_ROOT / ".env.example").read_text().splitlines()
        if "=" in line[:40] and not line.startswith("#")
    )
    assert required and required <= set(example), sorted(required - set(example))
    assert all(
        v.startswith(("change-me", "admin:change-me"))
        for k, v in example.items()
        if k in required - {"MLFLOW_ADMIN_USER"}
    )
    assert ".env" in (REPO_ROOT / ".gitignore").read_text().splitlines()


def test_mlflow_and_prefect_require_logins_and_every_app_sends_them() -> None:
    assert "--app-name=basic-auth" in SERVICES["mlflow"]["command"]
    mlflow_env = SERVICES["mlflow"]["environment"]
    assert mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD"] == SET and mlflow_env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == SET
    auth_ini = (REPO_ROOT / "infra" / "mlflow-auth.ini").read_text()
    assert (
        "admin_password" not in auth_ini
        and "./infra/mlflow-auth.ini:/etc/mlflow/auth.ini:ro" in RAW["mlflow"]["volumes"]
    )
    assert SERVICES["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"] == SET
    for name in ("forecaster", "producer", "prefect-worker", "prefect-deploy", "monitor"):
        assert SERVICES[name]["environment"]["PREFECT_API_AUTH_STRING"] == SET, name
    grafana = SERVICES["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == SET and grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def test_nothing_that_holds_a_password_starts_before_the_secrets_pass_their_check() -> None:
    """`sensorcast secrets check --from-env` refuses placeholders and short passwords (tests/pipeline/
    tools/test_passwords.py); compose runs it first, with every secret it requires."""
    required = set(re.findall(r"\$\{([A-Z_]+):\?", TEXT)) - {"MLFLOW_ADMIN_USER"}
    check = SERVICES["secrets-check"]
    assert check["command"] == ["sensorcast", "secrets", "check", "--from-env"] and check["restart"] == "no"
    assert set(check["environment"]) == required
    for name in ("postgres", "grafana", "kafka-config"):  # mlflow and prefect wait on postgres, the apps on them
        assert SERVICES[name]["depends_on"]["secrets-check"] == {"condition": "service_completed_successfully"}
    for name in ("mlflow", "prefect-server"):
        assert "postgres" in SERVICES[name]["depends_on"], name


def test_mlflow_keeps_its_password_hashes_outside_the_artifacts_it_serves() -> None:
    import configparser

    ini = configparser.ConfigParser()
    ini.read(REPO_ROOT / "infra" / "mlflow-auth.ini")
    users_db = ini["mlflow"]["database_uri"].removeprefix("sqlite:///")
    served = next(a.split("=", 1)[1] for a in SERVICES["mlflow"]["command"] if a.startswith("--artifacts-destination"))
    assert not users_db.startswith(served.rstrip("/") + "/"), (users_db, served)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in RAW["mlflow"]["volumes"]}
    assert mounts[str(Path(users_db).parent)] in COMPOSE["volumes"]  # a named volume of its own: it survives
