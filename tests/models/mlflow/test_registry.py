"""The registry as the service asks it: "which version is NAME@ALIAS", told apart from an outage."""

from __future__ import annotations

import pytest

from models.mlflow.registry import RegistryUnavailable, alias_version


def test_a_missing_alias_is_none_and_a_dead_server_is_unavailable(
    mlflow_tracking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    assert alias_version("never-registered", "champion") is None
    MlflowClient().create_registered_model("registered-without-alias")
    assert alias_version("registered-without-alias", "champion") is None

    from pipeline.tools.stack import free_ports

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
