"""The benchmarks' load rig against a real broker: simulated sensors paced by the millisecond
(`Stream`, remembering when each reading was due) and a stamper of each forecast's arrival in a
process of its own (`ArrivalStamper`), both on confluent-kafka, the fastest client, so the load
takes as little of the cores as it can. `bench latency` and `bench soak` measure with it."""

from __future__ import annotations

import gc
import multiprocessing as mp
import time
import uuid

from pipeline.settings import Settings
from pipeline.tools.bench.in_memory import CHANNELS

BURST_S = 0.001  # the load generator sends what is due at least this often


def _sink_process(bootstrap: str, topic: str, conn, ready, security: dict) -> None:
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
            "isolation.level": "read_committed",  # as every reader the project makes: committed output only
            **security,
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


def own_topics(settings: Settings, tag: str) -> Settings:
    """The settings with topics of the run's own (`bench-<tag>.readings` and so on): no run reads another's."""
    kinds = ("readings", "forecasts", "dlq", "models", "calibration")
    return settings.model_copy(update={f"{kind}_topic": f"bench-{tag}.{kind}" for kind in kinds})


class ArrivalStamper:
    """Stamps the arrival time of every forecast, in a process of its own (off this process's GIL)."""

    def __init__(self, settings: Settings):
        from pipeline.kafka.security import confluent_security

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        ready = ctx.Event()
        self.proc = ctx.Process(
            target=_sink_process,
            args=(settings.bootstrap_servers, settings.forecasts_topic, child, ready, confluent_security(settings)),
            daemon=True,
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

    def produce(self, key: bytes, value: bytes, record_ms: int = 0) -> None:
        """One record to the readings topic, waiting while the client's queue is full."""
        while True:
            try:
                self.producer.produce(self.topic, value, key, timestamp=record_ms)  # 0: the client's clock
                return
            except BufferError:
                self.producer.poll(0.01)

    def send(self, n: int, rate: float = 0, record_ms: int = 0) -> float:
        """Send n readings at `rate` a second (0 = flat out); returns the achieved rate. The readings
        are encoded before the clock starts, so the load generator spends its share of the two
        cores on sending, not on making up data. `record_ms`: the records' timestamp (0: when sent)."""
        from pipeline.messages import encode_reading, format_ts

        ready = []
        for _ in range(n):
            entity, ts, values = next(self.rows)
            stamp = format_ts(ts)
            ready.append((f"{entity}|{stamp}", entity.encode(), encode_reading(entity, stamp, values)))
        produce, sent, clock = self.produce, self.sent, time.perf_counter
        self.last = {ident for ident, _, _ in ready}
        started, started_wall, i = clock(), time.time(), 0
        while i < n:  # every millisecond, what is due: a sleep per reading would cost more than the send
            due = n if not rate else min(n, int((clock() - started) * rate) + 1)
            for k in range(i, due):
                ident, key, value = ready[k]
                # latency counts from when the reading was due, not from when the generator got to it
                sent[ident] = started_wall + k / rate if rate else time.time()
                produce(key, value, record_ms)
            i = due
            self.producer.poll(0)
            if i < n:
                time.sleep(BURST_S)
        if self.producer.flush(30):
            raise RuntimeError("the load generator's sends were not confirmed within 30 s")
        return n / (clock() - started)

    def close(self) -> None:
        self.producer.flush(30)
