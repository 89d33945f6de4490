"""Logins on the real servers: the local MLflow server with its basic-auth app
(SENSORCAST_MLFLOW_AUTH) and the local Prefect server with an API auth string. With the login in the
environment, a retrain (a Prefect flow run that registers in MLflow), the service (it loads
@champion) and the monitor (it reads the champion's yardstick) work; without it, each is refused."""

from __future__ import annotations

import math
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.kafka import ensure_topics
from pipeline.messages import encode_reading
from pipeline.settings import Settings
from pipeline.tools import stack
from pipeline.tools.child import ServeProcess
from pipeline.tools.stack import private_settings
from tests.fixtures.kafka import Collector

pytestmark = pytest.mark.integration

MLFLOW_PASSWORD = secrets.token_urlsafe(12)
PREFECT_AUTH = f"admin:{secrets.token_urlsafe(12)}"
LOGIN = {
    "MLFLOW_TRACKING_USERNAME": "admin",
    "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD,
    "PREFECT_API_AUTH_STRING": PREFECT_AUTH,
}


@pytest.fixture(scope="module")
def auth_settings(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[Settings]:
    """MLflow and Prefect of their own, with logins; the session's broker (Kafka's logins: test_secure)."""
    base = private_settings(tmp_path_factory.mktemp("auth-stack"))
    settings = base.model_copy(
        update={
            "mlflow_auth": True, "lookback": 8, "horizon": 4, "model_name": "auth-test",
            "kafka_bootstrap_servers": kafka_bootstrap,
            **{t: f"auth-{t}" for t in ("readings_topic", "forecasts_topic", "dlq_topic", "models_topic",
                                         "calibration_topic", "consumer_group")},
        }
    )  # fmt: skip
    servers = {**LOGIN, "PREFECT_SERVER_API_AUTH_STRING": PREFECT_AUTH}
    saved = {k: os.environ.get(k) for k in servers}
    os.environ.update(servers)  # the servers read their logins from the environment they start in
    try:
        stack.up(settings, ["mlflow", "prefect"], log=lambda _m: None)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    try:
        yield settings.model_copy(update={"metrics_port": stack.free_ports(1)[0]})
    finally:
        stack.down(settings, ["mlflow", "prefect"], log=lambda _m: None)


def readings(steps: range) -> list[tuple[bytes, bytes]]:
    out = []
    for s in steps:
        for e in ("north", "south"):
            temp = 15 + 8 * math.sin(2 * math.pi * (s + (3 if e == "south" else 0)) / 24)
            out.append((e.encode(), encode_reading(e, s * 3_600_000, {"temp": temp, "rh": 50 + s % 7})))
    return out


def run(*jobs: tuple[str, dict[str, str]]) -> list[subprocess.CompletedProcess]:
    """Each (code, env) in a Python process of its own, side by side (they are independent)."""
    pipe = subprocess.PIPE
    procs = [subprocess.Popen([sys.executable, "-c", c], env=e, stdout=pipe, stderr=pipe, text=True) for c, e in jobs]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def test_with_the_login_a_retrain_the_service_and_the_monitor_work_and_without_it_each_is_refused(
    auth_settings: Settings, produce, tmp_path: Path
) -> None:
    settings = auth_settings
    ensure_topics(settings)
    produce(settings, readings(range(120)))
    base = {k: v for k, v in os.environ.items() if k not in LOGIN}
    env = {**base, **settings.as_env(), "PREFECT_API_URL": settings.prefect_url}
    retrain = "from flows.retrain import retrain; r = retrain(epochs=1); print('VERSION', r['version'])"
    monitor = "from flows.monitor_outputs import champion_reference; from pipeline.settings import Settings; " + (
        "print('YARDSTICK', champion_reference(Settings.load()))"
    )

    # no login: Prefect refuses the flow run before anything trains; Prefect's login only: MLflow refuses
    refused, no_mlflow = run((retrain, env), (retrain, {**env, "PREFECT_API_AUTH_STRING": PREFECT_AUTH}))
    assert refused.returncode != 0 and "401" in refused.stderr, refused.stderr[-2000:]
    assert no_mlflow.returncode != 0 and "401" in no_mlflow.stderr, no_mlflow.stderr[-2000:]

    (done,) = run((retrain, {**env, **LOGIN}))
    assert done.returncode == 0 and "VERSION 1" in done.stdout, done.stderr[-3000:]
    yardstick, blind = run((monitor, {**env, **LOGIN}), (monitor, env))  # the monitor, with and without
    assert yardstick.returncode == 0 and "YARDSTICK ('1'," in yardstick.stdout, yardstick.stderr[-2000:]
    assert blind.returncode != 0 and "401" in blind.stderr, blind.stderr[-2000:]

    forecasts = Collector(settings, settings.forecasts_topic)
    service = ServeProcess(settings.default_model_uri, {**settings.as_env(), **LOGIN}, tmp_path / "serve.log")
    try:
        service.start().wait_ready(120)
        produce(settings, readings(range(120, 130)))
        assert forecasts.wait_for(2 * 10, timeout_s=60)
    finally:
        assert service.stop() == 0, service.output()[-3000:]
        forecasts.close()
    assert {d["model"]["version"] for d in forecasts.docs} == {"1"}

    locked_out = ServeProcess(settings.default_model_uri, settings.as_env(), tmp_path / "serve-no-login.log").start()
    try:
        code = locked_out.proc.wait(120)
    finally:
        locked_out.stop()
    assert code != 0 and "401" in locked_out.output(), locked_out.output()[-3000:]


def test_each_app_has_its_own_mlflow_user_and_only_the_retrain_may_move_champion(
    auth_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipeline.tools.principals import grant_mlflow_users, mlflow_login

    settings = auth_settings.model_copy(update={"model_name": "auth-least-privilege"})
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(k, LOGIN[k])  # the admin makes the users
    files = grant_mlflow_users(settings)
    assert set(files) == {"service", "monitor", "retrain"}  # the producer has no MLflow login at all
    assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in files.values())
    client = MlflowClient(settings.tracking_uri)

    def as_role(role: str) -> None:
        for k, v in mlflow_login(settings, role).items():
            monkeypatch.setenv(k, v)

    as_role("retrain")  # it registers a version and moves @champion: EDIT on its experiment, MANAGE on the model
    run = client.create_run(client.get_experiment_by_name("sensorcast-retrain").experiment_id)
    version = client.create_model_version(settings.model_name, f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias(settings.model_name, "champion", version.version)
    for role in ("service", "monitor"):  # they read the champion, and may not move it
        as_role(role)
        assert client.get_model_version_by_alias(settings.model_name, "champion").version == version.version
        with pytest.raises(MlflowException, match="403 != 200. Response body: 'Permission denied'"):
            client.set_registered_model_alias(settings.model_name, "champion", version.version)

    # docker compose's grant step (`sensorcast deploy grant mlflow`): the same users, each password from .env
    from pipeline.tools.deploy import grant_from_env, password_variable

    dotenv = {password_variable("mlflow", r): f"{r}-password-from-dotenv" for r in files}
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(k, LOGIN[k])
    assert grant_from_env("mlflow", settings, dotenv) == ["service", "monitor", "retrain"]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "sensorcast-service")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", dotenv["MLFLOW_SERVICE_PASSWORD"])
    assert client.get_model_version_by_alias(settings.model_name, "champion").version == version.version
    with pytest.raises(MlflowException, match="403 != 200"):
        client.set_registered_model_alias(settings.model_name, "champion", version.version)
