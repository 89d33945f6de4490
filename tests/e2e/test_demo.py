"""`make demo`'s job, end to end on a private stack: train, register, serve, stream, summarize."""

from __future__ import annotations

import pytest

from pipeline.tools import stack
from pipeline.tools.demo import BROKEN, run_demo

pytestmark = pytest.mark.integration


def test_demo_runs_the_whole_system_and_stops_cleanly(local_settings, monkeypatch) -> None:
    settings = local_settings()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        summary = run_demo(settings, hours=130, rate=400, epochs=1, keep_stack=True, log=lambda _m: None)
        import mlflow
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(settings.tracking_uri)
        versions = MlflowClient().search_model_versions(f"name='{settings.model_name}'")
        run = MlflowClient().get_run(versions[0].run_id)
        artifacts = [a.path for a in MlflowClient().list_artifacts(run.info.run_id)]
    finally:
        stack.down(settings, log=lambda _m: None)
    assert summary["service_exit_code"] == 0
    # every airport forecasts once its window holds L readings (gaps forward-filled count toward it)
    assert 3 * (130 - (settings.lookback - 1)) <= summary["forecasts"] <= 3 * 130
    assert sum(summary["dead_letters"].values()) == len(BROKEN)
    assert len(versions) == 1 and "forecast.png" in artifacts
    assert "test_mse_itransformer" in run.data.metrics and "test_mse_persistence" in run.data.metrics
    assert not stack.port_open("127.0.0.1", settings.kafka_port)
