"""The broker itself: delivery, committed-offset resume and durability across a restart."""

from __future__ import annotations

import json
import time

import pytest
from kafka import TopicPartition

from pipeline.kafka import ensure_topics, kafka_source, make_consumer, make_producer
from pipeline.settings import Settings

pytestmark = pytest.mark.integration


def _produce(settings: Settings, n: int, start: int = 0) -> None:
    producer = make_producer(settings, acks="all")
    futures = [
        producer.send(
            settings.readings_topic,
            key=f"pump-{i % 50}".encode(),
            value=json.dumps({"entity": f"pump-{i % 50}", "ts": i, "values": {"temp": float(i)}}).encode(),
        )
        for i in range(start, start + n)
    ]
    producer.flush(timeout=60)
    for f in futures:
        f.get(timeout=30)  # raises if any send failed
    producer.close()


def _consume(settings: Settings, limit: int | None = None, idle_s: float = 3.0, timeout_s: float = 60.0) -> list[int]:
    """Read through the service's own KafkaSource: the group's committed offsets, committed after
    each batch; stop at `limit` or when the topic has been idle for `idle_s`. What a restart
    re-reads before the committed offset to refill windows comes marked as replay, not counted."""
    source = kafka_source(settings, max_poll_records=2000)
    seen: list[int] = []
    deadline = time.monotonic() + timeout_s
    last_data = time.monotonic()
    try:
        while time.monotonic() < deadline:
            budget = 2000 if limit is None else min(2000, limit - len(seen))
            if budget == 0:
                break
            records = source.poll(budget, 200)
            if not records:
                if seen and time.monotonic() - last_data > idle_s:
                    break
                continue
            last_data = time.monotonic()
            seen.extend(json.loads(r.value)["ts"] for r in records if not r.replay)  # replays refill windows only
            source.commit()
    finally:
        source.close()
    return seen


def test_ten_thousand_readings_come_back_exactly(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings, [kafka_settings.readings_topic], partitions=3)
    _produce(kafka_settings, 10_000)
    seen = _consume(kafka_settings)
    assert len(seen) == 10_000
    assert sorted(seen) == list(range(10_000))

    # the group's committed offsets cover every partition's end
    consumer = make_consumer(kafka_settings)
    parts = [TopicPartition(kafka_settings.readings_topic, p) for p in range(3)]
    ends = consumer.end_offsets(parts)
    committed = {tp: consumer.committed(tp) for tp in parts}
    consumer.close()
    assert committed == ends
    assert sum(ends.values()) == 10_000


def test_second_consumer_resumes_from_committed_offsets(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings, [kafka_settings.readings_topic], partitions=3)
    _produce(kafka_settings, 6_000)
    first = _consume(kafka_settings, limit=2_500)
    assert len(first) == 2_500
    _produce(kafka_settings, 1_000, start=6_000)  # more arrive while nobody reads
    second = _consume(kafka_settings)
    assert not set(first) & set(second), "a message was read twice"
    assert sorted(first + second) == list(range(7_000))


def test_one_producer_clock_ahead_does_not_move_the_commits_time_marker(
    kafka_settings: Settings, kafka_client: str
) -> None:
    """The marker a commit carries is where a restart re-reads from (by offsets_for_times). Before, it
    was the last record's timestamp: one record stamped ahead moved it there, and the next restart
    re-read that much less, or nothing (Kafka 4 refuses records over an hour ahead by default:
    log.message.timestamp.after.max.ms; a broker set otherwise takes any)."""
    from pipeline.kafka import service_source
    from pipeline.kafka.source import committed_ts

    settings = kafka_settings.model_copy(update={"kafka_client": kafka_client})
    ensure_topics(settings, [settings.readings_topic], partitions=1)
    now = int(time.time() * 1000)
    producer = make_producer(settings, acks="all")
    for i, stamp in enumerate([now - 3_000, now - 2_000, now + 50 * 60_000, now - 1_000]):
        producer.send(settings.readings_topic, key=b"pump", value=b'{"i": %d}' % i, timestamp_ms=stamp).get(30)
    producer.close()
    source = service_source(settings)
    try:
        read, deadline = 0, time.monotonic() + 120  # a ceiling against a hang: the wait ends on the count
        while read < 4 and time.monotonic() < deadline:
            read += len(source.poll(10, 200))
        assert read == 4
        (marker,) = [ts for _, ts in source.checkpoint().values()]
        source.commit()
    finally:
        source.close()
    assert marker == now - 1_000  # the latest sane stamp, not the one 50 min ahead
    consumer = make_consumer(settings)
    try:
        meta = consumer.committed(TopicPartition(settings.readings_topic, 0), metadata=True)
    finally:
        consumer.close()
    assert committed_ts(meta.metadata) == now - 1_000
