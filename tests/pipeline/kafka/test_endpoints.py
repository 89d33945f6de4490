"""The service's two ends on each client: a sink mark settles once its messages are acknowledged,
and a source commits exactly up to a checkpoint (what the loop's trailing commits rely on)."""

from __future__ import annotations

import time

import pytest

from pipeline.kafka import ensure_topics, service_sink, service_source
from pipeline.records import Outgoing
from pipeline.settings import Settings

pytestmark = pytest.mark.integration


def _settle(sink, mark: int, timeout_s: float = 30) -> float:
    started = time.monotonic()
    while not sink.settled(mark):
        assert time.monotonic() - started < timeout_s, "the mark never settled"
        time.sleep(0.005)
    return time.monotonic() - started


def test_a_mark_settles_once_its_messages_are_acknowledged(kafka_settings: Settings, kafka_client: str) -> None:
    s = kafka_settings.model_copy(update={"kafka_client": kafka_client})
    ensure_topics(s, [s.forecasts_topic])
    sink = service_sink(s)
    try:
        sink.publish([Outgoing(s.forecasts_topic, f"k{i}".encode(), b"x" * 100) for i in range(500)])
        first = sink.mark()
        sink.publish([Outgoing(s.forecasts_topic, b"late", b"y")])
        second = sink.mark()
        _settle(sink, first)
        _settle(sink, second)
        assert sink.settled(sink.mark())  # nothing published since: settled at once
    finally:
        sink.close()


def test_a_source_commits_up_to_its_checkpoint_and_no_further(kafka_settings: Settings, kafka_client: str) -> None:
    s = kafka_settings.model_copy(update={"kafka_client": kafka_client, "offset_reset": "earliest"})
    ensure_topics(s, [s.readings_topic], partitions=1)
    sink = service_sink(s)
    sink.publish([Outgoing(s.readings_topic, b"k", str(i).encode()) for i in range(30)])
    sink.flush()
    sink.close()
    source = service_source(s)
    try:
        got: list = []
        while len(got) < 10:
            got += source.poll(10 - len(got), 200)
        checkpoint = source.checkpoint()
        while len(got) < 30:
            got += source.poll(30 - len(got), 200)
        source.commit(checkpoint)
    finally:
        source.close()
    resumed = service_source(s)  # the same group starts where the checkpoint said
    try:
        first: list = []
        deadline = time.monotonic() + 30
        while not first and time.monotonic() < deadline:
            first = [r for r in resumed.poll(30, 200) if not r.replay]  # replays refill windows only
        assert first and first[0].value == b"10"
    finally:
        resumed.close()


def test_a_message_the_broker_refuses_becomes_a_dead_letter_and_the_sink_goes_on(
    kafka_settings: Settings, kafka_client: str, collect
) -> None:
    """1.2 MB is over the broker's 1 MB limit: that one send is refused, a small dead letter names it,
    and the messages around it are delivered; flush does not raise (one record never stops the service)."""
    s = kafka_settings.model_copy(update={"kafka_client": kafka_client})
    ensure_topics(s, [s.forecasts_topic, s.dlq_topic])
    dlq = collect(s, s.dlq_topic)
    out = collect(s, s.forecasts_topic)
    sink = service_sink(s)
    try:
        huge = b'"' + b"x" * 1_200_000 + b'"'
        sink.publish([Outgoing(s.forecasts_topic, b"a", b"1"), Outgoing(s.forecasts_topic, b"b", huge)])
        sink.publish([Outgoing(s.forecasts_topic, b"c", b"2")])
        _settle(sink, sink.mark())
        sink.flush()
        assert sink.refused == 1  # checked before the send: no producer poisoned by a fatal refusal
    finally:
        sink.close()
    letters = dlq.wait_for(1, timeout_s=30)
    assert [(d["reason"], d["key"], d["payload_bytes"]) for d in letters] == [("refused_by_broker", "b", len(huge))]
    assert sorted(out.wait_for(2, timeout_s=30)) == [1, 2]


def test_the_kafka_python_source_reads_partitions_added_to_the_topic(kafka_settings: Settings) -> None:
    """It assigns partitions itself (no group rebalancing): before, a partition added later was never read."""
    from kafka.admin import NewPartitions

    from pipeline.kafka import kafka_source, make_admin, make_producer

    s = kafka_settings
    ensure_topics(s, [s.readings_topic], partitions=1)
    source = kafka_source(s, metadata_max_age_ms=500)
    source.partition_check_s = 0.2
    admin = make_admin(s)
    try:
        admin.create_partitions({s.readings_topic: NewPartitions(2)})
        producer = make_producer(s)
        producer.send(s.readings_topic, value=b"on the new partition", partition=1).get(timeout=30)
        producer.close()
        got: list = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            got = source.poll(10, 200)
        assert [(r.partition, r.value) for r in got] == [(1, b"on the new partition")]
    finally:
        admin.close()
        source.close()


def _values(settings: Settings, topic: str, isolation_level: str) -> list[bytes]:
    """Every value on `topic` that a reader of `isolation_level` sees, read to the end."""
    from pipeline.kafka import make_consumer, partitions_of

    reader = make_consumer(settings, group=None, isolation_level=isolation_level)
    try:
        tps = partitions_of(reader, topic, 30)
        reader.assign(tps)
        reader.seek_to_beginning(*tps)
        ends, got, deadline = reader.end_offsets(tps), [], time.monotonic() + 30
        while any(reader.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, "the topic was never read to its end"
            got += [r.value for batch in reader.poll(200).values() for r in batch]
        return got
    finally:
        reader.close()


def test_exactly_once_output_is_read_once_its_offsets_commit_in_the_same_transaction(
    kafka_settings: Settings, kafka_client: str
) -> None:
    """Four readings' outputs commit with the offsets of three (a commit point trails what was
    published); the output published after is aborted when the sink closes without a commit (a
    failed batch): a read_committed reader sees the four, the group's offset is 3."""
    from pipeline.kafka import make_admin, service_ends

    s = kafka_settings.model_copy(
        update={"kafka_client": kafka_client, "offset_reset": "earliest", "processing_guarantee": "exactly-once"}
    )
    ensure_topics(s, [s.readings_topic], partitions=1)
    ensure_topics(s, [s.forecasts_topic])
    feeder = service_sink(s.model_copy(update={"processing_guarantee": "at-least-once"}))
    feeder.publish([Outgoing(s.readings_topic, b"k", str(i).encode()) for i in range(4)])
    feeder.flush()
    feeder.close()
    source, sink = service_ends(s)
    try:
        got: list = []
        while len(got) < 4:
            got += source.poll(4 - len(got), 200)
        sink.publish([Outgoing(s.forecasts_topic, b"k", b"out " + r.value) for r in got])
        source.commit({k: (offset - 1, ts) for k, (offset, ts) in source.checkpoint().items()})
        sink.publish([Outgoing(s.forecasts_topic, b"k", b"aborted")])
        sink.flush()  # on the broker, in the open transaction
    finally:
        sink.close()  # the open transaction (the "aborted" output) is aborted
        source.close()
    assert _values(s, s.forecasts_topic, "read_committed") == [b"out 0", b"out 1", b"out 2", b"out 3"]
    assert b"aborted" in _values(s, s.forecasts_topic, "read_uncommitted")
    admin = make_admin(s)
    try:
        offsets = admin.list_group_offsets(s.consumer_group)[s.consumer_group]
    finally:
        admin.close()
    assert [m.offset for m in offsets.values()] == [3]


def test_a_restarted_kafka_python_instance_fences_the_one_before_it(kafka_settings: Settings) -> None:
    """The kafka-python service's transactional id is fixed by its group and partitions: a second
    process of the same instance aborts the first one's open transaction at once, and the first
    can commit nothing after that (a zombie)."""
    from pipeline.kafka.sink import OutputRefused, transactional_kafka_sink

    s = kafka_settings.model_copy(update={"processing_guarantee": "exactly-once", "partitions": "0"})
    ensure_topics(s, [s.forecasts_topic])
    zombie = transactional_kafka_sink(s)
    try:
        zombie.publish([Outgoing(s.forecasts_topic, b"k", b"from the zombie")])
        zombie.flush()
        successor = transactional_kafka_sink(s)
        try:
            successor.publish([Outgoing(s.forecasts_topic, b"k", b"from the successor")])
            successor.commit_with({}, s.consumer_group)
        finally:
            successor.close()
        with pytest.raises(OutputRefused, match="aborted"):
            zombie.commit_with({}, s.consumer_group)
    finally:
        zombie.close()
    assert _values(s, s.forecasts_topic, "read_committed") == [b"from the successor"]
