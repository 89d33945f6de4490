"""The MLflow model registry, as sensorcast uses it: log a checkpoint as a registered version, move
an alias, ask which version an alias points at, and fetch a version's checkpoint folder."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from models.checkpoint import META, read_meta

PYFUNC_CODE = Path(__file__).with_name("pyfunc.py")
MODELS_PACKAGE = Path(__file__).resolve().parents[1]  # shipped as code_paths: the pyfunc imports models.forecaster


def pyfunc_example(folder: Path):
    """(input example, signature) for a checkpoint: L rows of its channels in, H rows out (the
    forecast, and the bounds of each level it carries)."""
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature

    from models.forecaster import Forecaster
    from models.mlflow.pyfunc import forecast_frame

    forecaster = Forecaster.from_checkpoint(folder, device="cpu")
    mean = np.asarray(forecaster.meta.scaler["mean"], dtype=np.float32)
    example = pd.DataFrame(np.tile(mean, (forecaster.lookback, 1)), columns=forecaster.channels)
    if forecaster.cycle:  # a model with a cycle takes each reading's time too (its phase)
        grid = forecaster.grid
        example = example.assign(ts=grid["anchor_ms"] + grid["interval_ms"] * np.arange(forecaster.lookback))
    return example, infer_signature(example, forecast_frame(forecaster, example))


MODEL_TRAINING = {"mlflow.experimentKind": "custom_model_development"}  # a model-training experiment


def ui_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's page of a run, or of an experiment's runs table, in its "Model training" view.

    MLflow 3.17's UI opens a bare experiment link on the GenAI overview (traces, an assistant)
    whatever the experiment's kind; `workflowType=machine_learning` opens the training view
    (checked in headless Chromium, docs/retraining.md).

    >>> ui_url("http://127.0.0.1:5000", "1")
    'http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning'
    >>> ui_url("http://127.0.0.1:5000/", "1", "ab12")
    'http://127.0.0.1:5000/#/experiments/1/runs/ab12?workflowType=machine_learning'
    """
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/{page}?workflowType=machine_learning"


def run_url(tracking_uri: str, run_id: str) -> str:
    """`ui_url` of a run known by its id alone (one read of the run, for its experiment)."""
    run = MlflowClient(tracking_uri).get_run(run_id)
    return ui_url(tracking_uri, run.info.experiment_id, run_id)


def use_experiment(name: str) -> str:
    """Make `name` the active experiment (created if missing), marked as a model-training experiment
    so MLflow 3's UI opens it on its runs and metrics rather than the GenAI overview. Returns its id."""
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is None:
        exp_id = client.create_experiment(name, tags=MODEL_TRAINING)
    else:
        exp_id = found.experiment_id
        if found.tags.get("mlflow.experimentKind") is None:
            client.set_experiment_tag(exp_id, "mlflow.experimentKind", MODEL_TRAINING["mlflow.experimentKind"])
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def log_checkpoint(
    folder: Path,
    name: str,
    *,
    alias: str | None = None,
    metrics: dict[str, float] | None = None,
    experiment: str = "sensorcast",
) -> str:
    """Log the checkpoint in the active run (or a new one in `experiment`) and register it; returns
    the version."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    meta = read_meta(folder)
    active = mlflow.active_run()
    if active is None:
        use_experiment(experiment)  # by name in the current store, never a cached id from another
        mlflow.start_run(run_name=f"register-{name}")
    try:
        example, signature = pyfunc_example(folder)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts={"checkpoint": str(folder)},
            code_paths=[str(MODELS_PACKAGE)],
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(),
            registered_model_name=name,
            metadata={"architecture": meta.architecture, "channels": meta.channels},
        )
        if metrics:
            mlflow.log_metrics(metrics)
    finally:
        if active is None:
            mlflow.end_run()
    version = str(info.registered_model_version)
    if alias:
        MlflowClient().set_registered_model_alias(name, alias, version)
    return version


def _requirements() -> list[str]:
    """The packages the pyfunc imports, pinned to what is installed (no "unknown pip version" warning)."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("torch", "safetensors", "numpy", "pandas", "mlflow")]


class RegistryUnavailable(RuntimeError):
    """The registry did not answer (server down, network, storage): not the same as "no such alias"."""


def alias_version(name: str, alias: str) -> str | None:
    """The version `name@alias` points at; None when the model or the alias does not exist. Raises
    RegistryUnavailable for anything else, so a caller never mistakes an outage for "no alias"."""
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException as e:
        missing = e.error_code == "RESOURCE_DOES_NOT_EXIST" or (
            e.error_code == "INVALID_PARAMETER_VALUE" and "alias" in str(e) and "not found" in str(e)
        )
        if missing:
            return None
        raise RegistryUnavailable(f"the model registry did not answer for {name}@{alias}: {e}") from e
    except Exception as e:  # e.g. a broken SQLite file, a proxy speaking HTML
        raise RegistryUnavailable(
            f"the model registry did not answer for {name}@{alias}: {type(e).__name__}: {e}"
        ) from e


def download_checkpoint(name: str, version: str, dst: Path) -> Path:
    """Fetch the version's checkpoint and return the folder that holds model.json. Only the
    checkpoint's files (three requests to a tracking server, not one per file of the pyfunc's code
    copy: a hot swap waits on this); the whole model folder if its layout is not the expected one."""
    try:
        root = mlflow.MlflowClient().get_model_version_download_uri(name, version).rstrip("/") + "/artifacts"
        folders = [e.path for e in mlflow.artifacts.list_artifacts(artifact_uri=root) if e.is_dir]
        if len(folders) == 1:
            sub = folders[0].rsplit("/", 1)[-1]
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/{sub}", dst_path=str(dst)))
            if (local / META).exists():
                return local
    except mlflow.exceptions.MlflowException:
        pass
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)))
    found = [p.parent for p in local.rglob(META)]
    if not found:
        raise FileNotFoundError(f"models:/{name}/{version} holds no sensorcast checkpoint ({META})")
    return found[0]
