"""`sensorcast bench retrain`: what the retraining loop costs on this machine.

(a) window pull: N simulated readings produced to a fresh topic, then pulled, decoded and aligned
    into the training frame, each pull in a process of its own: readings/s (Kafka to frame) and the
    most resident memory the pull added, at N/4 and N readings (the cap, `retrain_max_readings`,
    picks how many): the difference is what a million more readings cost;
(b) warm start vs from scratch, the way it is used: the champion is trained on the earlier 60% of
    the time range; then one candidate from its weights and one from scratch on the whole range
    (new data since), same epochs, scored on the same holdout (the last 20%, which the champion
    never saw): holdout MSE (scaled) and wall time side by side;
(c) the whole retrain flow on that window, wall time.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
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

    import polars as pl

    from flows.candidate import fit
    from flows.gate import scaled_mse, time_split, windows
    from flows.window import TrainingWindow, pull_window
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

    # (a) pull throughput and memory, each pull in a fresh process
    s = fresh("pull")
    log(f"(a) producing {readings:,} readings over {entities} entities")
    rows = simulate(entities, 7, start_ms=1_700_000_000_000, interval_ms=60_000)
    sent = stream_to_kafka(s, (next(rows) for _ in range(readings)))
    pulls = [_pull_in_child(s, n) for n in (readings // 4, readings)]
    small, big = pulls
    per_million = (big["peak_added_mb"] - small["peak_added_mb"]) / ((big["readings"] - small["readings"]) / 1e6)
    doc["pull"] = {
        "readings": sent.sent,
        "pulls": pulls,
        "readings_per_s": big["readings_per_s"],
        "mb_per_million_readings": round(per_million, 1),
        "channels": 7,
    }
    for p in pulls:
        rate, added = f"{p['readings_per_s']:,}/s", p["peak_added_mb"]
        log(f"    {p['readings']:,} readings: {p['seconds']} s ({rate}), {added} MB added at the peak")
    log(f"    {per_million:.0f} MB more per million readings (7 channels)")

    # (b) warm start vs scratch, as used: a champion on the earlier data, then a later, longer window
    s = fresh("fit")
    rows = simulate(fit_entities, 7, start_ms=1_700_000_000_000, interval_ms=3_600_000, seed=1)
    stream_to_kafka(s, (next(rows) for _ in range(fit_entities * fit_steps)))
    os.environ.update({"KAFKA_BOOTSTRAP_SERVERS": s.bootstrap_servers, "SENSORCAST_READINGS_TOPIC": s.readings_topic})
    window = pull_window(s, hours=None)
    ts = window.frame["ts"]
    cut = int(ts.min() + 0.6 * (ts.max() - ts.min()))
    earlier = TrainingWindow(window.frame.filter(pl.col("ts") < cut), window.channels, window.provenance)
    splits = time_split(window.timed_series(), s.lookback)
    holdout = windows(splits.holdout, s.lookback, s.horizon, "holdout")
    with tempfile.TemporaryDirectory() as tmp:
        log(f"(b) {fit_entities} entities × {fit_steps} hourly steps; champion on the first 60%, {epochs} epochs each")
        fit.fn(earlier, None, False, epochs, Path(tmp) / "champion")
        champion = Forecaster.from_checkpoint(Path(tmp) / "champion", device="cpu")
        results: dict = {"champion_trained_until": _iso(cut), "holdout_from": _iso(splits.ranges["holdout"][0])}
        scaler = None
        for name, warm in (("warm_start", True), ("scratch", False)):
            cand, _ = fit.fn(window, champion, warm, epochs, Path(tmp) / name)
            scaler = scaler or cand.scaler
            results[name] = {
                "holdout_mse": round(scaled_mse(cand.raw_net(), holdout, scaler), 5),
                "train_seconds": round(cand.result.seconds, 1),
                "epochs": cand.result.epochs,
                "warm_started": cand.warm_started,
            }
            log(f"    {name}: holdout MSE {results[name]['holdout_mse']} in {results[name]['train_seconds']} s")
        results["champion_mse"] = round(scaled_mse(champion.net.cpu(), holdout, scaler), 5)
        results["persistence_mse"] = round(scaled_mse(NAIVE["persistence"](s.horizon), holdout, scaler), 5)
        log(f"    the champion as it was: {results['champion_mse']}; persistence: {results['persistence_mse']}")
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


PULL = """
import json, os, sys, threading, time
from flows.window import pull_window
from pipeline.settings import Settings

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

settings = Settings.load(retrain_max_readings=int(sys.argv[1]))
before, peak, done = rss_mb(), [0.0], threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.005)

threading.Thread(target=sample, daemon=True).start()
started = time.perf_counter()
window = pull_window(settings, hours=None)
seconds = time.perf_counter() - started
done.set()
peak[0] = max(peak[0], rss_mb())
print(json.dumps({"readings": window.provenance.readings, "seconds": round(seconds, 2),
    "readings_per_s": round(window.provenance.readings / seconds), "rows": window.frame.height,
    "rss_before_mb": round(before, 1), "peak_added_mb": round(peak[0] - before, 1)}))
"""


def _pull_in_child(settings: Settings, cap: int) -> dict:
    """Pull the topic capped at `cap` readings in a fresh process: its figures, and the most resident
    memory the pull added to the process (sampled every 5 ms), untouched by what this process did."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "SENSORCAST_READINGS_TOPIC": settings.readings_topic,
    }
    done = subprocess.run(
        [sys.executable, "-c", PULL, json.dumps(cap)], env=env, capture_output=True, text=True, timeout=3600
    )
    if done.returncode != 0:
        raise RuntimeError(f"the pull of {cap} readings failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _iso(ts_ms: int) -> str:
    from pipeline.messages import format_ts

    return format_ts(ts_ms)
