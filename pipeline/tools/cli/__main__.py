"""`python -m pipeline.tools.cli`: the `sensorcast` command."""

from pipeline.tools.cli import app

app()
