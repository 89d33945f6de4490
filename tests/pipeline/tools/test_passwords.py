"""No placeholder or short password reaches a deployment: `.env` written with random ones, checked
by name, and the local stack refuses a weak login before it starts anything."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from pipeline.settings import REPO_ROOT, Settings
from pipeline.tools import broker, stack
from pipeline.tools.passwords import SECRETS, WeakSecret, check, init_env_file, read_env_file


def test_init_writes_a_random_value_for_every_secret_keeps_the_rest_and_never_overwrites(tmp_path) -> None:
    env_file = tmp_path / ".env"
    assert init_env_file(env_file, REPO_ROOT / ".env.example") == list(SECRETS)
    first = read_env_file(env_file)
    check(first)  # passes: no placeholder, none short
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    assert first["PREFECT_AUTH_STRING"].startswith("admin:") and first["MLFLOW_ADMIN_USER"] == "admin"
    assert first["SENSORCAST_PUBLISH_HOST"] == "127.0.0.1"  # the settings that are not secrets stay
    with pytest.raises(FileExistsError):
        init_env_file(env_file, REPO_ROOT / ".env.example")
    init_env_file(env_file, REPO_ROOT / ".env.example", force=True)
    assert all(read_env_file(env_file)[n] != first[n] for n in SECRETS)  # new ones


def test_the_example_a_short_and_a_missing_secret_are_each_refused_by_name(tmp_path) -> None:
    with pytest.raises(WeakSecret) as placeholders:
        check(read_env_file(REPO_ROOT / ".env.example"))
    assert all(f"{n} is the placeholder" in str(placeholders.value) for n in SECRETS)
    values = dict.fromkeys(SECRETS, "x" * 24) | {"PREFECT_AUTH_STRING": "admin:short", "GRAFANA_ADMIN_PASSWORD": ""}
    with pytest.raises(
        WeakSecret, match="PREFECT_AUTH_STRING has a password of 5 characters.*GRAFANA_ADMIN_PASSWORD is not set"
    ):
        check(values)


def test_the_local_stack_refuses_a_short_mlflow_login_or_kafka_password_before_starting(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "change-me-mlflow")
    settings = Settings.load(state_dir=tmp_path, mlflow_auth=True)
    with pytest.raises(stack.StackError, match="MLFLOW_TRACKING_PASSWORD is the placeholder"):
        stack.up(settings, ["mlflow"], log=lambda _m: None)
    assert stack.status(settings)["mlflow"]["state"] == "stopped"
    short = settings.model_copy(update={"kafka_sasl_password": SecretStr("hunter2")})
    with pytest.raises(stack.StackError, match="SENSORCAST_KAFKA_SASL_PASSWORD has a password of 7 characters"):
        broker.secured(short)
    assert not (tmp_path / "tls").exists()  # refused before anything was made


def test_compose_step_checks_the_environment_and_exits_non_zero_naming_the_weak_one(monkeypatch) -> None:
    from typer.testing import CliRunner

    from pipeline.tools.cli import app

    for name in SECRETS:
        monkeypatch.setenv(name, "admin:" + "k" * 20 if name == "PREFECT_AUTH_STRING" else "k" * 20)
    assert CliRunner().invoke(app, ["secrets", "check", "--from-env"]).exit_code == 0
    monkeypatch.setenv("MLFLOW_SECRET_KEY", "change-me-flask-secret")
    refused = CliRunner().invoke(app, ["secrets", "check", "--from-env"])
    assert refused.exit_code == 1 and "MLFLOW_SECRET_KEY is the placeholder" in refused.output
