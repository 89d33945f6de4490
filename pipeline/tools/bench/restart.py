"""`sensorcast bench restart`: what a restart costs at fleet size, replay against the window changelog.

For each fleet size the service (its own process, kafka-python, the benchmark iTransformer: L = 96,
7 channels) first reads a history of 2 × (L + 4) + 2 readings per entity, filling every window and
the changelog, and stops cleanly. It is then restarted twice on the same consumer group, each time
timed from the process's start while one new reading per entity is sent: once with
`SENSORCAST_WINDOW_STATE=replay` (the input read back by time, twice the model's window: here all of
the history, as it was produced in one burst), then with the changelog (one record per entity, then
the input from its marker). Per path: the time to the first forecast, the time until every entity's
new reading is forecast (every window whole again), the records read as the service's log counts
them, and the service's peak RSS.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from pipeline.settings import Settings
from pipeline.tools.bench.in_memory import LOOKBACK, bench_checkpoint
from pipeline.tools.bench.report import machine
from pipeline.tools.bench.rig import ArrivalStamper, Stream, own_topics
from pipeline.tools.child import ServeProcess

PATHS = ("replay", "changelog")
MAX_FILL_STEPS = 3  # the service's default: the replay reads back 2 × (L + this + 1) intervals
INTERVAL_S = 1  # the simulated sensors' cadence (pipeline.tools.producers.simulate)


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set (VmHWM), MB; None where /proc does not say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def records_read(log: str) -> dict[str, int]:
    """What the restarted service says it read: windows from the changelog, records replayed."""
    windows = sum(int(n) for n in re.findall(r"partition \d+: (\d+) windows from the changelog", log))
    after = sum(int(n) for n in re.findall(r"windows from the changelog, then (\d+) records", log))
    replayed = sum(int(n) for n in re.findall(r"replaying (\d+) records", log))
    return {"changelog_records": windows, "input_records": after + replayed}


def _restart(env: dict, checkpoint: Path, stream: Stream, sink: ArrivalStamper, entities: int, path: str) -> dict:
    """Start the service on `path`, send one reading per entity, time the forecasts of those."""
    log_path = checkpoint.parent / f"restart-{path}-{uuid.uuid4().hex[:4]}.log"
    sink.take()
    started = time.time()
    proc = ServeProcess(str(checkpoint), {**env, "SENSORCAST_WINDOW_STATE": path}, log_path).start()
    try:
        stream.send(entities)
        wanted, arrived = set(stream.last), {}
        deadline = time.monotonic() + 600
        while len(arrived) < len(wanted) and time.monotonic() < deadline and proc.proc.poll() is None:
            time.sleep(0.05)
            for ident, at in sink.take():
                if ident in wanted:
                    arrived.setdefault(ident, at)
        rss = peak_rss_mb(proc.proc.pid)
    finally:
        proc.stop(grace_s=60)
    if len(arrived) < len(wanted):
        raise RuntimeError(f"{path}: {len(arrived)} of {len(wanted)} forecasts; the log ends:\n{proc.output()[-3000:]}")
    times = sorted(at - started for at in arrived.values())
    return {
        "path": path,
        "first_forecast_s": round(times[0], 3),
        "all_windows_whole_s": round(times[-1], 3),
        **records_read(proc.output()),
        "peak_rss_mb": rss,
    }


def run(settings: Settings, fleet: tuple[int, ...], log: Callable[[str], None] = print) -> dict:
    from pipeline.kafka import ensure_topics

    steps = 2 * (LOOKBACK + MAX_FILL_STEPS + 1) + 2  # the replay's whole span, and a reading more
    result: dict = {"machine": machine(), "lookback": LOOKBACK, "history_steps": steps}
    rows = []
    with tempfile.TemporaryDirectory(prefix="sensorcast-restart-") as tmp:
        checkpoint = bench_checkpoint(Path(tmp) / "model")
        for entities in fleet:
            tag = uuid.uuid4().hex[:6]
            s = own_topics(settings, tag).model_copy(update={"consumer_group": f"bench-{tag}"})
            ensure_topics(s)
            env = {
                **os.environ,
                **{k: v for k, v in s.as_env().items() if k.startswith("SENSORCAST_KAFKA_S")},
                "KAFKA_BOOTSTRAP_SERVERS": s.bootstrap_servers,
                "SENSORCAST_READINGS_TOPIC": s.readings_topic,
                "SENSORCAST_FORECASTS_TOPIC": s.forecasts_topic,
                "SENSORCAST_DLQ_TOPIC": s.dlq_topic,
                "SENSORCAST_MODELS_TOPIC": s.models_topic,
                "SENSORCAST_CALIBRATION_TOPIC": s.calibration_topic,
                "SENSORCAST_CONSUMER_GROUP": s.consumer_group,
                "SENSORCAST_KAFKA_CLIENT": "kafka-python",
                "SENSORCAST_METRICS_PORT": "0",
                "SENSORCAST_MAX_FUTURE_S": "0",  # simulated clocks run ahead of the records' (see bench latency)
                "SENSORCAST_READING_INTERVAL_S": str(INTERVAL_S),  # a grid: the replay reads back by time
            }
            stream, sink = Stream(s, entities), ArrivalStamper(s)
            try:
                log(f"{entities:,} entities: a history of {steps} readings each ({entities * steps:,} readings)")
                stream.send(entities * steps)
                first = _restart(env, checkpoint, stream, sink, entities, "changelog")  # fills windows and changelog
                log(f"    warm-up read it all: {first['all_windows_whole_s']:.1f} s")
                row = {"entities": entities, "history_readings": entities * steps, "paths": {}}
                for path in PATHS:
                    got = _restart(env, checkpoint, stream, sink, entities, path)
                    row["paths"][path] = got
                    log(
                        f"    {path:>9}: first forecast {got['first_forecast_s']:.2f} s, every window whole "
                        f"{got['all_windows_whole_s']:.2f} s, read {got['changelog_records']:,} changelog + "
                        f"{got['input_records']:,} input records, peak RSS {got['peak_rss_mb']} MB"
                    )
                rows.append(row)
            finally:
                sink.close()
                stream.close()
    result["fleets"] = rows
    return result
