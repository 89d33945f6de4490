"""Reading whole topics from now or from their start: for tailing, the demo, benchmarks and tests."""

from __future__ import annotations

import threading
import time
from typing import Any

from kafka import KafkaConsumer

from pipeline.kafka.clients import KafkaUnavailable, make_consumer, partitions_of
from pipeline.settings import Settings


def topic_reader(
    settings: Settings, topic: str, from_beginning: bool = False, timeout_s: float = 30.0, **overrides: Any
) -> KafkaConsumer:
    """A group-less consumer of every partition of `topic`, placed at its start or its end now:
    for tailing, tests and benchmarks (explicit assignment, so there is no join to wait for)."""
    consumer = make_consumer(settings, group=None, **overrides)
    try:
        tps = partitions_of(consumer, topic, timeout_s)
    except KafkaUnavailable:
        consumer.close()
        raise
    consumer.assign(tps)
    offsets = consumer.beginning_offsets(tps) if from_beginning else consumer.end_offsets(tps)
    for tp in tps:
        consumer.seek(tp, offsets[tp])
    return consumer


class TopicCollector(threading.Thread):
    """Collects a topic's messages (decoded JSON) in the background, stamping their arrival time."""

    def __init__(self, settings: Settings, topic: str, from_beginning: bool = False):
        super().__init__(name=f"collect-{topic}", daemon=True)
        import orjson

        self._decode = orjson.loads
        self.consumer = topic_reader(settings, topic, from_beginning=from_beginning)
        self.arrivals: list[tuple[float, dict]] = []
        self._halt = threading.Event()
        self.start()

    @property
    def docs(self) -> list[dict]:
        return [doc for _, doc in list(self.arrivals)]

    def run(self) -> None:
        while not self._halt.is_set():
            for records in self.consumer.poll(timeout_ms=100).values():
                now = time.time()
                self.arrivals.extend((now, self._decode(r.value)) for r in records)
        self.consumer.close()

    def close(self) -> None:
        self._halt.set()
        self.join(timeout=10)
