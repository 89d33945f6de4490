"""`sensorcast bench retrain`: what the retraining loop costs on this machine.

(a) window pull: N simulated readings produced to a fresh topic, then pulled, decoded and aligned
    into the training frame (readings/s, Kafka to frame);
(b) warm start vs from scratch on the same window: a first model trained from scratch plays the
    champion; then one candidate from its weights and one from scratch, same data, same epochs:
    holdout MSE (scaled) and wall time side by side;
(c) the whole retrain flow on that window, wall time.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from pipeline.settings import Settings


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(
    settings: Settings,
    readings: int = 1_000_000,
    entities: int = 100,
    fit_entities: int = 10,
    fit_steps: int = 1500,
    epochs: int = 3,
    log: Callable[[str], None] = print,
) -> dict:
    import logging

    from flows.gate import scaled_mse, time_split, windows
    from flows.retrain import fit
    from flows.window import pull_window
    from models.forecaster import Forecaster
    from models.nets import NAIVE
    from pipeline.kafka import ensure_topics
    from pipeline.tools.producers import simulate, stream_to_kafka

    logging.getLogger("kafka").setLevel(logging.ERROR)  # importing Prefect puts kafka-python's warnings on screen
    doc: dict = {"cpu": cpu_model(), "cpus": os.cpu_count()}
    tag = uuid.uuid4().hex[:6]

    def fresh(name: str) -> Settings:
        s = settings.model_copy(update={"readings_topic": f"bench-retrain-{tag}-{name}"})
        ensure_topics(s, [s.readings_topic])
        return s

    # (a) pull throughput
    s = fresh("pull")
    log(f"(a) producing {readings:,} readings over {entities} entities")
    rows = simulate(entities, 7, start_ms=1_700_000_000_000, interval_ms=60_000)
    sent = stream_to_kafka(s, (next(rows) for _ in range(readings)))
    started = time.perf_counter()
    window = pull_window(s, hours=None)
    seconds = time.perf_counter() - started
    doc["pull"] = {
        "readings": sent.sent,
        "seconds": round(seconds, 2),
        "readings_per_s": round(window.provenance.readings / seconds),
        "rows": window.frame.height,
    }
    log(f"    pulled, decoded and aligned {window.provenance.readings:,} readings in {seconds:.1f} s")

    # (b) warm start vs scratch, on one window; the champion is a first model from scratch
    s = fresh("fit")
    rows = simulate(fit_entities, 7, start_ms=1_700_000_000_000, interval_ms=3_600_000, seed=1)
    stream_to_kafka(s, (next(rows) for _ in range(fit_entities * fit_steps)))
    os.environ.update({"KAFKA_BOOTSTRAP_SERVERS": s.bootstrap_servers, "SENSORCAST_READINGS_TOPIC": s.readings_topic})
    window = pull_window(s, hours=None)
    holdout = windows(time_split(window.timed_series(), s.lookback).holdout, s.lookback, s.horizon, "holdout")
    with tempfile.TemporaryDirectory() as tmp:
        log(f"(b) {fit_entities} entities × {fit_steps} hourly steps, {epochs} epochs each")
        first, _ = fit.fn(window, None, False, epochs, Path(tmp) / "champion")
        champion = Forecaster.from_checkpoint(Path(tmp) / "champion", device="cpu")
        results = {}
        for name, warm in (("warm_start", True), ("scratch", False)):
            cand, _ = fit.fn(window, champion, warm, epochs, Path(tmp) / name)
            net = cand.raw_net()
            results[name] = {
                "holdout_mse": round(scaled_mse(net, holdout, cand.scaler), 5),
                "train_seconds": round(cand.result.seconds, 1),
                "epochs": cand.result.epochs,
                "warm_started": cand.warm_started,
            }
            log(f"    {name}: holdout MSE {results[name]['holdout_mse']} in {results[name]['train_seconds']} s")
        results["persistence_mse"] = round(scaled_mse(NAIVE["persistence"](s.horizon), holdout, first.scaler), 5)
    doc["warm_vs_scratch"] = results

    # (c) the whole flow on the same topic: pull, fit, MLflow run and version, gate, promote, announce
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(
            {
                "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
                "SENSORCAST_MODEL_NAME": f"bench-{tag}",
                "SENSORCAST_MODELS_TOPIC": f"bench-retrain-{tag}-models",
            }
        )
        os.environ.setdefault("PREFECT_HOME", str(Path(tmp) / "prefect"))
        from flows.retrain import retrain

        log(f"(c) the retrain flow end to end, {epochs} epochs (Prefect's temporary server starts first)")
        started = time.perf_counter()
        report = retrain(trigger="manual", reason="benchmark", epochs=epochs)
        doc["flow"] = {"seconds": round(time.perf_counter() - started, 1), "promoted": report["promoted"]}
        log(f"    {doc['flow']['seconds']} s, promoted: {report['promoted']} ({report['gate']})")
    return doc
