"""`make demo`'s job, end to end on a private stack: the first model trained by the Prefect flow
from the readings topic, registered and promoted, served live, summarized."""

from __future__ import annotations

import pytest

from pipeline.tools import stack
from pipeline.tools.demo import BROKEN, run_demo

pytestmark = pytest.mark.integration


def test_demo_closes_the_loop_from_the_topic_and_stops_cleanly(local_settings, monkeypatch) -> None:
    settings = local_settings()
    quiet = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    for key, value in {**settings.as_env(), **quiet}.items():  # what run_demo exports: restored after the test
        monkeypatch.setenv(key, value)
    try:
        summary = run_demo(
            settings,
            history_hours=300,
            hours=130,
            sites=1,
            rate=400,
            epochs=1,
            retrain_midway=False,
            log=lambda _m: None,
        )
        from mlflow import MlflowClient

        client = MlflowClient(settings.tracking_uri)
        version = client.get_model_version(settings.model_name, summary["first_retrain"]["version"])
        artifacts = {a.path for a in client.list_artifacts(version.run_id)}
        tags = client.get_run(version.run_id).data.tags
    finally:
        stack.down(settings, log=lambda _m: None)
    assert summary["service_exit_code"] == 0
    assert summary["first_retrain"]["version"] == "1" and tags["trigger"] == "manual"
    # every airport forecasts once its window holds L readings (gaps forward-filled count toward it)
    # (a reading with a dropped channel is an incident that is still forecast: one more each)
    dropped = summary["incidents"].get("dropped_channel", 0)
    assert 3 * (130 - (settings.lookback - 1)) <= summary["forecasts"] <= 3 * 130 + dropped
    assert sum(summary["versions_served"].values()) == summary["forecasts"]
    # every broken message and every incident meant to be refused is one dead letter, nothing else is
    assert summary["incidents"] and summary["incident_refusals_expected"] > 0
    assert sum(summary["dead_letters"].values()) == len(BROKEN) + summary["incident_refusals_expected"]
    assert {"forecast.png", "loss.png", "provenance.json"} <= artifacts
    assert summary["rolling_mae"] and summary["persistence_mae"]  # the view's skill figures were scored
    assert not stack.port_open("127.0.0.1", settings.kafka_port)
