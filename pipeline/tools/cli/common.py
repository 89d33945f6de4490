"""What every command group shares: the app and its sub-apps, the console, the state-folder option,
and the few helpers several commands call (a clear failure, JSON results, a broker for benchmarks, logging)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from pipeline.settings import Settings
from pipeline.tools import stack as stack_mod

# Prefect's temporary server (flows run without PREFECT_API_URL) hit "database is locked" on SQLite with
# its analytics on; nothing here wants them
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# and it gets 20 s to start by default, which a busy 2-core machine has been seen to exceed
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

app = typer.Typer(help="sensorcast: streaming multivariate forecasting on Kafka.", no_args_is_help=True)


def write_json(path: Path | None, doc: dict) -> None:
    """A benchmark's results as JSON at `path` (folders made as needed); nothing when no path was given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    console.print(f"results written to {path}")


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        print(f"sensorcast {version('sensorcast')}")
        raise typer.Exit()


@app.callback()
def _main(
    _version_flag: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """sensorcast: streaming multivariate forecasting on Kafka."""


stack_app = typer.Typer(
    help="The embedded local stack: Kafka (KRaft, from jars), MLflow and Prefect.", no_args_is_help=True
)
bench_app = typer.Typer(help="Benchmarks that write JSON results.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)

StateDir = typer.Option(None, "--state-dir", envvar="SENSORCAST_STATE_DIR", help="state folder of the local stack")


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=1)


def a_broker(settings: Settings) -> None:
    """The benchmarks' broker: the one the settings name, else the local one, started here."""
    if stack_mod.kafka_answers(settings.bootstrap_servers):
        return
    console.print(f"no broker at {settings.bootstrap_servers}: starting the local one")
    try:
        stack_mod.up(settings, ["kafka"], log=lambda m: console.print(m))
    except stack_mod.StackError as e:
        fail(str(e))


def setup_logging(verbose: bool, kafka_level: str = "WARNING") -> None:
    import logging

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("sensorcast").setLevel(logging.INFO)
    logging.getLogger("kafka").setLevel(kafka_level.upper())
