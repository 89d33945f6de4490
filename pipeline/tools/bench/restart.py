"""`sensorcast bench restart`: what a restart costs at fleet size, replay against the window changelog.

For each fleet size a history of 2 × (L + 4) + 2 readings per entity is produced, each record
stamped at its reading's place in the past (one step a second, the sensors' cadence, ending now), as
a fleet's producers would have stamped it over those minutes; the consumer group is committed at its
end, as a service that had read it all would leave it. The service (its own process, kafka-python,
the benchmark iTransformer: L = 96, 7 channels) then starts three times on that group, each timed
from the process's start while one new reading per entity is sent (stamped a step later each time):
- the warm-up: no changelog yet, so it replays, and writes every window to the changelog;
- `SENSORCAST_WINDOW_STATE=replay`: the input read back by time, twice the model's window;
- the changelog: one record per entity, then the input from its marker.
Per path: the time to the first forecast, the time until every entity's new reading is forecast
(every window whole again), the records read as the service's log counts them, and the service's
peak RSS.
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
REPLAY_STEPS = 2 * (LOOKBACK + MAX_FILL_STEPS + 1)  # the replay's span, in readings per entity
INTERVAL_S = 1  # the simulated sensors' cadence (pipeline.tools.producers.simulate)


def send_history(stream: Stream, entities: int, steps: int, base_ms: int, log: Callable[[str], None]) -> None:
    """`steps` readings per entity, step k's records stamped `base_ms` + k intervals, encoded and sent
    a step at a time (a 100,000-entity history is 20 M readings: never all in memory at once)."""
    from pipeline.messages import encode_reading, format_ts

    producer, produce = stream.producer, stream.produce
    started = time.monotonic()
    for step in range(steps):
        record_ms = base_ms + step * INTERVAL_S * 1000
        for _ in range(entities):
            entity, ts, values = next(stream.rows)
            produce(entity.encode(), encode_reading(entity, format_ts(ts), values), record_ms)
        producer.poll(0)
        if (step + 1) % 50 == 0:
            log(f"    history: {step + 1}/{steps} steps sent in {time.monotonic() - started:.0f} s")
    if producer.flush(120):
        raise RuntimeError("the history's sends were not confirmed within 120 s")


def commit_as_read(settings: Settings, last_ms: int) -> None:
    """Commit the consumer group at the readings topic's end, with the last record's timestamp, as a
    service that had read it all would (pipeline.kafka.source: commit_metadata)."""
    from kafka import OffsetAndMetadata

    from pipeline.kafka import make_consumer
    from pipeline.kafka.clients import partitions_of
    from pipeline.kafka.source import commit_metadata

    consumer = make_consumer(settings)
    try:
        tps = partitions_of(consumer, settings.readings_topic, settings.startup_timeout_s)
        ends = consumer.end_offsets(tps)
        consumer.commit({tp: OffsetAndMetadata(ends[tp], commit_metadata(last_ms), -1) for tp in tps})
    finally:
        consumer.close()


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


def _restart(
    env: dict, checkpoint: Path, stream: Stream, sink: ArrivalStamper, entities: int, path: str, record_ms: int
) -> dict:
    """Start the service on `path`, send one reading per entity (records stamped `record_ms`), time
    the forecasts of those."""
    log_path = checkpoint.parent / f"restart-{path}-{uuid.uuid4().hex[:4]}.log"
    sink.take()
    started = time.time()
    proc = ServeProcess(str(checkpoint), {**env, "SENSORCAST_WINDOW_STATE": path}, log_path).start()
    try:
        stream.send(entities, record_ms=record_ms)
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

    steps = REPLAY_STEPS + 2  # the replay's whole span, and a reading more
    result: dict = {"machine": machine(), "lookback": LOOKBACK, "history_steps": steps, "replay_steps": REPLAY_STEPS}
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
            step_ms = INTERVAL_S * 1000
            base_ms = int(time.time() * 1000) - (steps + len(PATHS) + 2) * step_ms  # every stamp in the past
            try:
                log(f"{entities:,} entities: a history of {steps} readings each ({entities * steps:,} readings)")
                send_history(stream, entities, steps, base_ms, log)
                commit_as_read(s, base_ms + (steps - 1) * step_ms)
                warm = _restart(env, checkpoint, stream, sink, entities, "changelog", base_ms + steps * step_ms)
                log(
                    f"    warm-up (no changelog yet: replayed {warm['input_records']:,} records, then wrote "
                    f"every window): every window whole {warm['all_windows_whole_s']:.1f} s"
                )
                row = {"entities": entities, "history_readings": entities * steps, "warm_up": warm, "paths": {}}
                for k, path in enumerate(PATHS, start=1):
                    got = _restart(env, checkpoint, stream, sink, entities, path, base_ms + (steps + k) * step_ms)
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
