"""The drift monitor: `sensorcast monitor`."""

from __future__ import annotations

import os

import typer

from pipeline.settings import Settings
from pipeline.tools.cli.common import (
    app,
    console,
    fail,
    setup_logging,
)


@app.command("monitor")
def monitor_cmd(
    threshold: float = typer.Option(
        2.0, help="fire when the rolling MAE exceeds this multiple of the champion's holdout MAE"
    ),
    patience: int = typer.Option(20, help="... for this many scored readings of one entity in a row"),
    cooldown: float = typer.Option(3600.0, help="seconds between two firings for one entity"),
    window: int = typer.Option(200, help="scored steps in the rolling MAE, per entity and channel"),
    metrics_port: int = typer.Option(9309, help="Prometheus metrics (0: none)"),
    summary_every: float = typer.Option(60.0, help="seconds between two summaries logged to MLflow"),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Watch live forecasts against the readings that arrive; emit a Prefect drift event when they part.
    Score the forecasts' intervals too, adapt them and publish the multipliers the service applies."""
    import signal
    import threading
    import time

    from prometheus_client import start_http_server

    from flows.calibration import CoverageGauges
    from flows.monitor import DriftMonitor
    from flows.monitor_outputs import MlflowLog, champion_reference, emit_drift_event, mae_ratio_gauge
    from pipeline.kafka import ensure_topics, make_producer

    setup_logging(verbose)
    settings = Settings.load()
    os.environ.setdefault("PREFECT_API_URL", settings.prefect_url)
    try:
        version, reference, period = champion_reference(settings)
    except Exception as e:
        fail(f"no champion to measure against: {e}")
    gauge = mae_ratio_gauge()
    if metrics_port:
        start_http_server(metrics_port, addr=settings.metrics_host)
    mlflow_log = MlflowLog(settings, version)

    def on_drift(detail: dict) -> None:
        mlflow_log.drift(detail)
        emit_drift_event(settings, detail)

    ensure_topics(settings, [settings.calibration_topic])  # compacted: the latest multipliers per version
    producer = make_producer(settings)

    def publish(key: bytes, value: bytes) -> None:
        producer.send(settings.calibration_topic, key=key, value=value)

    monitor = DriftMonitor(
        settings, reference, on_drift, threshold, patience, cooldown, window, gauge,
        version=version, reference=lambda: champion_reference(settings), on_champion=mlflow_log.new_champion,
        ttl_s=settings.entity_ttl_s, publish=publish, coverage_gauges=CoverageGauges(), seasonal_period=period,
    )  # fmt: skip
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    console.print(f"watching {settings.forecasts_topic} against {settings.readings_topic} (champion v{version})")
    try:
        monitor.run(stop, time.monotonic, on_summary=mlflow_log.metrics, summary_every_s=summary_every)
    finally:
        producer.flush(10)
        producer.close()
