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

import contextlib
import gc
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.settings import Settings
from pipeline.state import state_bytes
from pipeline.tools.bench.in_memory import CHANNELS, LOOKBACK, bench_checkpoint, in_memory
from pipeline.tools.bench.report import cpu_seconds, machine, percentiles
from pipeline.tools.bench.rig import ArrivalStamper, Stream, own_topics
from pipeline.tools.child import CliProcess, RelayProcess, ServeProcess

KAFKA_CLIENTS = ("kafka-python", "confluent")
P99_BAR_MS = 100.0  # (b) a rung is held when every reading is answered with p99 under this
LADDER = (2000, 4000, 6000, 8000, 10000, 12000, 16000, 20000, 25000, 30000)


@dataclass
class Rig:
    checkpoint: Path
    env: dict


def _start(
    rig: Rig,
    group: str,
    max_batch: int,
    client: str,
    relay: bool,
    guarantee: str = "at-least-once",
    window_state: str = "changelog",
) -> CliProcess:
    """The service (or the no-model relay) on `client`, as a process of its own."""
    env = {
        **rig.env,
        "SENSORCAST_CONSUMER_GROUP": group,
        "SENSORCAST_MAX_BATCH": str(max_batch),
        "SENSORCAST_KAFKA_CLIENT": client,
        "SENSORCAST_PROCESSING_GUARANTEE": guarantee,
        "SENSORCAST_WINDOW_STATE": window_state,
    }
    log_path = rig.checkpoint.parent / f"{'relay' if relay else 'service'}-{group}.log"
    proc = RelayProcess(env, log_path) if relay else ServeProcess(str(rig.checkpoint), env, log_path)
    return proc.start()


def changelog_written(settings: Settings) -> int | None:
    """Records on the service's window changelog (its windows and markers, and transaction markers
    under exactly-once): the sum of the partitions' end offsets. None: no such topic."""
    from kafka import TopicPartition

    from pipeline.kafka import make_consumer

    topic, consumer = settings.windows_topic, make_consumer(settings, group=None)
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            return None
        return sum(consumer.end_offsets([TopicPartition(topic, p) for p in parts]).values())
    finally:
        consumer.close()


def _stop_service(proc: CliProcess) -> None:
    proc.stop(grace_s=30)


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
    guarantee: str = "at-least-once",
    window_state: str = "changelog",
) -> dict:
    """(a) latency at `rate`, (b) the highest rung of the ladder held (p99 under 100 ms, plus the
    commit interval under exactly-once), and for the service (d) a backlog drained batched and
    naive; `relay` measures the same with no model (the floor). Under `guarantee="exactly-once"` a
    forecast arrives when its transaction commits (the stamper reads read_committed), and (d)
    drains batched only."""
    from pipeline.kafka import ensure_topics

    tag = uuid.uuid4().hex[:6]
    s = own_topics(settings, tag)
    ensure_topics(s)
    tmp = tempfile.TemporaryDirectory(prefix="sensorcast-bench-")
    env = {
        **os.environ,
        **{k: v for k, v in s.as_env().items() if k.startswith("SENSORCAST_KAFKA_S")},  # the security settings
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
    what = (
        f"{'relay (no model)' if relay else 'service'} on {client}"
        + (f", {guarantee}" if guarantee != "at-least-once" else "")
        + (f", windows by {window_state}" if window_state != "changelog" else "")
    )
    service = _start(rig, f"bench-{tag}-batched", settings.max_batch, client, relay, guarantee, window_state)
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

        # a reading's forecast is read once its transaction commits: under exactly-once the bar allows a commit interval
        bar_ms = P99_BAR_MS + (settings.commit_interval_ms if guarantee == "exactly-once" else 0)
        result["p99_bar_ms"] = bar_ms
        log(f"{what}: (b) rate ladder: the highest rate with every reading answered and p99 under {bar_ms:g} ms")
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
            ok = len(lat) == n and row["p99_ms"] < bar_ms and achieved >= 0.95 * r  # every reading forecast
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
    if window_state == "changelog":  # what the broker took for it: records written per reading
        written = changelog_written(s.model_copy(update={"consumer_group": f"bench-{tag}-batched"}))
        result["changelog"] = {
            "records_written": written,
            "readings_sent": len(stream.sent),
            "per_reading": round(written / len(stream.sent), 3) if written is not None and stream.sent else None,
            "mb_at_most": round(written * state_bytes(LOOKBACK, CHANNELS) / 1e6, 1) if written is not None else None,
        }
        count = f"{written:,}" if written is not None else "no topic: no"
        log(f"    changelog: {count} records written for {len(stream.sent):,} readings")

    if drain_readings <= entities * (LOOKBACK - 1):  # every reading would go to warming windows up
        log(f"{what}: (d) skipped: a backlog of {drain_readings:,} readings only warms {entities:,} entities' windows")
        result["drain_readings_per_s"] = None
        tmp.cleanup()
        return result
    log(f"{what}: (d) drain a backlog of {drain_readings:,} readings: batched vs a naive per-message loop")
    drains = {}
    # (name, max_batch, instances, waiting): a backlog already on the topic when the service starts;
    # on confluent also a burst sent while one, then two, instances of one consumer group wait for it
    variants = [("batched", settings.max_batch, 1, False), ("naive", 1, 1, False)]
    if guarantee != "at-least-once":
        variants = variants[:1]
    elif client == "confluent":
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
            _start(
                Rig(rig.checkpoint, env), f"bench-{tag}-drain-{name}", max_batch, client, False, guarantee, window_state
            )  # fmt: skip
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
    if "naive" in drains:
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
    guarantees: tuple[str, ...] = ("at-least-once",),
    securities: tuple[str, ...] = ("PLAINTEXT",),
    window_states: tuple[str, ...] = ("changelog",),
    **kw,
) -> dict:
    """Everything side by side in one run: in memory, then per client the no-model floor and the
    service, under each processing guarantee asked for (the first is the row's own; the others go
    under their name with their latency and drain ratios to it; not the ladders', whose bars differ).
    Each further window state (`replay`: no changelog written) runs the service again under the first
    guarantee, under "window_state=<state>", with its ratios to the row: what the changelog costs.
    With "SASL_SSL" in `securities`, the service again (first guarantee) on a secured broker of its
    own started beside the plain one, under "sasl_ssl" with its ratios to the plain row."""
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
    with contextlib.ExitStack() as stack:
        secured = stack.enter_context(secured_broker(settings, log)) if "SASL_SSL" in securities else None
        for client in clients:
            floor = against_kafka(settings, client, relay=True, log=log, **kw)
            first, *others = guarantees
            service = against_kafka(
                settings, client, relay=False, log=log, guarantee=first, window_state=window_states[0], **kw
            )
            row = doc["clients"][client] = {
                **service,
                "guarantee": first,
                "window_state": window_states[0],
                "floor": {k: floor[k] for k in ("e2e", "sustained_readings_per_s", "ladder")},
                "p99_vs_floor": ratio(service["e2e"]["p99_ms"], floor["e2e"]["p99_ms"]),
                "sustained_vs_floor": ratio(service["sustained_readings_per_s"], floor["sustained_readings_per_s"]),
            }
            for state in window_states[1:]:
                other = against_kafka(settings, client, relay=False, log=log, guarantee=first, window_state=state, **kw)
                row[f"window_state={state}"] = {
                    **other,
                    f"p50_vs_{window_states[0]}": ratio(other["e2e"]["p50_ms"], service["e2e"]["p50_ms"]),
                    f"p99_vs_{window_states[0]}": ratio(other["e2e"]["p99_ms"], service["e2e"]["p99_ms"]),
                    f"sustained_vs_{window_states[0]}": ratio(
                        other["sustained_readings_per_s"], service["sustained_readings_per_s"]
                    ),
                    f"drain_vs_{window_states[0]}": ratio(
                        other["drain_readings_per_s"], service["drain_readings_per_s"]
                    ),
                }
            for guarantee in others:
                other = against_kafka(settings, client, relay=False, log=log, guarantee=guarantee, **kw)
                row[guarantee] = {
                    **other,
                    f"p50_vs_{first}": ratio(other["e2e"]["p50_ms"], service["e2e"]["p50_ms"]),
                    f"p99_vs_{first}": ratio(other["e2e"]["p99_ms"], service["e2e"]["p99_ms"]),
                    f"drain_vs_{first}": ratio(other["drain_readings_per_s"], service["drain_readings_per_s"]),
                }
            if secured is not None:
                tls = against_kafka(secured, client, relay=False, log=log, guarantee=first, **kw)
                row["sasl_ssl"] = {
                    **tls,
                    "login": "the secured broker's admin (SCRAM-SHA-512 over TLS; the authorizer on)",
                    "p50_vs_plaintext": ratio(tls["e2e"]["p50_ms"], service["e2e"]["p50_ms"]),
                    "p99_vs_plaintext": ratio(tls["e2e"]["p99_ms"], service["e2e"]["p99_ms"]),
                    "sustained_vs_plaintext": ratio(
                        tls["sustained_readings_per_s"], service["sustained_readings_per_s"]
                    ),
                    "drain_vs_plaintext": ratio(tls["drain_readings_per_s"], service["drain_readings_per_s"]),
                }
    return doc


@contextlib.contextmanager
def secured_broker(settings: Settings, log: Callable[[str], None] = print) -> Iterator[Settings]:
    """A broker of its own on SASL_SSL (`stack up --secure`'s: SCRAM-SHA-512 over TLS, a local CA, the
    authorizer denying by default), for as long as the block runs; the settings that reach it, as its
    admin. The bench's topics and groups are made per run, so the admin, not a role, drives them."""
    from pipeline.tools import broker, stack

    folder = tempfile.TemporaryDirectory(prefix="sensorcast-bench-secure-")
    private = stack.private_settings(Path(folder.name))
    secured = broker.secured(private.model_copy(update={"kafka_heap": settings.kafka_heap}))
    log(f"a SASL_SSL broker of its own on {secured.bootstrap_servers}")
    stack.up(secured, ["kafka"], log=log)
    try:
        keep = ("readings_topic", "forecasts_topic", "dlq_topic", "models_topic", "calibration_topic")
        security = {k: getattr(secured, k) for k in secured.model_fields if k.startswith("kafka_s")}
        yield settings.model_copy(
            update={
                **security,
                **{k: getattr(settings, k) for k in keep},
                "kafka_bootstrap_servers": secured.bootstrap_servers,
            }
        )
    finally:
        stack.down(secured, ["kafka"], log=log)
        folder.cleanup()


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b to two places; None when either is missing or b is 0.

    >>> ratio(3.0, 2.0), ratio(1.0, 0), ratio(None, 1.0)
    (1.5, None, None)
    """
    return round(a / b, 2) if a is not None and b else None


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
