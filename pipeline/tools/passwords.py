"""The deployment's passwords: none may be a placeholder from `.env.example` or shorter than 12
characters. `sensorcast secrets init` writes a `.env` with random ones; `sensorcast secrets check`
(and the local stack, for the logins it is given) refuse a weak one, naming its variable.

>>> weak("POSTGRES_PASSWORD", "change-me-postgres")
'POSTGRES_PASSWORD is the placeholder from .env.example'
>>> weak("PREFECT_AUTH_STRING", "admin:hunter2")
'PREFECT_AUTH_STRING has a password of 7 characters: at least 12'
>>> weak("MLFLOW_ADMIN_PASSWORD", "x7Fq-2mVbR9tLw") is None
True
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

PLACEHOLDER = "change-me"  # every secret in .env.example starts so (or, as "user:password", its password)
MIN_LENGTH = 12
SECRETS = ("POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD",
           # each app's own login (the MLflow users of pipeline.tools.principals; pipeline.kafka.roles)
           "MLFLOW_SERVICE_PASSWORD", "MLFLOW_MONITOR_PASSWORD", "MLFLOW_RETRAIN_PASSWORD", "MLFLOW_SECRET_KEY",
           "KAFKA_ADMIN_PASSWORD", "KAFKA_CONTROLLER_PASSWORD", "KAFKA_PRODUCER_PASSWORD", "KAFKA_SERVICE_PASSWORD",
           "KAFKA_MONITOR_PASSWORD", "KAFKA_RETRAIN_PASSWORD", "KAFKA_API_PASSWORD",
           "PREFECT_AUTH_STRING", "GRAFANA_ADMIN_PASSWORD")  # fmt: skip
USER_AND_PASSWORD = ("PREFECT_AUTH_STRING",)  # "user:password": the password is what is checked


class WeakSecret(ValueError):
    """A secret that must not be used; the message names every variable and why."""


def weak(name: str, value: str) -> str | None:
    """Why `value` may not be the secret `name` (None: it may)."""
    password = value.split(":", 1)[1] if name in USER_AND_PASSWORD and ":" in value else value
    if password.startswith(PLACEHOLDER) or value.startswith(PLACEHOLDER):
        return f"{name} is the placeholder from .env.example"
    if len(password) < MIN_LENGTH:
        return f"{name} has a password of {len(password)} characters: at least {MIN_LENGTH}"
    return None


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines of a compose `.env` (comments and blank lines skipped; quotes stripped)."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$", line)
        if m and not line.lstrip().startswith("#"):
            out[m.group(1)] = m.group(2).strip().strip("'\"")
    return out


def check(values: dict[str, str], names: tuple[str, ...] = SECRETS) -> None:
    """Raise WeakSecret naming every secret of `names` that is missing, a placeholder or too short."""
    problems = [f"{n} is not set" if not values.get(n) else weak(n, values[n]) for n in names]
    problems = [p for p in problems if p]
    if problems:
        raise WeakSecret("; ".join(problems) + " (`sensorcast secrets init` writes random ones)")


def init_env_file(path: Path, example: Path, force: bool = False) -> list[str]:
    """Write `path` from `example` with a random value for every secret (mode 600); the other lines
    as they are. Refuses to overwrite an existing file unless `force`. Returns the names it filled."""
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists: its passwords are kept (--force writes new ones)")
    filled, lines = [], []
    for line in example.read_text().splitlines():
        m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m and m.group(1) in SECRETS:
            name, value = m.groups()
            fresh = secrets.token_urlsafe(24)
            line = f"{name}={value.split(':', 1)[0]}:{fresh}" if name in USER_AND_PASSWORD else f"{name}={fresh}"
            filled.append(name)
        lines.append(line)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    path.chmod(0o600)  # an older file kept its mode through O_TRUNC
    return filled
