"""docker compose's init steps: `sensorcast deploy kafka-config | grant kafka|mlflow` (`pipeline.tools.deploy`)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from pipeline.settings import Settings
from pipeline.tools.cli.common import app, console, fail

deploy_app = typer.Typer(
    help="docker compose's init steps: the secured broker's config, the logins.", no_args_is_help=True
)
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("kafka-config")
def deploy_kafka_config(
    out: Path = typer.Option(
        Path("/etc/sensorcast/kafka"), help="the brokers' config volume (mounted there by them too)"
    ),
    ca_out: Path = typer.Option(Path("/etc/sensorcast/ca"), help="the volume the apps mount: the CA alone"),
    partitions: int = typer.Option(3, help="num.partitions of auto-created topics"),
) -> None:
    """Write the secured brokers' TLS, server.properties, storage-format arguments and admin client config."""
    from pipeline.tools.deploy import write_broker_config
    from pipeline.tools.passwords import WeakSecret, check

    env = {k: os.environ.get(k, "") for k in ("KAFKA_ADMIN_PASSWORD", "KAFKA_CONTROLLER_PASSWORD")}
    try:
        check(env, tuple(env))
    except WeakSecret as e:
        fail(str(e))
    written = write_broker_config(
        out, ca_out, env["KAFKA_ADMIN_PASSWORD"], env["KAFKA_CONTROLLER_PASSWORD"], partitions=partitions
    )
    console.print(f"{out}: {len(written)} files for the secured brokers; the CA in {ca_out / 'ca.pem'}")


@deploy_app.command("grant")
def deploy_grant(system: str = typer.Argument(..., help="kafka or mlflow")) -> None:
    """As the admin (this environment's login): a login per component with only its rights."""
    import time

    from pipeline.kafka.security import kafka_python_security
    from pipeline.tools.deploy import grant_from_env
    from pipeline.tools.stack import kafka_answers

    settings = Settings()
    deadline = time.monotonic() + settings.startup_timeout_s  # the brokers may still be starting
    while system == "kafka" and not kafka_answers(settings.bootstrap_servers, **kafka_python_security(settings)):
        if time.monotonic() > deadline:
            fail(f"no broker answered at {settings.bootstrap_servers} within {settings.startup_timeout_s:.0f} s")
        time.sleep(1.0)
    try:
        roles = grant_from_env(system, settings, os.environ)
    except Exception as e:  # noqa: BLE001 - one clear line for compose's log, then a non-zero exit
        fail(f"could not grant the {system} logins: {e}")
    console.print(f"{system}: logins and rights for {', '.join(roles)}")
