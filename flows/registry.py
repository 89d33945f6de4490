"""The retrain's dealings with the MLflow registry: the champion it gates against, one tracked run
per retrain with its version registered and tagged (idempotent across retries), the compare-and-set
move of the alias, and the announcement on the models topic. Each talker is a Prefect task that
retries; a retry never registers a second version nor refuses its own move."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.window import TrainingWindow
from pipeline.settings import Settings

if TYPE_CHECKING:
    from flows.candidate import Candidate
    from flows.gate import GateDecision
    from models.forecaster import Forecaster

EXPERIMENT = "sensorcast-retrain"
FLOW_RUN_TAG = "prefect_flow_run_id"
ATTEMPT_TAG = "sensorcast_registration"  # one value per registration, shared by its retries


def use_tracking(settings: Settings) -> Settings:
    """Point MLflow's process-wide tracking and registry URIs at the settings' server: every client
    the flow builds, and the helpers it calls, then talk to it, whatever the environment or an earlier
    call in the process set (one server for both: a registry URI set earlier must not win)."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return settings


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def current_champion() -> Forecaster | None:
    """The serving model, or None when nothing is registered yet (an outage raises, and retries)."""
    from models.mlflow.registry import alias_version
    from pipeline.model_source import RegistryRef, load_version

    settings = use_tracking(Settings.load())
    version = alias_version(settings.model_name, settings.model_alias)
    if version is None:
        return None
    return load_version(RegistryRef(settings.model_name, settings.model_alias), version, "cpu")


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def champion_trigger(version: str) -> str | None:
    """What started the retrain that made this version (its run's `trigger` tag)."""
    from mlflow import MlflowClient

    settings = use_tracking(Settings.load())
    client = MlflowClient(settings.tracking_uri)
    run_id = client.get_model_version(settings.model_name, version).run_id
    return client.get_run(run_id).data.tags.get("trigger") if run_id else None


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def champion_trained_until(version: str) -> int | None:
    """The last reading time (epoch ms) of the champion's training and validation data, from its
    `data_ranges` tag (None: a version registered before the tag existed)."""
    from mlflow import MlflowClient

    from pipeline.messages import parse_ts

    settings = use_tracking(Settings.load())
    tag = MlflowClient(settings.tracking_uri).get_model_version(settings.model_name, version).tags.get("data_ranges")
    if not tag:
        return None
    ranges = json.loads(tag)
    ends = [parse_ts(ranges[part][1]) for part in ("train", "validation") if ranges.get(part)]
    return max(ends) if ends else None


def data_ranges(window: TrainingWindow, ranges: dict[str, tuple[int, int]]) -> dict:
    """A version's data: topic, partition offsets read, grid, and first/last reading time per part."""
    from pipeline.messages import format_ts

    names = {"train": "train", "val": "validation", "holdout": "holdout"}
    return {
        "topic": window.provenance.topic,
        "offsets": {str(p): list(r) for p, r in window.provenance.offsets.items()},
        "grid": window.grid,
        **{names[k]: [format_ts(a), format_ts(b)] for k, (a, b) in ranges.items()},
    }


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def register(
    candidate: Candidate,
    decision: GateDecision,
    window: TrainingWindow,
    trigger: str,
    reason: str,
    sizes: dict,
    sample: dict | None = None,
    ranges: dict | None = None,
    attempt: str | None = None,
) -> tuple[str, str]:
    """One MLflow run: parameters, losses, provenance, plots, the model, registered and tagged with the
    gate's verdict; the alias is not moved here (`promote` does that, after). A retry finds the version
    an earlier try made (the run's `attempt` tag) and never registers a second. Returns (version, run id)."""
    from mlflow.exceptions import MlflowException

    settings = use_tracking(Settings.load())
    done: dict[str, str] = {}
    try:
        return _register(settings, candidate, decision, window, trigger, reason, sizes, sample, done, ranges, attempt)
    except (MlflowException, OSError) as e:
        what = f"version {done['version']} was registered before it failed" if done else "nothing was registered"
        raise RegistryDown(
            f"MLflow at {settings.tracking_uri} did not take the run ({type(e).__name__}): {what}, "
            f"@{settings.model_alias} did not move"
        ) from e


class RegistryDown(RuntimeError):
    """MLflow failed mid-registration; the message says what exists and that no alias moved."""


def _register(
    settings, candidate, decision, window, trigger, reason, sizes, sample, done, ranges, attempt
) -> tuple[str, str]:
    import mlflow
    from prefect import runtime as prefect_runtime

    from models.mlflow.registry import log_checkpoint, use_experiment
    from models.mlflow.tracking import forecast_plot, log_search_trials, loss_plot

    use_experiment(EXPERIMENT)
    # MLflow's own "View run" links open its GenAI view; the flow logs links to the training view instead
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    found = _registered_by(settings.model_name, attempt) if attempt else None
    if found is not None:  # a retry after the version was made: tag it, never register a second one
        done["version"] = found[0]
        return _tag_version(settings, found[0], found[1], decision, window, ranges)
    with mlflow.start_run(run_name=f"retrain-{trigger}") as run:
        mlflow.set_tags(
            {
                "trigger": trigger,
                "trigger_reason": reason or trigger,
                "promoted": str(decision.promote),
                "gate": decision.reason,
                FLOW_RUN_TAG: str(prefect_runtime.flow_run.id or ""),  # `sensorcast retrain --wait` finds it
                ATTEMPT_TAG: attempt or "",  # a retry of this task finds what it already made
                **candidate.lineage,  # where its configuration came from, and why it was or was not warm-started
            }
        )
        mlflow.log_params(
            {
                "lookback": settings.lookback,
                "horizon": settings.horizon,
                "channels": ",".join(window.channels),
                "warm_start": candidate.warm_started,
                "topic": window.provenance.topic,
                "grid_interval_ms": (window.grid or {}).get("interval_ms"),
                "grid_anchor_ms": (window.grid or {}).get("anchor_ms"),
                **{k: v for k, v in candidate.model.cfg.to_dict().items() if k not in ("lookback", "horizon")},
                "search_trials": len(candidate.search.trials) if candidate.search else 0,
                **sizes,
            }
        )
        if candidate.search is not None:  # the trials as child runs, the choice and its budget on this run
            log_search_trials(candidate.search)
        for rec in candidate.result.history:
            mlflow.log_metrics({k: rec[k] for k in ("train_loss", "val_loss", "lr")}, step=rec["epoch"])
        mlflow.log_metrics({f"holdout_mse_{k}": v for k, v in decision.scores.items()})  # in holdout-variance units
        mlflow.log_metrics(
            {f"holdout_mae_{k}_{_metric_name(c)}": v for k, per in decision.raw_mae.items() for c, v in per.items()}
        )
        mlflow.log_metric("train_seconds", candidate.result.seconds)
        mlflow.log_dict(window.provenance.to_dict(), "provenance.json")
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(loss_plot(candidate.result.history, Path(tmp) / "loss.png")))
            if sample is not None:
                mlflow.log_artifact(str(forecast_plot(sample, window.channels, Path(tmp) / "forecast.png")))
        mlflow.log_text(decision.reason, "gate.txt")
        intervals = candidate.intervals or {}
        mlflow.log_dict(intervals, "intervals.json")  # the split-conformal half-widths the version serves with
        mlflow.log_params({"interval_levels": ",".join(intervals.get("half_width", {})) or "none"})
        version = done["version"] = log_checkpoint(candidate.checkpoint, settings.model_name)
    return _tag_version(settings, version, run.info.run_id, decision, window, ranges)


def _metric_name(channel: str) -> str:
    """A channel name as MLflow takes it in a metric key (letters, digits, _ - . / and spaces)."""
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in channel)


def _registered_by(name: str, attempt: str) -> tuple[str, str] | None:
    """(version, run id) that an earlier try of this registration made, if it got that far."""
    import mlflow
    from mlflow import MlflowClient

    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    client = MlflowClient()
    for run in client.search_runs([experiment.experiment_id], filter_string=f"tags.{ATTEMPT_TAG} = '{attempt}'"):
        for v in client.search_model_versions(f"run_id = '{run.info.run_id}'"):
            if v.name == name:
                return v.version, run.info.run_id
    return None


def _tag_version(settings, version: str, run_id: str, decision, window, ranges) -> tuple[str, str]:
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_model_version_tag(settings.model_name, version, "gate", decision.reason)
    client.set_model_version_tag(settings.model_name, version, "holdout_mse", json.dumps(decision.scores))
    client.set_model_version_tag(settings.model_name, version, "holdout_mae", json.dumps(decision.candidate_mae))
    if decision.seasonal_period:  # the monitor scores seasonal naive at the period the gate did
        client.set_model_version_tag(settings.model_name, version, "seasonal_period", str(decision.seasonal_period))
    if ranges:  # what it was trained, validated and held out on: a later gate scores it only after these
        client.set_model_version_tag(settings.model_name, version, "data_ranges", json.dumps(ranges))
    if window.grid:  # the cadence and phase it was trained at: the service slots readings on them
        client.set_model_version_tag(settings.model_name, version, "grid", json.dumps(window.grid))
    return version, run_id


class ChampionMoved(RuntimeError):
    """@champion moved to another version while this run was gating: its verdict is about a champion
    that no longer serves, so the alias is left where it is and the run fails."""


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def promote(version: str, scored_against: str | None) -> str | None:
    """Move the alias to `version` only if it still points where the gate looked (compare-and-set:
    re-read just before the move). Returns None when moved, else the version the alias points to now."""
    from mlflow import MlflowClient

    from models.mlflow.registry import alias_version

    settings = use_tracking(Settings.load())
    client = MlflowClient(settings.tracking_uri)
    now = alias_version(settings.model_name, settings.model_alias)
    if now == version:  # a retry after the move was applied and its answer lost: done, not refused
        return None
    if now != scored_against:
        client.set_model_version_tag(
            settings.model_name,
            version,
            "promotion",
            f"refused: @{settings.model_alias} moved to v{now} during the gate",
        )
        return now
    client.set_registered_model_alias(settings.model_name, settings.model_alias, version)
    return None


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def announce(version: str, run_id: str) -> None:
    """Tell running services at once (they also poll the registry, as the fallback)."""
    from pipeline.kafka import ensure_topics, make_producer

    settings = Settings.load()
    ensure_topics(settings, [settings.models_topic])
    producer = make_producer(settings)
    doc = {"name": settings.model_name, "alias": settings.model_alias, "version": version, "run_id": run_id}
    producer.send(settings.models_topic, key=settings.model_name.encode(), value=json.dumps(doc).encode()).get(30)
    producer.close()
