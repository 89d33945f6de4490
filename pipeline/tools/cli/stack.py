"""The local stack: `sensorcast stack up | status | down`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from pipeline.settings import Settings
from pipeline.tools import broker
from pipeline.tools import stack as stack_mod
from pipeline.tools.cli.common import (
    StateDir,
    console,
    fail,
    stack_app,
)


@stack_app.command("up")
def stack_up(
    services: Optional[list[str]] = typer.Argument(None, help="kafka, mlflow, prefect (default: all)"),
    state_dir: Optional[Path] = StateDir,
    kafka_port: Optional[int] = typer.Option(None, help="Kafka PLAINTEXT port"),
    mlflow_port: Optional[int] = typer.Option(None),
    prefect_port: Optional[int] = typer.Option(None),
    brokers: Optional[int] = typer.Option(
        None, "--brokers", help="Kafka brokers (3: a replicated cluster; fixed once the state folder has one)"
    ),
    secure: bool = typer.Option(
        False,
        "--secure",
        help="Kafka on SASL_SSL (SCRAM-SHA-512, a local CA), deny by default; an env file per component",
    ),
) -> None:
    """Start the services in the background and wait until each answers."""
    settings = Settings.load(
        state_dir=state_dir,
        kafka_port=kafka_port,
        mlflow_port=mlflow_port,
        prefect_port=prefect_port,
        kafka_brokers=brokers,
    )
    if secure:
        settings = broker.secured(settings)
    try:
        urls = stack_mod.up(settings, services or None, log=lambda m: console.print(m))
    except stack_mod.StackError as e:
        fail(str(e))
    kafka = any(name.startswith("kafka") for name in urls)  # the services just started
    if kafka and not secure:
        console.print(f"Kafka speaks PLAINTEXT on {settings.host}: no login, no ACLs, for this machine alone; "
                      "`stack up --secure` gives SASL_SSL and a login with its own rights per component")  # fmt: skip
    if kafka and secure:
        from pipeline.tools.principals import grant_roles

        try:
            roles = grant_roles(settings)
        except stack_mod.StackError as e:
            fail(str(e))
        env_file = broker.write_client_env(settings)
        console.print(f"the stack's admin login (every right; for tools, not components) is in {env_file}")
        for role, path in roles.items():
            console.print(f"the {role} connects with its own login and only its rights: `source {path}`")
    if settings.mlflow_auth and "mlflow" in urls:
        from pipeline.tools.principals import grant_mlflow_users

        for role, path in grant_mlflow_users(settings).items():
            console.print(f"the {role}'s own MLflow user, with only its rights: `source {path}`")
    table = Table(title="sensorcast stack")
    table.add_column("service")
    table.add_column("address")
    labels = {"kafka": "Kafka bootstrap", "mlflow": "MLflow UI", "prefect": "Prefect API (UI at its root)"}
    for name, url in urls.items():
        table.add_row(labels.get(name, name.replace("kafka-", "Kafka broker ")), url)
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
