"""Faults under a running service, on clusters of this module's own: a broker killed (SIGKILL) mid-stream
for 10 s, then restarted (under each processing guarantee); and one broker of three killed for good.
Producer and service recover by themselves, every reading gets its forecast, and the outage shows in
the service's metrics."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.kafka import ensure_topics, make_producer
from pipeline.messages import encode_reading
from pipeline.settings import Settings
from pipeline.tools import broker, stack
from pipeline.tools.child import ServeProcess
from pipeline.tools.stack import private_settings
from tests.fixtures.kafka import Collector

pytestmark = pytest.mark.integration

L, HOUR, ENTITIES = 8, 3_600_000, 6


def kill_broker(settings: Settings, node: str = "kafka") -> None:
    """SIGKILL, as a host that dies: no shutdown, no leader hand-over."""
    service = next(s for s in stack.services(settings, ["kafka"]) if s.name == node)
    pid = int(service.pid_file.read_text())
    os.killpg(pid, signal.SIGKILL)
    while stack._pid_alive(pid):
        time.sleep(0.05)


def stream(
    settings: Settings, steps: range, rate: float, sent: list[int], hold: tuple[int, threading.Event] | None = None
) -> None:
    """The project's producer (idempotent, acks=all, retrying) sends paced readings and waits for every ack.
    With `hold` (i, event), it waits for the event before the i-th step: the fault strikes mid-stream
    however slow the machine."""
    producer = make_producer(settings)
    start = time.perf_counter()
    futures = []
    for i, s in enumerate(steps):
        if hold is not None and i == hold[0]:
            assert hold[1].wait(600), "the fault never struck"
            start = time.perf_counter() - i * ENTITIES / rate  # paced on from here, not in a burst
        time.sleep(max(0.0, start + i * ENTITIES / rate - time.perf_counter()))
        for e in range(ENTITIES):
            value = encode_reading(f"e{e}", s * HOUR, {"temp": 20.0 + s % 7 + e, "pressure": 1.0 + 0.1 * e})
            futures.append(producer.send(settings.readings_topic, key=f"e{e}".encode(), value=value))
        sent.append(s)
    for f in futures:
        f.get(timeout=120)
    producer.close()


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[int], Settings]]:
    """clusters(brokers) → a local cluster of that size, started on first use and shared by this
    module's tests (a cluster start is the slow part); a node an earlier test killed is started again
    (`stack.up` starts what is down and waits until every node answers)."""
    started: dict[int, Settings] = {}

    def get(brokers: int) -> Settings:
        if brokers not in started:
            started[brokers] = private_settings(tmp_path_factory.mktemp(f"cluster-{brokers}")).model_copy(
                update={"kafka_brokers": brokers, "topic_replication": min(brokers, 3), "kafka_heap": "384m"}
            )
        stack.up(started[brokers], ["kafka"], log=lambda _m: None)
        return started[brokers]

    yield get
    for settings in started.values():  # SIGKILL: a cluster that lost a node takes 30 s to shut down politely
        for node in broker.kafka_nodes(settings):
            if stack._read_pid(next(s for s in stack.services(settings, ["kafka"]) if s.name == node.name)):
                kill_broker(settings, node.name)


@pytest.fixture
def own_cluster(clusters, tiny_checkpoint, kafka_client: str) -> Callable[[int], Settings]:
    """own_cluster(brokers) → settings on the module's cluster of that size, every node up, with
    topics and a consumer group of this test's own."""

    def start(brokers: int) -> Settings:
        tag = uuid.uuid4().hex[:8]
        settings = clusters(brokers).model_copy(
            update={
                **{f"{t}_topic": f"{t}-{tag}" for t in ("readings", "forecasts", "dlq", "models")},
                "consumer_group": f"group-{tag}",
                "model_uri": str(tiny_checkpoint()),
                "metrics_port": stack.free_ports(1)[0],
                "kafka_client": kafka_client,
            }
        )
        ensure_topics(settings)
        return settings

    return start


def beside(settings: Settings, **update) -> Settings:
    """A second service on the same readings, with outputs, a group and a metrics port of its own:
    one fault then tests both (a cluster's fault is the slow part)."""
    tag = uuid.uuid4().hex[:8]
    twin = settings.model_copy(
        update={
            **{f"{t}_topic": f"{t}-{tag}" for t in ("forecasts", "dlq")},
            "consumer_group": f"group-{tag}",
            "metrics_port": stack.free_ports(1)[0],
            **update,
        }
    )
    ensure_topics(twin, [twin.forecasts_topic, twin.dlq_topic])
    return twin


def serve_through(
    settings: Settings, tmp_path: Path, steps: range, rate: float, fault, others: tuple[Settings, ...] = ()
) -> list[tuple[Collector, dict]]:
    """Serve a paced stream, call `fault(service, forecasts)` once forecasts flow and half the stream
    is out (the producer waits there for it), then wait for every forecast and stop. Asserts the
    fault struck mid-stream, the services lived through it and stopped cleanly, and no reading lost
    its forecast; returns each service's forecasts and metrics. `others`: services of their own
    settings (`beside`) on the same readings, through the same fault."""
    every = (settings, *others)
    collected = [Collector(s, s.forecasts_topic) for s in every]
    forecasts = collected[0]
    sent: list[int] = []
    services = [ServeProcess(s.model_uri, s.as_env(), tmp_path / f"serve-{i}.log").start() for i, s in enumerate(every)]
    for service in services:
        service.wait_ready()
    striking = threading.Event()
    hold = (len(steps) // 2, striking)
    producer = threading.Thread(target=stream, args=(settings, steps, rate, sent, hold), daemon=True)
    metrics = []
    try:
        producer.start()
        for c in collected:
            c.wait_for(30, timeout_s=300)
        while len(sent) < hold[0]:  # the first half is out: the producer waits for the fault
            assert producer.is_alive(), "the producer stopped before the fault"
            time.sleep(0.05)
        struck_at = len(sent)
        striking.set()  # the second half goes out while the fault strikes
        fault(services[0], forecasts)
        producer.join(timeout=600)
        assert not producer.is_alive(), "the producer did not get every acknowledgement"
        expected = ENTITIES * (len(steps) - (L - 1))
        for c, service, s in zip(collected, services, every, strict=True):
            c.wait_for(expected, timeout_s=300, unique=True)
            assert service.proc.poll() is None, "the service stopped:\n" + service.output()[-3000:]
            metrics.append(scrape(s.metrics_port))
    finally:
        codes = [service.stop() for service in services]
        for c in collected:
            c.close()
    for code, service in zip(codes, services, strict=True):
        assert code == 0, service.output()[-3000:]
    assert 0 < struck_at < len(steps), "the fault should strike mid-stream"
    for c in collected:
        missing = expected - len(c.unique())
        assert missing == 0, f"{missing} readings lost their forecast"
    return list(zip(collected, metrics, strict=True))


def test_a_broker_killed_for_10_s_mid_stream_loses_nothing(own_cluster, tmp_path: Path) -> None:
    """Two services through the same outage: at-least-once (readings may be forecast twice) and
    exactly-once (its read_committed reader sees each forecast once: 0 repeated)."""
    settings = own_cluster(1)
    exactly_once = beside(settings, processing_guarantee="exactly-once")
    steps = range(0, 100)  # 600 readings at 45/s: 13 s; the broker dies about 2 s in, for 10 s

    def outage(service: ServeProcess, forecasts: Collector) -> None:
        kill_broker(settings)
        time.sleep(10.0)
        assert service.proc.poll() is None, "the service died with the broker:\n" + service.output()[-3000:]
        stack.up(settings, ["kafka"], log=lambda _m: None)
        back, before = time.monotonic(), len(forecasts.docs)
        while len(forecasts.docs) == before and time.monotonic() - back < 60:
            time.sleep(0.05)
        print(f"forecasts again {time.monotonic() - back:.1f} s after the broker answered")

    (_, metrics), (once, _) = serve_through(settings, tmp_path, steps, 45.0, outage, others=(exactly_once,))
    # the outage shows: readings sent while the broker was down waited for it, seconds, not milliseconds
    count = metrics["sensorcast_e2e_latency_seconds_count"]
    within_5s = metrics['sensorcast_e2e_latency_seconds_bucket{le="5.0"}']
    # (the histogram counts forecasts: not the readings that warmed a window, not replays or dead letters)
    assert count >= ENTITIES * (len(steps) - (L - 1)) and count - within_5s >= ENTITIES, metrics
    print(f"{count - within_5s:.0f} of {count:.0f} readings waited over 5 s for the broker; none lost")
    assert len(once.docs) == len(once.unique()), f"exactly-once: {len(once.docs) - len(once.unique())} repeated"


def test_three_brokers_one_killed_for_good_every_reading_forecast(own_cluster, tmp_path: Path) -> None:
    settings = own_cluster(3)  # replication 3, min.insync.replicas 2: one broker may go
    # 540 readings at 60/s; node 1 (a controller, a leader, the first bootstrap) dies at ~3 s
    [(forecasts, _)] = serve_through(settings, tmp_path, range(0, 90), 60.0, lambda *_: kill_broker(settings))
    print(f"{len(forecasts.docs) - len(forecasts.unique())} readings forecast twice; none lost")
