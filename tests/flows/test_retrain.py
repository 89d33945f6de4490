"""The retraining loop against real Kafka, a real MLflow tracking server and Prefect's own engine:
readings on the topic become a registered, gated model, and a running service follows a promotion
at once."""

from __future__ import annotations

import functools
import json
import math
import os
import random
import subprocess
import sys
import threading
import time

import pytest

from flows.retrain import retrain
from pipeline.kafka import ensure_topics
from pipeline.messages import encode_reading, format_ts, parse_ts
from pipeline.serve import serve
from pipeline.settings import Settings

pytestmark = pytest.mark.integration

HOUR = 3_600_000
L, H = 24, 6
ENTITIES = ("north", "south", "east")


def history(steps: range, start_ms: int = 0) -> list[tuple[bytes, bytes]]:
    """Daily cycles with a per-site phase, and weather on top: a slow AR(1) drift per site and channel,
    the same at every call for the same hour. On pure cycles seasonal naive is all but perfect and no
    candidate may pass the gate; with the drift a network beats both naive forecasts, as on real data.
    The east site's clock jitters by up to ±25% of the hour (before the one grid, it dropped out)."""
    out = []
    for s in steps:
        for k, e in enumerate(ENTITIES):
            drift = _drift(k)[s]
            temp = 15 + 8 * math.sin(2 * math.pi * (s + 3 * k) / 24) + drift[0]
            rh = 60 + 20 * math.cos(2 * math.pi * (s + 5 * k) / 24) + drift[1]
            jitter = int(((s * 37) % 21 - 10) / 40 * HOUR) if e == "east" and s else 0  # none before 1970
            out.append((e.encode(), encode_reading(e, start_ms + s * HOUR + jitter, {"temp": temp, "rh": rh})))
    return out


@functools.cache
def _drift(site: int, hours: int = 4096) -> list[tuple[float, float]]:
    """AR(1), φ 0.9, steps of σ 0.8 (temp) and 2 (rh): a site's weather away from its daily cycle."""
    rng, level, out = random.Random(site), [0.0, 0.0], []
    for _ in range(hours):
        level = [0.9 * level[0] + rng.gauss(0, 0.8), 0.9 * level[1] + rng.gauss(0, 2.0)]
        out.append((level[0], level[1]))
    return out


def unforecast(missing: set, unexpected: set, dead_letters) -> str:
    """Why the forecasts are not the readings': the hours missing per entity, what was extra, and
    the dead letters' reasons (a failure under load says where the readings went)."""
    hours = {e: sorted(int(parse_ts(ts) // HOUR) for k, ts in missing if k == e) for e in ENTITIES}
    reasons = [d.get("reason") for d in dead_letters.wait_for(10**6, timeout_s=5)]
    return f"not forecast (hours): {hours}; unexpected: {sorted(unexpected)[:10]}; dead letters: {reasons}"


@pytest.fixture
def loop_settings(kafka_settings: Settings, mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The flow reads its settings from the environment, as a Prefect worker would."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "SENSORCAST_READINGS_TOPIC": kafka_settings.readings_topic,
        "SENSORCAST_FORECASTS_TOPIC": kafka_settings.forecasts_topic,
        "SENSORCAST_DLQ_TOPIC": kafka_settings.dlq_topic,
        "SENSORCAST_MODELS_TOPIC": kafka_settings.models_topic,
        "SENSORCAST_CONSUMER_GROUP": kafka_settings.consumer_group,
        "SENSORCAST_MODEL_NAME": f"loop-{kafka_settings.consumer_group}",
        "SENSORCAST_LOOKBACK": str(L),
        "SENSORCAST_HORIZON": str(H),
        "SENSORCAST_METRICS_PORT": "0",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = Settings.load()
    ensure_topics(settings)
    return settings


def test_too_little_data_is_not_retrained_and_says_why(loop_settings: Settings, produce) -> None:
    produce(loop_settings, history(range(10)))
    report = retrain(trigger="manual")
    assert report["promoted"] is False and report["version"] is None
    assert "too little data" in report["gate"] and report["readings"] == 30


def test_one_retrain_at_a_time_a_second_waits_for_the_first(loop_settings: Settings, produce) -> None:
    """The model's retrain slot is held (as a deployment run would hold it): a retrain started in this
    process waits until it is free, then runs."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    from flows.slots import retrain_limit

    produce(loop_settings, history(range(10)))
    name = retrain_limit(loop_settings.model_name)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
    reports: list[dict] = []
    with concurrency(name, occupy=1, strict=True):
        second = threading.Thread(target=lambda: reports.append(retrain(trigger="manual")), daemon=True)
        second.start()
        second.join(timeout=5)
        waited_while_held = second.is_alive()
    second.join(timeout=120)
    assert waited_while_held and reports, reports
    assert reports[0]["waited_s"] > 0 and "too little data" in reports[0]["gate"], reports


def test_the_loop_closes_register_gate_promote_and_the_service_follows(
    loop_settings: Settings, produce, collect, mlflow_server: str
) -> None:
    import mlflow
    from mlflow import MlflowClient

    from models.mlflow.registry import alias_version

    produce(loop_settings, history(range(200)) + [(b"x", b"{broken")])
    first = retrain(trigger="manual", reason="first model", epochs=3)
    assert first["promoted"] is True and first["version"] == "1", first
    assert first["scores"]["candidate"] < first["scores"]["persistence"]
    assert first["refused"] == {"not_json": 1}
    assert alias_version(loop_settings.model_name, "champion") == "1"

    client = MlflowClient()
    run = client.get_run(first["run_id"])
    assert run.data.tags["trigger"] == "manual" and run.data.tags["trigger_reason"] == "first model"
    experiment = client.get_experiment(run.info.experiment_id)  # MLflow 3's UI opens it on runs, not GenAI
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert {"holdout_mse_candidate", "holdout_mse_persistence", "holdout_mse_mean", "val_loss"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"provenance.json", "loss.png", "forecast.png", "gate.txt"} <= artifacts
    provenance = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/provenance.json")
    assert provenance["rows_per_entity"] == {e: 200 for e in ENTITIES} and provenance["refused"] == {"not_json": 1}
    assert provenance["grid"] == {"interval_ms": HOUR, "anchor_ms": 0} and provenance["segments"] == 3
    assert json.loads(client.get_model_version(loop_settings.model_name, "1").tags["grid"])["interval_ms"] == HOUR
    ranges = json.loads(client.get_model_version(loop_settings.model_name, "1").tags["data_ranges"])
    assert ranges["topic"] == loop_settings.readings_topic and ranges["grid"]["interval_ms"] == HOUR
    assert ranges["train"][1] < ranges["validation"][0] <= ranges["validation"][1] < ranges["holdout"][0]  # one cut

    # the registered model predicts in a clean process, from the registry alone
    probe = (
        "import mlflow, numpy as np, pandas as pd\n"
        f"m = mlflow.pyfunc.load_model('models:/{loop_settings.model_name}@champion')\n"
        f"x = pd.DataFrame(np.ones(({L}, 2), dtype='float32'), columns=['rh', 'temp'])\n"
        "out = m.predict(x)\n"
        "print(len(out), list(out.columns))\n"
    )
    clean = subprocess.run(
        [sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": ""}, cwd="/", capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    assert clean.returncode == 0, clean.stderr[-3000:]
    rows, columns = clean.stdout.strip().split(" ", 1)
    assert int(rows) == H and "'rh', 'temp'" in columns and "'temp_lower_0.8', 'temp_upper_0.8'" in columns, columns

    # a candidate that is not better by the margin is registered, tagged, and not promoted
    second = retrain(trigger="schedule", margin=0.9, epochs=1)
    assert second["promoted"] is False and second["version"] == "2" and second["warm_started"] is True
    assert "better than the champion" in second["gate"]
    assert alias_version(loop_settings.model_name, "champion") == "1"
    tags = client.get_model_version(loop_settings.model_name, "2").tags
    assert {"holdout_mse", "holdout_mae"} <= set(tags) and "better than the champion" in tags["gate"]

    # a service on @champion with a slow registry poll: the announcement alone makes it switch
    live = loop_settings.model_copy(update={"model_poll_s": 900.0, "mlflow_tracking_uri": mlflow_server})
    forecasts = collect(live, live.forecasts_topic)
    announcements = collect(live, live.models_topic)
    stop = threading.Event()
    service = threading.Thread(target=serve, args=(live, stop), daemon=True)
    service.start()
    enough = threading.Event()  # live readings flow until the switch has been seen, then a little more
    sent_steps: list[int] = []

    def stream_live() -> None:
        step = 200
        while not enough.is_set() or step < 260:
            produce(live, history(range(step, step + 5)), 60)
            sent_steps.extend(range(step, step + 5))
            step += 5

    stream = threading.Thread(target=stream_live, daemon=True)
    try:
        stream.start()
        forecasts.wait_for(3)
        assert {d["model"]["version"] for d in forecasts.docs} == {"1"}
        third = retrain(trigger="drift", reason="test", margin=-1e6, epochs=1)  # whatever beats persistence wins
        assert third["promoted"] is True and third["version"] == "3", third
        deadline = time.monotonic() + 300  # ceilings against a hang only, well inside the 900 s registry poll
        while not any(d["version"] == "3" for d in announcements.docs) and time.monotonic() < deadline:
            time.sleep(0.02)
        announced = next(t for t, d in announcements.arrivals if d["version"] == "3")
        deadline = time.monotonic() + 300
        while not any(d["model"]["version"] == "3" for d in forecasts.docs) and time.monotonic() < deadline:
            time.sleep(0.02)
        switched = next(t for t, d in forecasts.arrivals if d["model"]["version"] == "3")
        enough.set()
        stream.join(timeout=60)
        last = max(sent_steps) + 1
        forecasts.wait_for(len(ENTITIES) * (last - (L - 1)), timeout_s=300, unique=True)
    finally:
        stop.set()
        service.join(timeout=30)
    print(f"switched {switched - announced:.3f} s after the announcement")
    # the announcement made it switch: the registry poll (900 s) had not come round (speed is `bench latency`'s)
    assert 0 <= switched - announced < live.model_poll_s, f"switched {switched - announced:.1f} s after it"
    keys = {(d["entity"], d["ts"]) for d in forecasts.docs}
    # a new consumer group reads the topic from its start: every reading after warm-up, history and live
    expected = {(e, format_ts(s * HOUR)) for e in ENTITIES for s in range(L - 1, last)}
    assert keys == expected, unforecast(expected - keys, keys - expected, collect(live, live.dlq_topic))
    versions = [d["model"]["version"] for d in sorted(forecasts.docs, key=lambda d: d["ts"])]
    assert versions[0] == "1" and versions[-1] == "3" and json.dumps(versions).count('"2"') == 0
    # every forecast through the broker carries each version's own split-conformal intervals around it
    for d in forecasts.docs:
        assert set(d["intervals"]) == {"0.8", "0.95"}, d
        for c, point in d["forecast"].items():
            lo8, hi8 = (d["intervals"]["0.8"][side][c] for side in ("lower", "upper"))
            lo95, hi95 = (d["intervals"]["0.95"][side][c] for side in ("lower", "upper"))
            assert len(lo8) == len(point) == len(hi95) == H
            assert all(a <= b <= p <= e <= f for a, b, p, e, f in zip(lo95, lo8, point, hi8, hi95, strict=True)), d


def test_at_the_default_margin_a_better_candidate_wins_and_a_worse_one_loses_each_saying_why(
    loop_settings: Settings, produce
) -> None:
    """The gate as shipped (margin 0) against a real champion: a quick first model (120 hours, two
    epochs) loses to one trained longer on everything that has arrived since; a one-epoch model from
    scratch then loses to that one, on the same holdout."""
    from models.mlflow.registry import alias_version

    produce(loop_settings, history(range(120)))
    first = retrain(trigger="manual", reason="a quick first model", epochs=2, warm_start=False)
    assert first["promoted"] is True and first["version"] == "1", first
    produce(loop_settings, history(range(120, 400)))
    better = retrain(trigger="manual", reason="more data, more epochs", epochs=5, warm_start=False)
    assert better["promoted"] is True and better["version"] == "2", better
    assert better["scores"]["candidate"] < better["scores"]["champion"], better["scores"]
    assert (
        "the best naive" in better["gate"] and "the champion" in better["gate"] and "by more than 0%" in better["gate"]
    )
    worse = retrain(trigger="manual", reason="one epoch from scratch", epochs=1, warm_start=False)
    assert worse["promoted"] is False and worse["version"] == "3", worse
    assert worse["scores"]["candidate"] > worse["scores"]["champion"], worse["scores"]
    assert "is not 0% better than the champion" in worse["gate"], worse["gate"]
    assert alias_version(loop_settings.model_name, "champion") == "2"


def test_a_two_trial_search_logs_each_trial_as_a_child_run_and_the_gate_sees_only_the_choice(
    loop_settings: Settings, produce
) -> None:
    """`trials=2`: the serving preset is trial 0, each trial is a child run of the retrain's MLflow run,
    and the registered version is the chosen trial's configuration, the only one the gate scored. Each
    trial is judged on rolling origins: the validation split and two blocks of training data before it."""
    from mlflow import MlflowClient

    produce(loop_settings, history(range(200)))
    report = retrain(trigger="manual", reason="searched", epochs=1, trials=2)
    assert report["trials"] == 2 and report["version"] == "1", report
    # seasonal naive at the data's daily cycle (it fits the lookback of 24) is scored beside the others
    assert set(report["scores"]) == {"candidate", "persistence", "mean", "seasonal"}, report["scores"]
    assert MlflowClient().get_run(report["run_id"]).data.params["seasonal_period"] == "24"
    name = loop_settings.model_name  # the version carries it too: the monitor scores seasonal naive at it
    assert MlflowClient().get_model_version(name, "1").tags["seasonal_period"] == "24"
    client = MlflowClient()
    parent = client.get_run(report["run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{report['run_id']}'"
    )
    trials = {c.info.run_name: c for c in children}
    assert set(trials) == {"trial-0", "trial-1"}, sorted(trials)
    preset = trials["trial-0"].data.params
    assert preset["d_model"] == "64" and preset["epochs"] == "1" and preset["cycle"] == "0"  # hourly: a cycle offered
    assert preset["skip"] == "False"  # the preset exactly: no skip either
    assert {c.data.tags["trial_state"] for c in children} <= {"complete", "pruned", "ineligible", "diverged"}
    chosen = trials[f"trial-{parent.data.tags['search_chosen_trial']}"]
    assert chosen.data.tags["trial_state"] == "complete"
    for key in ("d_model", "e_layers", "d_ff", "n_heads"):
        assert parent.data.params[key] == chosen.data.params[key], key
    assert parent.data.params["search_trials"] == "2" and parent.data.metrics["search_wall_seconds"] > 0
    assert parent.data.tags["search_select"] == "one-se" and "trial" in parent.data.tags["search_selection"]
    assert parent.data.metrics["search_chosen_val_loss"] == chosen.data.metrics["best_val_loss"]
    # judged on three rolling origins (the default): the chosen trial's val loss is the mean of the three
    assert parent.data.params["search_folds"] == "3"
    folds = [m.value for m in client.get_metric_history(chosen.info.run_id, "fold_best_val_loss")]
    assert len(folds) == 3 and chosen.data.metrics["best_val_loss"] == pytest.approx(sum(folds) / 3)
    assert client.get_metric_history(chosen.info.run_id, "val_loss_origin0")  # the oldest origin's epochs


def test_the_champion_is_scored_only_on_holdout_after_its_own_training_data(
    loop_settings: Settings, produce, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A champion trained on the last 168 hours, then a whole-topic run: the whole topic's holdout
    (its last 20%) begins before the champion's training data ends, so every contender is scored only
    on the holdout windows after that end, and the run's parameters say so."""
    from mlflow import MlflowClient

    start = (int(time.time() * 1000) // HOUR - 400) * HOUR  # 400 hours up to an hour ago, in readings' ts
    produce(loop_settings, history(range(400), start_ms=start))
    monkeypatch.setenv("SENSORCAST_RETRAIN_WINDOW_BY", "reading")  # the hours count by the readings' own ts
    champion = retrain(trigger="manual", reason="the last week", hours=168, epochs=3)
    assert champion["promoted"] is True and champion["version"] == "1", champion
    ranges = json.loads(MlflowClient().get_model_version(loop_settings.model_name, "1").tags["data_ranges"])
    wide = retrain(trigger="manual", reason="the whole topic", epochs=1)
    params = MlflowClient().get_run(wide["run_id"]).data.params
    assert params["holdout_after"] == ranges["validation"][1], (params, ranges)  # the champion's last reading
    assert 0 < int(params["holdout_windows_scored"]) < int(params["holdout_windows"]), params
    assert "champion" in wide["scores"], wide
    # warm-started from the champion: its intervals are calibrated on those windows alone (before, on the
    # whole holdout, including what the inherited weights trained on: too narrow)
    assert wide["warm_started"] is True, wide
    said = MlflowClient().get_run(wide["run_id"]).data.tags["intervals_calibrated_on"]
    assert said.startswith(f"the {params['holdout_windows_scored']} holdout windows after the champion's"), said


def test_mlflow_down_at_registration_retries_then_fails_clearly_with_nothing_registered(
    loop_settings: Settings, produce, local_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tracking server of the test's own dies between training and registration."""
    import flows.registry as registry_module
    import flows.retrain as flow_module
    from pipeline.tools import stack

    server = local_settings("mlflow-dies")
    stack.up(server, ["mlflow"], log=lambda _m: None)
    uri = f"http://{server.host}:{server.mlflow_port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the task's retries are the ones under test
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    produce(loop_settings, history(range(120)))
    sample = flow_module.holdout_sample

    def server_dies_then_sample(*args):
        stack.down(server, ["mlflow"], log=lambda _m: None)
        return sample(*args)

    attempts = []
    register_once = registry_module._register

    def counted(*args):
        attempts.append(1)
        return register_once(*args)

    monkeypatch.setattr(flow_module, "holdout_sample", server_dies_then_sample)
    monkeypatch.setattr(registry_module, "_register", counted)
    monkeypatch.setattr(flow_module, "register", flow_module.register.with_options(retry_delay_seconds=0.5))
    with pytest.raises(Exception, match=r"did not take the run .*nothing was registered, @champion did not move"):
        retrain(trigger="manual", epochs=1)
    assert len(attempts) == 3  # the task's two retries, then the run failed
    from mlflow import MlflowClient

    db = f"sqlite:///{server.state_dir / 'mlflow' / 'mlflow.db'}"
    store = MlflowClient(tracking_uri=db, registry_uri=db)  # the dead server's own store
    assert store.search_model_versions(f"name='{loop_settings.model_name}'") == []
    assert not store.search_registered_models(f"name='{loop_settings.model_name}'")


def test_the_alias_moves_only_if_it_still_points_where_the_gate_looked(
    mlflow_tracking: str, tiny_checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compare-and-set: a run that gated against v1 does not move @champion once another run moved it."""
    from mlflow import MlflowClient

    from flows.registry import promote
    from models.mlflow.registry import alias_version, log_checkpoint

    monkeypatch.setenv("SENSORCAST_MODEL_NAME", "cas")
    for n in (1, 2, 3):
        log_checkpoint(tiny_checkpoint(f"v{n}", seed=n), "cas", alias="champion" if n == 1 else None)
    assert promote.fn("2", scored_against="1") is None and alias_version("cas", "champion") == "2"
    assert promote.fn("3", scored_against="1") == "2"  # gated against v1, but v2 serves now
    assert alias_version("cas", "champion") == "2"
    assert "moved to v2" in MlflowClient().get_model_version("cas", "3").tags["promotion"]
    assert promote.fn("3", scored_against=None) == "2"  # "no champion yet" is stale too


def test_a_retried_registration_makes_one_version(
    loop_settings: Settings, produce, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow fails once after the version exists (tagging it): the task's retry tags that version
    instead of registering a second one."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    import flows.retrain as flow_module

    produce(loop_settings, history(range(120)))
    tag = MlflowClient.set_model_version_tag
    failures = []

    def fails_once(self, *args, **kwargs):
        if not failures:
            failures.append(args)
            raise MlflowException("the tracking server went away for a moment")
        return tag(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_model_version_tag", fails_once)
    monkeypatch.setattr(flow_module, "register", flow_module.register.with_options(retry_delay_seconds=0.5))
    report = retrain(trigger="manual", epochs=1)
    versions = MlflowClient().search_model_versions(f"name='{loop_settings.model_name}'")
    assert failures and [v.version for v in versions] == [report["version"]] == ["1"]
    assert "gate" in MlflowClient().get_model_version(loop_settings.model_name, "1").tags


def test_a_searched_champion_is_carried_into_the_scheduled_retrain_and_a_horizon_change_starts_a_new_lineage(
    loop_settings: Settings, produce, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A champion of the search's making (d_model 32, one layer, a daily cycle, its own recipe): the
    default retrain trains that configuration, warm-started from its weights, not the preset. After
    SENSORCAST_HORIZON changes, the champion cannot be scored on the new windows: the run compares the
    candidate with the naive baselines only and says so, and never crashes."""
    from mlflow import MlflowClient

    from models.checkpoint import save
    from models.data import Scaler
    from models.mlflow.registry import log_checkpoint
    from models.nets import build

    net = build("itransformer", lookback=L, horizon=H, d_model=32, n_heads=4, e_layers=1, d_ff=64, cycle=24,
                n_variates=2)  # fmt: skip
    extra = {"grid": {"interval_ms": HOUR, "anchor_ms": 0}, "recipe": {"lr": 3e-3, "batch_size": 64}}
    folder = save(tmp_path / "searched", net, ["rh", "temp"], Scaler.identity(2), extra=extra)
    assert log_checkpoint(folder, loop_settings.model_name, alias="champion") == "1"
    produce(loop_settings, history(range(200)))

    carried = retrain(trigger="schedule", epochs=1)
    assert carried["version"] == "2" and carried["warm_started"] is True, carried
    assert "the champion v1's configuration" in carried["configuration"], carried
    run = MlflowClient().get_run(carried["run_id"]).data
    assert (run.params["d_model"], run.params["e_layers"], run.params["cycle"]) == ("32", "1", "24"), run.params
    assert run.tags["config_source"] == "champion v1" and run.tags["warm_start_reason"].startswith("warm-started")

    monkeypatch.setenv("SENSORCAST_HORIZON", str(H * 2))
    monkeypatch.setenv("SENSORCAST_SEARCH_EVERY_S", "0")  # the search off: the preset (on, it searches: lifecycle)
    changed = retrain(trigger="schedule", epochs=1)
    assert changed["version"] == "3" and changed["warm_started"] is False, changed
    assert f"forecasts {H} steps, this retrain {H * 2}" in changed["configuration"], changed
    assert "compared with the naive baselines only" in changed["gate"] and "champion" not in changed["scores"]
    assert MlflowClient().get_run(changed["run_id"]).data.params["d_model"] == "64"  # the preset


def test_a_promotion_retried_after_its_answer_was_lost_is_success_not_a_refusal(
    mlflow_tracking: str, tiny_checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alias moved to v2 but the answer never came back; the task's retry finds @champion already
    on v2. Before, it tagged v2 "refused: moved to v2" and the run skipped the announcement."""
    from mlflow import MlflowClient

    from flows.registry import promote
    from models.mlflow.registry import alias_version, log_checkpoint

    monkeypatch.setenv("SENSORCAST_MODEL_NAME", "lost-answer")
    for n in (1, 2):
        log_checkpoint(tiny_checkpoint(f"v{n}", seed=n), "lost-answer", alias="champion" if n == 1 else None)
    assert promote.fn("2", scored_against="1") is None
    assert promote.fn("2", scored_against="1") is None and alias_version("lost-answer", "champion") == "2"
    assert "promotion" not in MlflowClient().get_model_version("lost-answer", "2").tags


def test_the_flows_mlflow_calls_use_the_settings_uri_not_mlflows_default(
    mlflow_tracking: str, tiny_checkpoint, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server named only by SENSORCAST_MLFLOW_TRACKING_URI; MLflow left to its own default (a
    mlflow.db in the working folder): the champion and its data ranges come from the settings' server.
    Before, both tasks built MlflowClient() and read the empty default store."""
    import mlflow
    from mlflow import MlflowClient

    from flows.registry import champion_trained_until, current_champion
    from models.mlflow.registry import log_checkpoint

    monkeypatch.setenv("SENSORCAST_MODEL_NAME", "by-settings")
    log_checkpoint(tiny_checkpoint("v1"), "by-settings", alias="champion")
    ranges = {"train": ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]}
    MlflowClient().set_model_version_tag("by-settings", "1", "data_ranges", json.dumps(ranges))
    monkeypatch.setenv("SENSORCAST_MLFLOW_TRACKING_URI", mlflow_tracking)
    monkeypatch.chdir(tmp_path)

    def forget() -> None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)

    forget()
    champion = current_champion.fn()
    assert champion is not None and champion.version == "1"
    forget()
    assert champion_trained_until.fn("1") == 1767312000000  # 2026-01-02T00:00:00Z


def test_drift_that_persists_after_a_drift_retrain_searches_the_configuration_again(
    loop_settings: Settings, produce, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The champion came from a drift retrain and drift fires again: carrying its configuration did
    not fix it, so this run searches (SENSORCAST_SEARCH_TRIALS), and its choice meets the same gate."""
    monkeypatch.setenv("SENSORCAST_SEARCH_TRIALS", "2")
    monkeypatch.setenv("SENSORCAST_SEARCH_FOLDS", "1")
    produce(loop_settings, history(range(160)))
    first = retrain(trigger="drift", reason="level shift", epochs=4, margin=-1e6)  # 1: seasonal naive wins
    assert first["promoted"] is True and first["trials"] == 0, first  # no champion yet: the preset
    again = retrain(trigger="drift", reason="level shift, still", epochs=1)
    assert again["trials"] == 2 and again["version"] == "2" and "champion" in again["scores"], again
