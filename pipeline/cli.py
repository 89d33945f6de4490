"""The `sensorcast` command: thin typer wrappers that build Settings and call the modules."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from pipeline import stack as stack_mod
from pipeline.settings import Settings

app = typer.Typer(help="sensorcast: streaming multivariate forecasting on Kafka.", no_args_is_help=True)
stack_app = typer.Typer(help="The embedded local stack: Kafka (KRaft, from jars), MLflow and Prefect.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
console = Console(stderr=True)

StateDir = typer.Option(None, "--state-dir", envvar="SENSORCAST_STATE_DIR", help="state folder of the local stack")


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=1)


# -- stack ---------------------------------------------------------------------------------------


@stack_app.command("up")
def stack_up(
    services: Optional[list[str]] = typer.Argument(None, help="kafka, mlflow, prefect (default: all)"),
    state_dir: Optional[Path] = StateDir,
    kafka_port: Optional[int] = typer.Option(None, help="Kafka PLAINTEXT port"),
    mlflow_port: Optional[int] = typer.Option(None),
    prefect_port: Optional[int] = typer.Option(None),
) -> None:
    """Start the services in the background and wait until each answers."""
    settings = Settings.load(state_dir=state_dir, kafka_port=kafka_port, mlflow_port=mlflow_port, prefect_port=prefect_port)
    try:
        urls = stack_mod.up(settings, services or None, log=lambda m: console.print(m))
    except stack_mod.StackError as e:
        _fail(str(e))
    table = Table(title="sensorcast stack")
    table.add_column("service")
    table.add_column("address")
    labels = {"kafka": "Kafka bootstrap", "mlflow": "MLflow UI", "prefect": "Prefect API (UI at its root)"}
    for name, url in urls.items():
        table.add_row(labels[name], url)
    Console().print(table)


@stack_app.command("status")
def stack_status(state_dir: Optional[Path] = StateDir, as_json: bool = typer.Option(False, "--json")) -> None:
    """Say which services run; --json prints the addresses scripts rely on."""
    settings = Settings.load(state_dir=state_dir)
    if as_json:
        print(stack_mod.status_json(settings))
        return
    table = Table(title="sensorcast stack")
    for col in ("service", "state", "address", "pid", "log"):
        table.add_column(col)
    for name, info in stack_mod.status(settings).items():
        table.add_row(name, str(info["state"]), str(info["url"]), str(info["pid"] or "-"), str(info["log"]))
    Console().print(table)


@stack_app.command("down")
def stack_down(
    services: Optional[list[str]] = typer.Argument(None, help="kafka, mlflow, prefect (default: all)"),
    state_dir: Optional[Path] = StateDir,
) -> None:
    """Stop the services cleanly (SIGTERM, then SIGKILL after 30 s)."""
    settings = Settings.load(state_dir=state_dir)
    stack_mod.down(settings, services or None, log=lambda m: console.print(m))


@app.command("demo")
def demo(state_dir: Optional[Path] = StateDir) -> None:
    """The main job on embedded defaults: start the local stack and create the topics."""
    from pipeline.kafka import ensure_topics

    settings = Settings.load(state_dir=state_dir)
    try:
        stack_mod.up(settings, log=lambda m: console.print(m))
    except stack_mod.StackError as e:
        _fail(str(e))
    ensure_topics(settings)
    console.print(f"topics ready on {settings.bootstrap_servers}; MLflow UI {settings.tracking_uri}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
