"""The retrain deployment against a real Prefect server and `flows serve`: missed schedule slots
collapse into one retrain (a cancelled later slot supersedes nothing), a drift event from the
monitor's code starts a retrain, and `sensorcast retrain --wait` runs on the served deployment."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time

import pytest

from pipeline.kafka import ensure_topics
from pipeline.settings import REPO_ROOT
from pipeline.tools import stack
from pipeline.tools.child import CliProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def prefect_api(local_settings, monkeypatch: pytest.MonkeyPatch):
    settings = local_settings("prefect-state")
    stack.up(settings, ["prefect"], log=lambda _m: None)
    monkeypatch.setenv("PREFECT_API_URL", settings.prefect_url)
    try:
        yield settings
    finally:
        stack.down(settings, ["prefect"], log=lambda _m: None)


EMIT_DRIFT = (
    "from flows.monitor_outputs import emit_drift_event; from pipeline.settings import Settings; "
    "emit_drift_event(Settings.load(), {'entity': 'a', 'reason': 'level shift on a'})"
)


def test_missed_slots_run_one_retrain_drift_runs_another_and_a_work_pool_gets_the_same(
    prefect_api, kafka_settings, mlflow_server, tmp_path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelled, Scheduled

    from flows.schedule import SEARCH_DEPLOYMENT, deploy_to_pool, deployment

    ensure_topics(kafka_settings, [kafka_settings.readings_topic])  # empty: the one run that works ends quickly
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "SENSORCAST_READINGS_TOPIC": kafka_settings.readings_topic,
        "SENSORCAST_MODEL_NAME": f"sched-{kafka_settings.consumer_group}",
        "SENSORCAST_RETRAIN_CRON": "0 3 * * *",
        "MLFLOW_TRACKING_URI": mlflow_server,  # the session's tracking server
        "PREFECT_API_URL": prefect_api.prefect_url,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    # this process may already know another API (a flow run earlier in the session): say which one
    with temporary_settings(updates={PREFECT_API_URL: prefect_api.prefect_url}):
        deployment_id = deployment(prefect_api).apply()
        now = dt.datetime.now(dt.UTC)
        with get_client(sync_client=True) as client:
            missed = [
                client.create_flow_run_from_deployment(
                    deployment_id,
                    parameters={"trigger": "schedule"},
                    state=Scheduled(scheduled_time=now - dt.timedelta(hours=h)),
                ).id
                for h in (3, 2, 1)  # three slots passed while nothing served the deployment ...
            ]
            given_up = missed.pop()  # ... and someone cancelled the latest: it must not supersede the others
            client.set_flow_run_state(given_up, Cancelled(), force=True)
        # `flows serve` comes back: it finds the Late runs
        server = CliProcess(["flows", "serve"], env, tmp_path / "flows-serve.log").start()
        try:
            deadline = time.monotonic() + 900  # a ceiling against a hang only: every wait below ends on events
            with get_client(sync_client=True) as client:
                while time.monotonic() < deadline:
                    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=missed)))
                    if len(runs) == len(missed) and all(r.state and r.state.is_final() for r in runs):
                        break
                    time.sleep(1)
                states = [r.state.type.value for r in sorted(runs, key=lambda r: missed.index(r.id))]
                logs: dict = {}
                while time.monotonic() < deadline:  # run logs reach the API in batches, shortly after the run
                    logs = {
                        run_id: " ".join(
                            e.message
                            for e in client.read_logs(
                                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
                            )
                        )
                        for run_id in missed
                    }
                    if all("superseded" in text or "not retrained" in text for text in logs.values()):
                        break
                    time.sleep(1)
            # at once, each from a process of its own: the monitor's drift event, and `sensorcast
            # retrain --wait` by hand (it goes through the served deployment; one run at a time)
            retrain_cmd = [sys.executable, "-m", "pipeline.tools.cli", "retrain", "--wait", "--reason", "by hand"]
            by_hand = subprocess.Popen(
                retrain_cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            subprocess.run([sys.executable, "-c", EMIT_DRIFT], env={**os.environ, **env}, check=True, timeout=120)
            drift_runs: list = []
            with get_client(sync_client=True) as client:
                while time.monotonic() < deadline:
                    runs = client.read_flow_runs(
                        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
                    )
                    drift_runs = [r for r in runs if r.parameters.get("trigger") == "drift"]
                    if drift_runs and all(r.state and r.state.is_final() for r in drift_runs):
                        break
                    time.sleep(1)
            _out, by_hand_log = by_hand.communicate(timeout=600)  # against a hang: the run itself ends it
        finally:
            server.stop()
        # docker-compose's form: the same deployment on a process work pool (a worker runs it there)
        pooled_id = deploy_to_pool(prefect_api, "sensorcast-test", REPO_ROOT)
        with get_client(sync_client=True) as client:
            pooled = client.read_deployment(pooled_id)
            search = client.read_deployment_by_name(f"retrain/{SEARCH_DEPLOYMENT}")  # the slower, searching one
            pool = client.read_work_pool("sensorcast-test")
            automations = client.read_automations_by_name(f"retrain {prefect_api.model_name} on drift")
    assert states == ["COMPLETED"] * len(missed), (states, server.output()[-3000:])
    superseded = [run_id for run_id in missed if "superseded" in logs[run_id]]
    assert superseded == missed[:1], logs  # the older slot gives way ...
    assert "not retrained" in logs[missed[1]], logs  # ... the latest one alive does the work (here: no data yet)
    assert len(drift_runs) == 1, (drift_runs, server.output()[-3000:])  # one event, one run
    assert drift_runs[0].state.type.value == "COMPLETED"
    assert drift_runs[0].parameters["reason"] == "level shift on a"
    assert by_hand.returncode == 0, by_hand_log[-3000:]
    assert "/runs/flow-run/" in by_hand_log and "nothing was trained" in by_hand_log, by_hand_log
    assert pool.type == "process" and pooled.work_pool_name == "sensorcast-test"
    assert pooled.entrypoint == "flows/retrain.py:retrain" and pooled.schedules[0].schedule.cron == "0 3 * * *"
    assert automations and automations[0].trigger.expect == {"sensorcast.drift"}
    assert search.parameters["trials"] == prefect_api.search_trials and search.work_pool_name == "sensorcast-test"
    interval = search.schedules[0].schedule.interval
    assert interval.total_seconds() == prefect_api.search_every_s  # weekly by default
    assert search.schedules[0].schedule.anchor_date > dt.datetime.now(dt.UTC)  # first search a week on, not at once
