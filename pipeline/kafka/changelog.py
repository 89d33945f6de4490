"""Read the windows' changelog (pipeline/changelog.py) back on start: each partition from its start
to its end now, read_committed, folded into the latest state per entity and the last marker."""

from __future__ import annotations

import logging
import time

from kafka import KafkaConsumer, TopicPartition

from pipeline.changelog import PartitionState, Resume, fold, resume_from
from pipeline.kafka.reader import MIN_PULL_RATE

log = logging.getLogger("sensorcast.kafka")


def read_changelog(
    consumer: KafkaConsumer, topic: str, partitions: list[int], lookback: int, channels: int
) -> dict[int, PartitionState]:
    """{partition: its state} for the partitions read to their end; a partition left unread (a topic
    missing, a read that stalls) is absent, and its input is replayed instead. `consumer` is group-less."""
    found = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in partitions if p in found]
    if not tps:
        return {}
    consumer.assign(tps)
    begins, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
    out = {tp.partition: PartitionState() for tp in tps}
    left = {tp for tp in tps if ends[tp] > begins[tp]}
    for tp in tps:
        consumer.seek(tp, begins[tp])
    total = sum(ends[tp] - begins[tp] for tp in tps)
    deadline = time.monotonic() + 60 + total / MIN_PULL_RATE
    while left and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=500, max_records=10_000).items():
            fold(((r.key, r.value) for r in records), lookback, channels, into=out[tp.partition])
        for tp in list(left):  # the position passes transaction markers too, which poll never returns
            if consumer.position(tp) >= ends[tp]:
                left.discard(tp)
    for tp in left:
        log.warning("the changelog partition %d was not read to its end in time: its input is replayed", tp.partition)
        del out[tp.partition]
    return out


def start_from(partition: int, part: PartitionState, committed: int, replay_start: int) -> tuple[int, Resume | None]:
    """Where a partition's input is read from, and the log line that says which path it took: its
    changelog's marker when usable (with what to skip), else the replay's start."""
    plan, why = resume_from(part, committed, replay_start)
    if plan is None:
        log.info("partition %d: %s; replaying %d records", partition, why, committed - replay_start)
        return replay_start, None
    log.info(
        "partition %d: %d windows from the changelog, then %d records from its position %d",
        partition, len(part.states), committed - plan.start, plan.start,
    )  # fmt: skip
    return plan.start, plan
