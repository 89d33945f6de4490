"""The monitor's outputs: the yardstick from the registry, its own MLflow run, the Prefect event;
each outage is a log line, never the monitor's end."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.tools.stack import free_ports

pytestmark = pytest.mark.integration


def test_the_yardstick_is_the_champions_holdout_mae_tag(mlflow_tracking, tiny_checkpoint) -> None:
    from mlflow import MlflowClient

    from flows.monitor_outputs import champion_reference
    from models.mlflow.registry import log_checkpoint
    from pipeline.settings import Settings

    settings = Settings.load(mlflow_tracking_uri=mlflow_tracking, model_name="yardstick")
    version = log_checkpoint(tiny_checkpoint(), "yardstick", alias="champion")
    with pytest.raises(RuntimeError, match="no holdout_mae tag"):
        champion_reference(settings)
    MlflowClient().set_model_version_tag("yardstick", version, "holdout_mae", '{"temp": 0.4, "pressure": 0.1}')
    assert champion_reference(settings) == (version, {"temp": 0.4, "pressure": 0.1}, None)
    MlflowClient().set_model_version_tag("yardstick", version, "seasonal_period", "24")  # seasonal naive's, as gated
    assert champion_reference(settings)[2] == 24


def test_the_rolling_errors_go_to_an_mlflow_run_of_the_monitors_own(mlflow_tracking) -> None:
    from mlflow import MlflowClient

    from flows.monitor_outputs import MlflowLog
    from pipeline.settings import Settings

    log = MlflowLog(Settings.load(mlflow_tracking_uri=mlflow_tracking, model_name="watched"), "3")
    log.metrics({})  # nothing scored yet: no run is opened for it
    assert log.run_id is None
    for ratio in (0.8, 2.5):
        log.metrics({"mae_ratio_temp": ratio, "persistence_mae_ratio_temp": 1.6})
    log.drift({"entity": "site", "reason": "level shift"})
    run = MlflowClient(mlflow_tracking).get_run(log.run_id)
    history = MlflowClient(mlflow_tracking).get_metric_history(log.run_id, "mae_ratio_temp")
    assert [m.value for m in history] == [0.8, 2.5] and run.data.tags["champion_version"] == "3"
    assert run.info.run_name == "monitor-watched-v3"
    first = log.run_id
    log.new_champion("4")  # a promotion: the errors measured from now on go to a run of its own
    log.metrics({"mae_ratio_temp": 0.9})
    assert (
        log.run_id != first and MlflowClient(mlflow_tracking).get_run(log.run_id).info.run_name == "monitor-watched-v4"
    )


def test_an_mlflow_outage_is_one_log_line_and_the_monitor_goes_on(monkeypatch, caplog) -> None:
    from flows.monitor_outputs import MlflowLog
    from pipeline.settings import Settings

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    log = MlflowLog(Settings.load(mlflow_tracking_uri="http://127.0.0.1:9"), "1")  # nothing listens on port 9
    with caplog.at_level("ERROR", logger="sensorcast.monitor"):
        for _ in range(3):
            log.metrics({"mae_ratio_temp": 1.0})
        log.drift({"entity": "site"})
    assert len(caplog.records) == 1 and "retries" in caplog.records[0].getMessage()


def test_a_prefect_outage_never_blocks_the_monitor_and_drops_the_event_with_a_log_line() -> None:
    """The drift event goes to a Prefect API that does not answer, from a process of its own."""
    probe = (
        "import time\n"
        "from flows.monitor_outputs import emit_drift_event\n"
        "from pipeline.settings import Settings\n"
        "settings = Settings.load()\n"
        "emit_drift_event(settings, {'entity': 'a', 'reason': 'warm-up'})\n"
        "for i in range(3):\n"
        "    t = time.perf_counter()\n"
        "    emit_drift_event(settings, {'entity': 'a', 'reason': f'shift {i}'})\n"
        "    print(f'emit took {time.perf_counter() - t:.3f} s', flush=True)\n"
    )
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{free_ports(1)[0]}/api"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    took = [float(line.split()[2]) for line in done.stdout.splitlines() if line.startswith("emit took")]
    assert len(took) == 3 and max(took) < 0.5, took  # the monitor's loop goes on at once
    assert "Unable to connect" in done.stderr and "pending items" in done.stderr, done.stderr[-2000:]
