"""The service's Sink over Kafka: publish, and confirm every send before the loop commits."""

from __future__ import annotations

from kafka import KafkaProducer

from pipeline.kafka.clients import close_producer, flush_producer


class KafkaSink:
    """pipeline.records.Sink over a KafkaProducer: flush returns only when every send is acknowledged."""

    def __init__(self, producer: KafkaProducer, flush_timeout_s: float = 30.0):
        self.producer = producer
        self.flush_timeout_s = flush_timeout_s
        self._futures: list = []  # sends not yet known to be acknowledged, oldest first
        self._published = 0  # sends ever made; self._futures[0] is send number self._published - len(...)

    def publish(self, messages) -> None:
        send = self.producer.send
        self._futures.extend(send(m.topic, key=m.key, value=m.value) for m in messages)
        self._published += len(messages)

    def mark(self) -> int:
        return self._published

    def settled(self, mark: int) -> bool:
        """Drop acknowledged sends from the front; True once every send before `mark` is gone."""
        futures, done = self._futures, 0
        first = self._published - len(futures)
        while done < len(futures) and first + done < mark and futures[done].is_done:
            futures[done].get(timeout=0)  # raises KafkaError if the send failed
            done += 1
        del futures[:done]
        return self._published - len(futures) >= mark

    def flush(self) -> None:
        flush_producer(self.producer, self.flush_timeout_s)
        futures, self._futures = self._futures, []
        for f in futures:
            f.get(timeout=0)  # raises KafkaError if a send failed: the batch is then not committed

    def close(self) -> None:
        close_producer(self.producer, self.flush_timeout_s)
