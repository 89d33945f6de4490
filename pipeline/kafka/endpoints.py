"""The service's two ends over the client the settings choose (`SENSORCAST_KAFKA_CLIENT`):
kafka-python (the default) or confluent-kafka (librdkafka: I/O outside the GIL, consumer-group
scale-out). Both keep the same contract; see source.py, sink.py and confluent.py."""

from __future__ import annotations

from pipeline.kafka.clients import make_producer
from pipeline.kafka.sink import KafkaSink, transactional_kafka_sink
from pipeline.kafka.source import kafka_source
from pipeline.records import Sink, Source
from pipeline.settings import Settings


def service_source(settings: Settings, rehydrate_ms: int | None = None, shape: tuple[int, int] | None = None) -> Source:
    """`rehydrate_ms`: how far back in time a restart re-reads to refill windows (None: by record count);
    `shape`: the model's (lookback, channels), to restore windows from the changelog."""
    if settings.kafka_client == "confluent":
        from pipeline.kafka.confluent import confluent_source

        source = confluent_source(settings, rehydrate_ms, shape)
        try:
            source.wait_assigned(settings.startup_timeout_s)
        except Exception:
            source.close()
            raise
        return source
    return kafka_source(settings, rehydrate_ms, shape)


def service_ends(
    settings: Settings, rehydrate_ms: int | None = None, shape: tuple[int, int] | None = None
) -> tuple[Source, Sink]:
    """The source and the sink; under exactly-once, the source's commits go through the sink's
    transactions (`pipeline.kafka.sink.TransactionalKafkaSink`, `pipeline.kafka.confluent.TransactionalSink`)."""
    if settings.processing_guarantee == "exactly-once":
        if settings.kafka_client == "confluent":
            from pipeline.kafka.confluent import transactional_sink

            sink = transactional_sink(settings)
        else:
            sink = transactional_kafka_sink(settings)
        try:  # the sink first: its init fences an earlier process and settles its offsets before they are read
            source = service_source(settings, rehydrate_ms, shape)
        except Exception:
            sink.close()
            raise
        source.transactional = sink
        return source, sink
    source = service_source(settings, rehydrate_ms, shape)
    try:
        return source, service_sink(settings)
    except Exception:
        source.close()
        raise


def service_sink(settings: Settings) -> Sink:
    if settings.kafka_client == "confluent":
        from pipeline.kafka.confluent import ConfluentSink, make_confluent_producer

        return ConfluentSink(
            make_confluent_producer(settings, **{"linger.ms": 1}),
            dlq_topic=settings.dlq_topic,
            max_message_bytes=settings.max_message_bytes,
        )
    return KafkaSink(
        make_producer(settings, linger_ms=1), dlq_topic=settings.dlq_topic, max_message_bytes=settings.max_message_bytes
    )
