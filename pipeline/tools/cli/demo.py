"""`sensorcast demo`: the main job on embedded defaults (`make demo`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from pipeline.settings import Settings
from pipeline.tools import stack as stack_mod
from pipeline.tools.cli.common import (
    StateDir,
    app,
    console,
    fail,
    setup_logging,
)


@app.command("demo")
def demo(
    state_dir: Optional[Path] = StateDir,
    history_hours: int = typer.Option(2160, help="hours of weather streamed before the live part"),
    first_hours: int = typer.Option(720, help="of those, the hours the quick first model trains on"),
    first_epochs: int = typer.Option(1, help="the quick first model's training epochs"),
    hours: int = typer.Option(240, help="hours of weather then replayed live per site"),
    sites: int = typer.Option(3, help="copies of the three airports, a week apart (3 → 9 sites)"),
    rate: float = typer.Option(60.0, help="live readings per second"),
    epochs: int = typer.Option(4, help="training epochs of the second retrain, on everything streamed"),
    duration: Optional[float] = typer.Option(
        None, help="run the live part this many seconds (more, at most 2 min, until a promoted retrain serves)"
    ),
    retrain_midway: bool = typer.Option(True, help="a second retrain on demand halfway through the live part"),
    keep_stack: bool = typer.Option(True, help="leave the stack running to browse MLflow and Prefect afterwards"),
) -> None:
    """The closed loop on embedded defaults: stack, first retrain from the topic, live forecasts in a
    live view, a second retrain midway, summary. Ctrl-C stops what it started."""
    from pipeline.tools.demo import run_demo

    setup_logging(False)
    settings = Settings.load(state_dir=state_dir)
    try:
        summary = run_demo(
            settings,
            history_hours=history_hours,
            first_hours=first_hours,
            first_epochs=first_epochs,
            hours=hours,
            sites=sites,
            rate=rate,
            epochs=epochs,
            duration=duration,
            retrain_midway=retrain_midway,
            live_view=sys.stdout.isatty(),
            keep_stack=keep_stack,
            log=lambda m: console.print(m),
        )
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except (stack_mod.StackError, RuntimeError) as e:
        fail(str(e))
    if summary["forecasts"] == 0 or summary["service_exit_code"] != 0:
        fail(f"the demo did not run cleanly: {summary}")
