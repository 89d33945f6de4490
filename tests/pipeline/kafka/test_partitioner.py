"""The producer's key-caching partitioner and the confluent producer must pick exactly what
kafka-python's default would (murmur2, as the Java client), or an entity's readings would land on
another partition depending on the client that wrote them."""

from __future__ import annotations

import pytest
from kafka.partitioner import DefaultPartitioner

from pipeline.kafka.clients import KeyCachingPartitioner


class Cluster:
    """The two ClusterMetadata calls a partitioner makes (pure logic: no broker needed)."""

    def __init__(self, n: int):
        self.n = n

    def topics(self):
        return {"t"}

    def partitions_for_topic(self, topic):
        return set(range(self.n))

    def available_partitions_for_topic(self, topic):
        return set(range(self.n))


def test_same_choice_as_the_default_partitioner_for_every_key_and_partition_count() -> None:
    ours, default = KeyCachingPartitioner(max_keys=50), DefaultPartitioner()
    keys = [f"entity-{i}".encode() for i in range(200)] + [b"", b"pump-7", "capteur-é".encode()]
    for n in (1, 3, 7, 12):
        cluster = Cluster(n)
        for _ in range(2):  # the second round is served from the cache (and outgrows max_keys)
            for k in keys:
                assert ours.partition("t", k, k, b"v", b"v", cluster) == default.partition(
                    "t", k, k, b"v", b"v", cluster
                )


def test_a_topic_that_grew_partitions_is_rehashed() -> None:
    ours = KeyCachingPartitioner()
    key = b"entity-5"
    before = ours.partition("t", key, key, None, None, Cluster(3))
    after = ours.partition("t", key, key, None, None, Cluster(8))
    assert before == DefaultPartitioner().partition("t", key, key, None, None, Cluster(3))
    assert after == DefaultPartitioner().partition("t", key, key, None, None, Cluster(8))


@pytest.mark.integration
def test_confluent_producer_puts_every_key_where_kafka_python_does(kafka_settings) -> None:
    """librdkafka hashes in C: ask the broker where its sends landed, for many keys and partition counts."""
    from confluent_kafka import Producer

    from pipeline.kafka import ensure_topics
    from pipeline.kafka.confluent import producer_config

    keys = [f"entity-{i}".encode() for i in range(300)] + [b"pump-7", "capteur-é".encode(), b"\x00\xff"]
    landed: dict[tuple[str, bytes], int] = {}
    producer = Producer(producer_config(kafka_settings))
    for n in (1, 2, 3, 5, 7, 12):
        topic = f"{kafka_settings.readings_topic}-{n}"
        ensure_topics(kafka_settings, [topic], partitions=n)
        for k in keys:
            producer.produce(
                topic, b"v", k, on_delivery=lambda err, msg, n=n: landed.update({(n, msg.key()): msg.partition()})
            )
        assert producer.flush(30) == 0
        for k in keys:
            assert landed[(n, k)] == DefaultPartitioner().partition("t", k, k, b"v", b"v", Cluster(n)), (n, k)
