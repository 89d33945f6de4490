"""The deployment's passwords: `sensorcast secrets init | check`."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from pipeline.settings import REPO_ROOT
from pipeline.tools.cli.common import app, console, fail
from pipeline.tools.passwords import SECRETS, WeakSecret, check, init_env_file, read_env_file

secrets_app = typer.Typer(help="The deployment's passwords (.env for docker compose).", no_args_is_help=True)
app.add_typer(secrets_app, name="secrets")
EnvFile = typer.Option(Path(".env"), "--env-file", help="the .env docker compose reads")


@secrets_app.command("init")
def secrets_init(
    env_file: Path = EnvFile,
    example: Path = typer.Option(REPO_ROOT / ".env.example", help="the template: every other line is kept"),
    force: bool = typer.Option(False, "--force", help="write new passwords over an existing file"),
) -> None:
    """Write a .env with a random password for every secret (mode 600)."""
    try:
        filled = init_env_file(env_file, example, force=force)
    except (FileExistsError, FileNotFoundError) as e:
        fail(str(e))
    console.print(f"{env_file}: random values for {', '.join(filled)} (mode 600; never commit it)")


@secrets_app.command("check")
def secrets_check(
    env_file: Path = EnvFile,
    from_env: bool = typer.Option(False, "--from-env", help="check this process's environment (compose's step)"),
) -> None:
    """Refuse a missing, placeholder or short secret, naming each: in a .env, or in the environment."""
    if not from_env and not env_file.exists():
        fail(f"{env_file} does not exist: `sensorcast secrets init` writes one")
    try:
        check(dict(os.environ) if from_env else read_env_file(env_file))
    except WeakSecret as e:
        fail(str(e))
    where = "the environment" if from_env else str(env_file)
    console.print(f"{where}: {len(SECRETS)} secrets set, none a placeholder or shorter than 12 characters")
