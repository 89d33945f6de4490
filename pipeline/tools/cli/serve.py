"""The service and its readers: `serve`, `tail`, `api`."""

from __future__ import annotations

from typing import Optional

import typer

from pipeline.settings import Settings
from pipeline.tools import stack as stack_mod
from pipeline.tools.cli.common import (
    app,
    console,
    fail,
    setup_logging,
)


@app.command("serve")
def serve_cmd(
    model: Optional[str] = typer.Option(
        None, "--model", help="checkpoint folder or models:/NAME@ALIAS (default: the registry's champion)"
    ),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda"),
    max_batch: Optional[int] = typer.Option(None, help="most readings in one micro-batch"),
    max_wait_ms: Optional[float] = typer.Option(None, help="how long a poll waits for readings when idle"),
    metrics_port: Optional[int] = typer.Option(None, help="Prometheus port (0 = off)"),
    group: Optional[str] = typer.Option(None, help="consumer group"),
    kafka_client: Optional[str] = typer.Option(
        None, "--kafka-client", help="kafka-python (default) or confluent (librdkafka; instances share partitions)"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Consume readings, forecast every channel H steps ahead, publish forecasts; SIGTERM stops cleanly."""
    from pipeline.kafka import KafkaUnavailable
    from pipeline.model_source import ModelUnavailable
    from pipeline.serve import serve

    settings = Settings.load(
        model_uri=model,
        device=device,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        metrics_port=metrics_port,
        consumer_group=group,
        kafka_client=kafka_client,
    )
    setup_logging(verbose, settings.kafka_log_level)
    try:
        raise typer.Exit(serve(settings))
    except (ModelUnavailable, KafkaUnavailable, ValueError) as e:
        fail(str(e))


@app.command("tail")
def tail_cmd(
    limit: Optional[int] = typer.Option(None, help="stop after this many forecasts"),
    from_beginning: bool = typer.Option(False, help="start at the oldest forecast, not the newest"),
    dead_letters: bool = typer.Option(False, "--dlq", help="tail the dead-letter topic instead"),
    timeout: Optional[float] = typer.Option(None, help="stop after this many idle seconds"),
) -> None:
    """Print live forecasts (or dead letters) as they arrive."""
    import time

    import orjson

    from pipeline.kafka import topic_reader

    settings = Settings.load()
    topic = settings.dlq_topic if dead_letters else settings.forecasts_topic
    consumer = topic_reader(settings, topic, from_beginning=from_beginning)
    shown, idle_since = 0, time.monotonic()
    try:
        while limit is None or shown < limit:
            batches = consumer.poll(timeout_ms=500)
            if not batches:
                if timeout is not None and time.monotonic() - idle_since > timeout:
                    break
                continue
            idle_since = time.monotonic()
            for r in (r for records in batches.values() for r in records):
                if limit is not None and shown >= limit:
                    break
                doc = orjson.loads(r.value)
                if dead_letters:
                    print(f"{doc['reason']:>16}  {doc['topic']}[{doc['partition']}]@{doc['offset']}  {doc['error']}")
                else:
                    first = ", ".join(f"{c} {v[0]:.3g}→{v[-1]:.3g}" for c, v in list(doc["forecast"].items())[:4])
                    print(f"{doc['entity']:>14} {doc['ts']}  v{doc['model']['version']}  H={doc['horizon']}  {first}")
                shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


@app.command("api")
def api_cmd(
    port: int = typer.Option(8000, help="HTTP port"),
    host: Optional[str] = typer.Option(None, help="address to bind (default: the settings' host, 127.0.0.1)"),
    history_hours: float = typer.Option(24.0, help="load the forecasts of the last HOURS on start"),
) -> None:
    """The latest forecast per entity over HTTP: GET /forecasts/ENTITY, /forecasts?entity=A&entity=B,
    /forecasts, /healthz. A process of its own: queries never touch the serving loop."""
    import signal
    import threading

    from pipeline.api import ForecastApi

    setup_logging(False)
    settings = Settings.load()
    if not stack_mod.kafka_answers(settings.bootstrap_servers):
        fail(f"no Kafka at {settings.bootstrap_servers}; start the local stack with `sensorcast stack up`")
    try:
        api = ForecastApi(settings, port, host, history_s=history_hours * 3600).start()
    except OSError as e:
        fail(f"cannot listen on port {port}: {e}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    console.print(f"forecasts of {settings.forecasts_topic} at http://{host or settings.host}:{api.port}/forecasts")
    stop.wait()
    api.close()
