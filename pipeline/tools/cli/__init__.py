"""The `sensorcast` command: thin typer wrappers that build Settings and call the modules that do
the work. One module per command group, registered here by import:

    common   the app, its sub-apps and shared helpers    stack    stack up | status | down
    serve    serve, tail, api                            retrain  train, retrain, flows serve | deploy
    monitor  monitor                                     bench    bench accuracy | latency | ...
    produce  produce, plot                               demo     demo
    secrets  secrets init | check                        deploy   kafka-config | grant (compose init)
"""

from __future__ import annotations

import importlib

from pipeline.tools.cli.common import app

# the order `--help` lists them
GROUPS = ("stack", "serve", "produce", "retrain", "monitor", "bench", "demo", "secrets", "deploy")
for _group in GROUPS:  # each module registers its commands on `app` (or its sub-app) as it is imported
    importlib.import_module(f"pipeline.tools.cli.{_group}")


def main() -> None:  # pragma: no cover - console entry point
    app()


__all__ = ["app", "main"]
