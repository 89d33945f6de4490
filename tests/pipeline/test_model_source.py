"""Where the serving model comes from: an outage of the registry is told apart from "no alias"."""

from __future__ import annotations

import logging

import pytest

from models.registry import RegistryUnavailable, alias_version
from pipeline.model_source import ModelWatcher, RegistryRef
from pipeline.service import ModelSlot
from tests.pipeline.fakes import LastValueModel


def test_a_registry_outage_is_logged_once_when_it_starts_and_once_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    answers = iter([RegistryUnavailable("connection refused")] * 3 + ["1", "1"])

    def lookup(name: str, alias: str) -> str | None:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    slot = ModelSlot(LastValueModel(["temp"], version="1"))
    watcher = ModelWatcher(slot, RegistryRef("m", "champion"), "cpu", 1.0, lookup=lookup)
    with caplog.at_level(logging.INFO, logger="sensorcast.models"):
        swaps = [watcher.check_once() for _ in range(5)]
    assert swaps == [False] * 5 and slot.model.version == "1"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("model registry unreachable, still serving m v1") and "connection refused" in lines[0]
    assert lines[1].startswith("model registry reachable again")


def test_a_missing_alias_is_none_and_a_dead_server_is_unavailable(mlflow_tracking: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    from mlflow import MlflowClient

    assert alias_version("never-registered", "champion") is None
    MlflowClient().create_registered_model("registered-without-alias")
    assert alias_version("registered-without-alias", "champion") is None

    from pipeline.stack import free_ports

    (port,) = free_ports(1)  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")
    mlflow.set_registry_uri(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(RegistryUnavailable, match="did not answer"):
            alias_version("registered-without-alias", "champion")
    finally:
        mlflow.set_tracking_uri(mlflow_tracking)
        mlflow.set_registry_uri(mlflow_tracking)
