"""The only code that knows a Kafka client: factories and topics (clients), the service's Source
(source) and Sink (sink) on kafka-python and on confluent-kafka (confluent), the one chosen by the
settings (endpoints), and topic readers for tools and tests (reader)."""

from pipeline.kafka.clients import (
    KafkaUnavailable,
    close_producer,
    ensure_topics,
    flush_producer,
    make_admin,
    make_consumer,
    make_producer,
    partitions_of,
)
from pipeline.kafka.endpoints import service_ends, service_sink, service_source
from pipeline.kafka.reader import TopicCollector, TopicFollower, TopicSlice, read_since, topic_reader
from pipeline.kafka.sink import KafkaSink
from pipeline.kafka.source import KafkaSource, kafka_source

__all__ = [
    "KafkaSink",
    "KafkaSource",
    "KafkaUnavailable",
    "TopicCollector",
    "TopicFollower",
    "TopicSlice",
    "close_producer",
    "ensure_topics",
    "flush_producer",
    "kafka_source",
    "make_admin",
    "make_consumer",
    "make_producer",
    "partitions_of",
    "read_since",
    "service_ends",
    "service_sink",
    "service_source",
    "topic_reader",
]
