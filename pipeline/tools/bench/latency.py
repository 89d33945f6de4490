"""`sensorcast bench latency`: the service's speed, measured side by side in one run.

Against the real broker: the service runs as its own process (`sensorcast serve`), the producer in
this process, and a sink that stamps each forecast's arrival in a third process, so no two of them
share a GIL. End-to-end latency is the sink's arrival time minus the moment the reading was due.
Each Kafka client is measured twice in the same run: the service, and the same loop with no model
(`sensorcast bench relay`: the floor Kafka and the client set on this machine). The load generator
and the stamper use confluent-kafka, the fastest client, for every row.
`--in-memory` drives the same core without Kafka (the path to measure on a GPU machine).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.settings import Settings
from pipeline.tools.bench.report import cpu_seconds, machine, percentiles
from pipeline.tools.child import CliProcess, RelayProcess, ServeProcess

CHANNELS = 7
LOOKBACK, HORIZON = 96, 24
BURST_S = 0.001  # the load generator sends what is due at least this often
KAFKA_CLIENTS = ("kafka-python", "confluent")
LADDER = (2000, 4000, 6000, 8000, 10000, 12000, 16000, 20000, 25000, 30000)


def bench_checkpoint(folder: Path) -> Path:
    """The benchmark model: the iTransformer size `sensorcast train` writes by default (weights need
    no training to be timed)."""
    import torch

    from models.checkpoint import save
    from models.data import Scaler
    from models.nets import PRESETS, ITransformer, ITransformerConfig

    torch.manual_seed(0)
    model = ITransformer(ITransformerConfig(lookback=LOOKBACK, horizon=HORIZON, **PRESETS["serving"]))
    save(folder, model, [f"ch{j}" for j in range(CHANNELS)], Scaler.identity(CHANNELS), name="bench-itransformer")
    return folder


# -- inference only ------------------------------------------------------------------------------


def inference_table(forecaster, batches=(1, 8, 64, 256), reps: int = 200) -> list[dict]:
    rows = []
    for b in batches:
        x = np.random.default_rng(b).normal(size=(b, forecaster.lookback, len(forecaster.channels))).astype(np.float32)
        for _ in range(10):
            forecaster.predict(x)
        times = []
        n = reps if b <= 64 else max(30, reps // 4)
        for _ in range(n):
            t = time.perf_counter()
            forecaster.predict(x)
            times.append((time.perf_counter() - t) * 1000)
        rows.append(
            {
                "batch": b,
                "p50_ms": round(statistics.median(times), 4),
                "p99_ms": round(float(np.percentile(times, 99)), 4),
            }
        )
    return rows


# -- in memory -----------------------------------------------------------------------------------


class NoForward:
    """The serving model with its forward pass taken out (zeros at once): the loop's own ceiling, what
    decode, windows, encode and accounting allow when the forward pass costs nothing (a fast GPU)."""

    def __init__(self, model):
        self.channels, self.lookback, self.horizon = model.channels, model.lookback, model.horizon
        self.name, self.version, self.input_bounds, self.grid = "no-forward", "0", model.input_bounds, model.grid

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.zeros((len(x), self.horizon, len(self.channels)), dtype=np.float32)


def in_memory(
    device: str,
    entities: int = 100,
    readings: int = 50_000,
    max_batch: int = 256,
    log: Callable[[str], None] = print,
) -> dict:
    """The core without Kafka: batched vs one-reading-at-a-time throughput, and inference per batch."""
    import torch

    from models.forecaster import Forecaster
    from pipeline.core import ForecastCore, ModelSlot, ServiceConfig
    from pipeline.loop import run
    from pipeline.messages import encode_reading, format_ts
    from pipeline.records import Record
    from pipeline.testing import MemorySink, MemorySource
    from pipeline.tools.producers import simulate

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        forecaster = Forecaster.from_checkpoint(bench_checkpoint(Path(tmp)), device=device)
    forecaster.warm_up()
    rows = simulate(entities, CHANNELS, start_ms=0)
    warm = [
        Record(encode_reading(e, format_ts(t), v), e.encode())
        for e, t, v in (next(rows) for _ in range(entities * (LOOKBACK - 1)))
    ]
    stream = [
        Record(encode_reading(e, format_ts(t), v), e.encode()) for e, t, v in (next(rows) for _ in range(readings))
    ]

    def throughput(max_batch: int, limit: int, model=forecaster) -> float:
        """The service's own loop (pipelined forward passes included) until the source is drained."""
        core = ForecastCore(ModelSlot(model), ServiceConfig(max_batch=max_batch))
        core.process(warm)
        src, sink, stop = MemorySource(stream[:limit]), MemorySink(), threading.Event()

        class StopWhenDrained:
            def on_batch(self, stats, records, published_at):
                if src.position >= limit:
                    stop.set()

        t = time.perf_counter()
        run(src, sink, core, stop, StopWhenDrained())
        elapsed = time.perf_counter() - t
        if len(sink.on(core.cfg.forecasts_topic)) != limit:
            raise RuntimeError(f"in-memory run forecast {len(sink.on(core.cfg.forecasts_topic))} of {limit} readings")
        return limit / elapsed

    batched = throughput(max_batch, readings)
    log(f"in-memory batched: {batched:,.0f} readings/s")
    ceiling = throughput(max_batch, readings, NoForward(forecaster))
    log(f"in-memory batched, forward pass taken out: {ceiling:,.0f} readings/s (the loop's own ceiling)")
    naive = throughput(1, min(readings, 5_000))
    log(f"in-memory naive (batch 1): {naive:,.0f} readings/s")
    return {
        "mode": "in-memory",
        "entities": entities,
        "max_batch": max_batch,
        "device": str(forecaster.device),
        "device_name": torch.cuda.get_device_name(0) if forecaster.device.type == "cuda" else "cpu",
        "batched_readings_per_s": round(batched),
        "naive_readings_per_s": round(naive),
        "speedup": round(batched / naive, 2),
        "no_forward_readings_per_s": round(ceiling),
        "inference": inference_table(forecaster),
    }


# -- against the broker ----------------------------------------------------------------------------


def _sink_process(bootstrap: str, topic: str, conn, ready) -> None:
    """Stamp each forecast's arrival; hand the stamps over when asked. confluent-kafka, the fastest
    client, for every row: the stamper takes as little of the two cores as it can."""
    import orjson
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-sink-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,
        }
    )
    consumer.subscribe([topic])
    while not consumer.assignment():
        consumer.poll(0.1)
    gc.collect()
    gc.freeze()  # no full collection walks the imports while stamping arrivals (see pipeline.serve)
    ready.set()
    seen: list[tuple[str, float]] = []
    while True:
        first = consumer.poll(0.02)
        now = time.time()
        if first is not None:
            for m in [first, *consumer.consume(10_000, 0)]:
                if m.error() is None:
                    doc = orjson.loads(m.value())
                    seen.append((f"{doc['entity']}|{doc['ts']}", now))
        if conn.poll():
            if conn.recv() == "stop":
                conn.send(seen)
                break
            conn.send(seen)
            seen = []
    consumer.close()


@dataclass
class Rig:
    checkpoint: Path
    env: dict


class ArrivalStamper:
    """Stamps the arrival time of every forecast, in a process of its own (off this process's GIL)."""

    def __init__(self, settings: Settings):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        ready = ctx.Event()
        self.proc = ctx.Process(
            target=_sink_process, args=(settings.bootstrap_servers, settings.forecasts_topic, child, ready), daemon=True
        )
        self.proc.start()
        if not ready.wait(60):
            raise RuntimeError("the benchmark sink did not join within 60 s")

    def take(self) -> list[tuple[str, float]]:
        self.conn.send("take")
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send("stop")
        self.conn.recv()
        self.proc.join(10)


def _start(rig: Rig, group: str, max_batch: int, client: str, relay: bool) -> CliProcess:
    """The service (or the no-model relay) on `client`, as a process of its own."""
    env = {
        **rig.env,
        "SENSORCAST_CONSUMER_GROUP": group,
        "SENSORCAST_MAX_BATCH": str(max_batch),
        "SENSORCAST_KAFKA_CLIENT": client,
    }
    log_path = rig.checkpoint.parent / f"{'relay' if relay else 'service'}-{group}.log"
    proc = RelayProcess(env, log_path) if relay else ServeProcess(str(rig.checkpoint), env, log_path)
    return proc.start()


def _stop_service(proc: CliProcess) -> None:
    proc.stop(grace_s=30)


class Stream:
    """Simulated sensors, paced, remembering when each reading was sent (confluent-kafka's producer,
    the fastest client, for every row)."""

    def __init__(self, settings: Settings, entities: int):
        from confluent_kafka import Producer

        from pipeline.kafka.confluent import producer_config
        from pipeline.tools.producers import simulate

        self.topic = settings.readings_topic
        self.rows = simulate(entities, CHANNELS, start_ms=1_800_000_000_000)
        self.producer = Producer(producer_config(settings, **{"linger.ms": 5, "client.id": "bench-load"}))
        self.sent: dict[str, float] = {}  # reading → when it was due (paced) or sent (flat out), wall clock
        self.last: set[str] = set()  # the readings of the latest `send`

    def _produce(self, key: bytes, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.topic, value, key)
                return
            except BufferError:
                self.producer.poll(0.01)

    def send(self, n: int, rate: float = 0) -> float:
        """Send n readings at `rate` a second (0 = flat out); returns the achieved rate. The readings
        are encoded before the clock starts, so the load generator spends its share of the two
        cores on sending, not on making up data."""
        from pipeline.messages import encode_reading, format_ts

        ready = []
        for _ in range(n):
            entity, ts, values = next(self.rows)
            stamp = format_ts(ts)
            ready.append((f"{entity}|{stamp}", entity.encode(), encode_reading(entity, stamp, values)))
        produce, sent, clock = self._produce, self.sent, time.perf_counter
        self.last = {ident for ident, _, _ in ready}
        started, started_wall, i = clock(), time.time(), 0
        while i < n:  # every millisecond, what is due: a sleep per reading would cost more than the send
            due = n if not rate else min(n, int((clock() - started) * rate) + 1)
            for k in range(i, due):
                ident, key, value = ready[k]
                # latency counts from when the reading was due, not from when the generator got to it
                sent[ident] = started_wall + k / rate if rate else time.time()
                produce(key, value)
            i = due
            self.producer.poll(0)
            if i < n:
                time.sleep(BURST_S)
        if self.producer.flush(30):
            raise RuntimeError("the load generator's sends were not confirmed within 30 s")
        return n / (clock() - started)

    def close(self) -> None:
        self.producer.flush(30)


def _latencies(stream: Stream, stamps: dict[str, float]) -> list[float]:
    return [(arrived - stream.sent[k]) * 1000 for k, arrived in stamps.items()]


def _wait_for(sink: ArrivalStamper, n: int, timeout_s: float) -> list[tuple[str, float]]:
    got: list[tuple[str, float]] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        time.sleep(0.2)
        got.extend(sink.take())
    return got


def _wait_for_readings(sink: ArrivalStamper, wanted: set[str], timeout_s: float) -> dict[str, float]:
    """The first forecast of each wanted reading, as it arrived; forecasts of other readings are
    ignored, so a step counts only its own readings."""
    got: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(got) < len(wanted) and time.monotonic() < deadline:
        time.sleep(0.2)
        for ident, arrived in sink.take():
            if ident in wanted and ident not in got:
                got[ident] = arrived
    return got


def against_kafka(
    settings: Settings,
    client: str = "kafka-python",
    relay: bool = False,
    rate: int = 1000,
    entities: int = 100,
    duration_s: float = 30.0,
    ladder: tuple[int, ...] = LADDER,
    step_s: float = 8.0,
    drain_readings: int = 20_000,
    log: Callable[[str], None] = print,
    keep_logs: bool | None = None,
) -> dict:
    """(a) latency at `rate`, (b) the highest rung of the ladder held, and for the service (d) a
    backlog drained batched and naive; `relay` measures the same with no model (the floor)."""
    from pipeline.kafka import ensure_topics

    tag = uuid.uuid4().hex[:6]
    s = settings.model_copy(
        update={
            "readings_topic": f"bench-{tag}.readings",
            "forecasts_topic": f"bench-{tag}.forecasts",
            "dlq_topic": f"bench-{tag}.dlq",
            "models_topic": f"bench-{tag}.models",
            "calibration_topic": f"bench-{tag}.calibration",
        }
    )
    ensure_topics(s)
    tmp = tempfile.TemporaryDirectory(prefix="sensorcast-bench-")
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": s.bootstrap_servers,
        "SENSORCAST_READINGS_TOPIC": s.readings_topic,
        "SENSORCAST_FORECASTS_TOPIC": s.forecasts_topic,
        "SENSORCAST_DLQ_TOPIC": s.dlq_topic,
        "SENSORCAST_METRICS_PORT": "0",
        "SENSORCAST_TORCH_THREADS": str(settings.torch_threads),
        "SENSORCAST_DEVICE": settings.device,
        # the load replays simulated sensors from 2027 on, hours of their time a second: their clocks run
        # far ahead of the records' (the service would refuse them as future_timestamp)
        "SENSORCAST_MAX_FUTURE_S": "0",
    }
    rig = Rig(bench_checkpoint(Path(tmp.name) / "model"), env)
    sink = ArrivalStamper(s)
    stream = Stream(s, entities)
    gc.collect()
    gc.freeze()  # keep full collections of this process's imports from pausing the load generator
    result: dict = {}
    what = f"{'relay (no model)' if relay else 'service'} on {client}"
    service = _start(rig, f"bench-{tag}-batched", settings.max_batch, client, relay)
    try:
        # warm every window, then wait for the first tick of forecasts: the service is caught up
        stream.send(entities * (LOOKBACK - 1))
        stream.send(entities)
        wanted = entities if not relay else entities * LOOKBACK  # the relay answers every reading
        if len(_wait_for(sink, wanted, 120)) < wanted:
            raise RuntimeError(
                f"the {what} produced no forecasts within 120 s; its log ends:\n{service.output()[-3000:]}"
            )
        log(f"{what}: (a) {rate} readings/s over {entities} entities for {duration_s:.0f} s")
        sink.take()
        n = int(rate * duration_s)
        cpu_before, wall_before = cpu_seconds(service.proc.pid), time.monotonic()
        achieved = stream.send(n, rate)
        lat = _latencies(stream, _wait_for_readings(sink, stream.last, 30))
        cores = (cpu_seconds(service.proc.pid) - cpu_before) / (time.monotonic() - wall_before)
        result["e2e"] = {
            "rate": rate,
            "achieved_rate": round(achieved),
            "entities": entities,
            **percentiles(lat),
            "readings": n,
            "forecasts": len(lat),
            "max_ms": round(max(lat), 3) if lat else None,
            "cpu_cores": round(cores, 3),  # the process's user + system CPU over the step, in cores
        }
        log(
            f"    p50 {result['e2e']['p50_ms']} ms, p95 {result['e2e']['p95_ms']} ms, "
            f"p99 {result['e2e']['p99_ms']} ms ({len(lat)}/{n} forecasts), {cores:.2f} of a core"
        )

        log(f"{what}: (b) rate ladder: the highest rate with every reading answered and p99 under 100 ms")
        ladder_rows, sustained = [], 0
        for r in ladder:
            sink.take()
            n = int(r * step_s)
            achieved = stream.send(n, r)
            lat = _latencies(stream, _wait_for_readings(sink, stream.last, 30))
            row = {
                "rate": r,
                "achieved_rate": round(achieved),
                "readings": n,
                "forecasts": len(lat),
                **percentiles(lat),
            }
            ladder_rows.append(row)
            log(
                f"    {r:>6}/s (sent at {achieved:,.0f}/s): p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
                f"{len(lat)}/{n} forecasts"
            )
            ok = len(lat) == n and row["p99_ms"] < 100 and achieved >= 0.95 * r  # every reading forecast
            if not ok:
                break
            sustained = r
        result["ladder"] = ladder_rows
        result["sustained_readings_per_s"] = sustained
    finally:
        _stop_service(service)
        sink.close()
        stream.close()
    if relay:
        tmp.cleanup()
        return result

    log(f"{what}: (d) drain a backlog of {drain_readings:,} readings: batched vs a naive per-message loop")
    drains = {}
    # (name, max_batch, instances, waiting): a backlog already on the topic when the service starts;
    # on confluent also a burst sent while one, then two, instances of one consumer group wait for it
    variants = [("batched", settings.max_batch, 1, False), ("naive", 1, 1, False)]
    if client == "confluent":
        variants += [("one_instance", settings.max_batch, 1, True), ("two_instances", settings.max_batch, 2, True)]
    for name, max_batch, instances, waiting in variants:
        # topics of its own holding exactly the backlog: the timed forecasts are those of the backlog only
        d = s.model_copy(
            update={
                "readings_topic": f"bench-{tag}-{name}.readings",
                "forecasts_topic": f"bench-{tag}-{name}.forecasts",
            }
        )
        ensure_topics(d, [d.readings_topic, d.forecasts_topic])
        backlog = Stream(d, entities)
        if not waiting:
            backlog.send(drain_readings)
        expected = drain_readings - entities * (LOOKBACK - 1)  # each entity's first L - 1 readings warm it up
        sink = ArrivalStamper(d)
        env = {
            **rig.env,
            "SENSORCAST_READINGS_TOPIC": d.readings_topic,
            "SENSORCAST_FORECASTS_TOPIC": d.forecasts_topic,
        }
        procs = [
            _start(Rig(rig.checkpoint, env), f"bench-{tag}-drain-{name}", max_batch, client, relay=False)
            for _ in range(instances)
        ]
        try:
            if waiting:
                for proc in procs:
                    proc.wait_ready(120)
                time.sleep(2.0)  # the group settles: each instance holds its share
                backlog.send(drain_readings)
            got = _wait_for(sink, 1, 120)  # timed from the first forecast: start-up is not drain speed
            deadline = time.monotonic() + 120
            while len(got) < expected and time.monotonic() < deadline:
                time.sleep(0.25)
                got.extend(sink.take())
            arrivals = sorted(t for _, t in got)
            span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
            drains[name] = round((len(arrivals) - 1) / span) if span and span > 0 else 0
            log(f"    {name}: {drains[name]:,} readings/s ({len(arrivals):,}/{expected:,} forecasts in {span:.1f} s)")
        finally:
            for proc in procs:
                _stop_service(proc)
            sink.close()
            backlog.close()
    if not keep_logs:
        tmp.cleanup()
    else:
        log(f"service logs kept in {tmp.name}")
    result["drain_readings_per_s"] = drains["batched"]
    result["naive_readings_per_s"] = drains["naive"]
    result["speedup"] = round(drains["batched"] / drains["naive"], 2) if drains["naive"] else None
    if "two_instances" in drains:
        result["group_burst_readings_per_s"] = {
            "one_instance": drains["one_instance"],
            "two_instances": drains["two_instances"],
        }
    return result


def run(
    settings: Settings,
    in_memory_only: bool = False,
    clients: tuple[str, ...] = KAFKA_CLIENTS,
    log: Callable[[str], None] = print,
    **kw,
) -> dict:
    """Everything side by side in one run: in memory, then per client the no-model floor and the service."""
    import torch

    doc: dict = {"machine": machine()}
    doc["in_memory"] = {"cpu": in_memory("cpu", log=log)}
    if torch.cuda.is_available():
        doc["in_memory"]["cuda"] = in_memory("cuda", log=log)
    serving = doc["in_memory"].get("cuda", doc["in_memory"]["cpu"])  # the device `auto` picks
    doc["device"], doc["inference"] = serving["device"], serving["inference"]
    if in_memory_only:
        return doc
    doc["clients"] = {}
    for client in clients:
        floor = against_kafka(settings, client, relay=True, log=log, **kw)
        service = against_kafka(settings, client, relay=False, log=log, **kw)
        doc["clients"][client] = {
            **service,
            "floor": {k: floor[k] for k in ("e2e", "sustained_readings_per_s", "ladder")},
            "p99_vs_floor": round(service["e2e"]["p99_ms"] / floor["e2e"]["p99_ms"], 2)
            if floor["e2e"]["p99_ms"]
            else None,
            "sustained_vs_floor": round(service["sustained_readings_per_s"] / floor["sustained_readings_per_s"], 2)
            if floor["sustained_readings_per_s"]
            else None,
        }
    return doc


def api_effect(
    settings: Settings,
    client: str = "kafka-python",
    rate: int = 1000,
    entities: int = 100,
    duration_s: float = 30.0,
    queries_per_s: float = 20.0,
    log: Callable[[str], None] = print,
) -> dict:
    """The service's latency at `rate` without, then with, `sensorcast api` running beside it and
    answering `queries_per_s` HTTP queries: the API is a process of its own, and this measures what
    it costs the serving loop on the same cores."""
    import urllib.request

    from pipeline.kafka import ensure_topics
    from pipeline.tools.child import CliProcess
    from pipeline.tools.stack import free_ports, http_ok

    tag = uuid.uuid4().hex[:6]
    s = settings.model_copy(update={f"{t}_topic": f"bench-api-{tag}.{t}" for t in ("readings", "forecasts", "dlq")})
    ensure_topics(s, [s.readings_topic, s.forecasts_topic, s.dlq_topic])
    with tempfile.TemporaryDirectory(prefix="sensorcast-bench-api-") as tmp:
        env = {**os.environ, **s.as_env(), "SENSORCAST_METRICS_PORT": "0"}
        rig = Rig(bench_checkpoint(Path(tmp) / "model"), env)
        sink, stream = ArrivalStamper(s), Stream(s, entities)
        service = _start(rig, f"bench-api-{tag}", settings.max_batch, client, relay=False)
        rows: dict = {}
        try:
            stream.send(entities * LOOKBACK)
            _wait_for(sink, entities, 120)
            port = free_ports(1)[0]
            for phase in ("without_api", "with_api"):
                api, stop, asked = None, threading.Event(), [0]
                if phase == "with_api":
                    api = CliProcess(["api", "--port", str(port)], env, Path(tmp) / "api.log").start()
                    deadline = time.monotonic() + 120
                    while not http_ok(f"http://127.0.0.1:{port}/healthz") and time.monotonic() < deadline:
                        time.sleep(0.5)

                    def ask(stop: threading.Event = stop, asked: list[int] = asked) -> None:
                        while not stop.wait(1 / queries_per_s):
                            entity = f"sensor-{asked[0] % entities:04d}"
                            try:
                                urllib.request.urlopen(f"http://127.0.0.1:{port}/forecasts/{entity}", timeout=5).read()
                            except OSError:
                                pass
                            asked[0] += 1

                    threading.Thread(target=ask, daemon=True).start()
                sink.take()
                achieved = stream.send(int(rate * duration_s), rate)
                lat = _latencies(stream, _wait_for_readings(sink, stream.last, 30))
                stop.set()
                if api is not None:
                    api.stop(grace_s=10)
                rows[phase] = {"achieved_rate": round(achieved), "forecasts": len(lat), **percentiles(lat)}
                if phase == "with_api":
                    rows[phase]["queries"] = asked[0]
                row = rows[phase]
                log(f"    service {phase.replace('_', ' ')}: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms")
        finally:
            _stop_service(service)
            sink.close()
            stream.close()
    without, with_api = rows["without_api"]["p99_ms"], rows["with_api"]["p99_ms"]
    return {"client": client, "rate": rate, **rows, "p99_ratio": round(with_api / without, 2) if without else None}
