"""Reading topics outside the service: tailing from now or from the start (tools, benchmarks, tests),
and a bounded slice since a time (the retraining window)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer

from pipeline.kafka.clients import KafkaUnavailable, StallNudge, make_consumer, partitions_of
from pipeline.records import Record
from pipeline.settings import Settings

log = logging.getLogger("sensorcast.kafka")


def topic_reader(
    settings: Settings,
    topic: str,
    from_beginning: bool = False,
    timeout_s: float = 30.0,
    since_ms: int | None = None,
    **overrides: Any,
) -> KafkaConsumer:
    """A group-less consumer of every partition of `topic`, placed at its start, at the first message
    written at or after `since_ms` (broker time), or at its end now: for tailing, tests, benchmarks
    and the query API (explicit assignment, so there is no join to wait for)."""
    consumer = make_consumer(settings, group=None, **overrides)
    try:
        tps = partitions_of(consumer, topic, timeout_s)
    except KafkaUnavailable:
        consumer.close()
        raise
    consumer.assign(tps)
    ends = consumer.end_offsets(tps)
    if from_beginning or since_ms is not None:  # from the start wins over a time, as it always has
        offsets = start_offsets(consumer, tps, ends, None if from_beginning else since_ms)
    else:
        offsets = ends
    for tp in tps:
        consumer.seek(tp, offsets[tp])
    return consumer


def start_offsets(consumer: KafkaConsumer, tps: list, ends: dict, since_ms: int | None) -> dict:
    """Per partition, the first offset written at or after `since_ms` (broker time; the end when
    nothing is that recent), or the partition's start when `since_ms` is None."""
    if since_ms is None:
        return consumer.beginning_offsets(tps)
    found = consumer.offsets_for_times({tp: since_ms for tp in tps})
    return {tp: (found[tp].offset if found.get(tp) is not None else ends[tp]) for tp in tps}


class TopicCollector(threading.Thread):
    """Collects a topic's messages (decoded JSON) in the background, stamping their arrival time.
    A message that is not JSON is counted in `junk` and skipped: topics are not trusted."""

    def __init__(self, settings: Settings, topic: str, from_beginning: bool = False, **overrides: Any):
        super().__init__(name=f"collect-{topic}", daemon=True)
        import orjson

        self._decode = orjson.loads
        self.consumer = topic_reader(settings, topic, from_beginning=from_beginning, **overrides)
        self.arrivals: list[tuple[float, dict]] = []
        self.junk = 0
        self._halt = threading.Event()
        self.start()

    @property
    def docs(self) -> list[dict]:
        return [doc for _, doc in list(self.arrivals)]

    def run(self) -> None:
        unstick = StallNudge(self.consumer, timeout_ms=1000, tolerant=True)  # a broker away: the next poll tries again
        while not self._halt.is_set():
            batches = self.consumer.poll(timeout_ms=100)
            if not batches:
                unstick()
            for records in batches.values():
                now = time.time()
                for r in records:
                    try:
                        self.arrivals.append((now, self._decode(r.value)))
                    except (ValueError, TypeError):  # orjson's JSONDecodeError is a ValueError; None is a TypeError
                        self.junk += 1
        self.consumer.close()

    def close(self) -> None:
        self._halt.set()
        self.join(timeout=10)


MIN_PULL_RATE = 2_000  # records/s a slice must at least reach: its timeout is 60 s + records / this


def cap_offsets(starts: dict[int, int], ends: dict[int, int], max_records: int | None) -> tuple[dict[int, int], int]:
    """Move the starts forward so that at most `max_records` are read, keeping the most recent of
    every partition in proportion to what it holds. Returns (starts, records left out).

    >>> cap_offsets({0: 0, 1: 0}, {0: 600, 1: 200}, 400)
    ({0: 300, 1: 100}, 400)
    >>> cap_offsets({0: 0}, {0: 50}, 400)
    ({0: 0}, 0)
    """
    total = sum(ends[p] - starts[p] for p in starts)
    if max_records is None or total <= max_records:
        return dict(starts), 0
    kept = {p: (ends[p] - starts[p]) * max_records // total for p in starts}
    return {p: ends[p] - kept[p] for p in starts}, total - sum(kept.values())


@dataclass
class SlicePlan:
    """Which records a slice reads: per partition the offsets [first, end), and how many older ones
    the cap left out."""

    topic: str
    offsets: dict[int, tuple[int, int]]
    left_out: int = 0

    @property
    def total(self) -> int:
        return sum(end - first for first, end in self.offsets.values())

    @property
    def timeout_s(self) -> float:
        return 60.0 + self.total / MIN_PULL_RATE


@contextmanager
def topic_slice(
    settings: Settings, topic: str, since_ms: int | None, max_records: int | None = None
) -> Iterator[tuple[SlicePlan, Iterator[list[Record]]]]:
    """The records of `topic` written at or after `since_ms` (broker time, the record timestamp:
    the only time Kafka can seek by; None: from the start) up to the end offsets as they are now, at
    most `max_records` of them (the most recent), by a group-less consumer: no consumer group is
    joined or moved, so the service's offsets are never touched.

    Yields the plan (known before any record is read: size the columns and the progress bar by it)
    and an iterator of batches of records (one poll's worth: only a batch is held at a time).
    Bounded in time by the plan's timeout, which scales with the records to read: raises
    KafkaUnavailable rather than hang."""
    # 8 MiB fetches: as fast here as 64 MiB ones, and they keep fewer decoded records waiting in memory
    consumer = make_consumer(settings, group=None, max_poll_records=5000, fetch_max_bytes=8 * 1024 * 1024)
    try:
        tps = partitions_of(consumer, topic, timeout_s=30)
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        starts = start_offsets(consumer, tps, ends, since_ms)
        first, left_out = cap_offsets(
            {tp.partition: starts[tp] for tp in tps}, {tp.partition: ends[tp] for tp in tps}, max_records
        )
        plan = SlicePlan(topic, {tp.partition: (first[tp.partition], ends[tp]) for tp in tps}, left_out)
        for tp in tps:
            consumer.seek(tp, first[tp.partition])

        def batches() -> Iterator[list[Record]]:
            deadline = time.monotonic() + plan.timeout_s
            pending = {tp for tp in tps if first[tp.partition] < ends[tp]}
            while pending:
                if time.monotonic() > deadline:
                    raise KafkaUnavailable(
                        f"reading {plan.total:,} records of {topic} did not reach its end offsets within "
                        f"{plan.timeout_s:.0f} s (at least {MIN_PULL_RATE:,} records/s expected)"
                    )
                for tp, batch in consumer.poll(timeout_ms=200).items():
                    end = ends[tp]
                    yield [
                        Record(r.value, r.key, tp.topic, tp.partition, r.offset, r.timestamp)
                        for r in batch
                        if r.offset < end
                    ]
                pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}

        yield plan, batches()
    finally:
        consumer.close()


@dataclass
class TopicSlice:
    """What `read_since` read: the records, and per partition the offsets [first, end) it covered."""

    topic: str
    records: list[Record]
    offsets: dict[int, tuple[int, int]]


def read_since(settings: Settings, topic: str, since_ms: int | None) -> TopicSlice:
    """Every record of `topic` written at or after `since_ms` (None: from the start), as Records in
    memory: for tools and tests on small topics (the training window reads `topic_slice` into
    columns instead)."""
    with topic_slice(settings, topic, since_ms) as (plan, batches):
        records = [r for batch in batches for r in batch]
    return TopicSlice(topic, records, plan.offsets)


class TopicFollower(threading.Thread):
    """Calls `on_message(value)` for every message that arrives on `topic` from now on (the service
    follows model announcements this way), or `on_message(record)` with `whole_records` (a
    `pipeline.records.Record`: key and timestamp too). A broker hiccup is retried from the next
    offset, never from the end, and a message the handler raises on is skipped and counted: nothing
    on an internal topic can stop a follower or make it miss what was published during an outage."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        on_message,
        poll_ms: int = 200,
        since_ms: int | None = None,
        whole_records: bool = False,
    ):
        super().__init__(name=f"follow-{topic}", daemon=True)
        self.settings, self.topic, self.on_message, self.poll_ms = settings, topic, on_message, poll_ms
        self.whole_records = whole_records
        self.since_ms = since_ms  # start from the messages written since then (None: from now)
        self.halt = threading.Event()
        self.ready = threading.Event()
        self.caught_up = threading.Event()  # what the topic held when following began has been handed over
        self.next_offsets: dict[int, int] = {}  # partition → the next offset to hand over
        self.skipped = 0  # messages the handler raised on: counted, logged, skipped

    def run(self) -> None:
        consumer, ends = None, {}
        while not self.halt.is_set():
            try:
                if consumer is None:
                    consumer = topic_reader(self.settings, self.topic, since_ms=self.since_ms)
                    self.since_ms = None  # after a reconnect: where it stopped, never the history again
                    self._resume(consumer)
                    ends = {} if self.caught_up.is_set() else consumer.end_offsets(list(consumer.assignment()))
                    self.ready.set()
                for records in consumer.poll(timeout_ms=self.poll_ms).values():
                    for r in records:
                        self._hand_over(r)
                        self.next_offsets[r.partition] = r.offset + 1
                if not self.caught_up.is_set() and all(consumer.position(tp) >= end for tp, end in ends.items()):
                    self.caught_up.set()
            except Exception as e:  # keep following from the next offset; the registry poll is the fallback meanwhile
                log.warning("following %s failed (%s); retrying from where it stopped", self.topic, e)
                if consumer is not None:
                    consumer.close()
                    consumer = None
                self.halt.wait(2.0)
        if consumer is not None:
            consumer.close()

    def _hand_over(self, r) -> None:
        """One message to the handler; one it cannot take is counted and skipped, never fatal."""
        try:
            if self.whole_records:
                self.on_message(Record(r.value, r.key, r.topic, r.partition, r.offset, r.timestamp))
            else:
                self.on_message(r.value)
        except Exception as e:
            self.skipped += 1
            log.warning("skipped %s[%d]@%d: %s: %s", self.topic, r.partition, r.offset, type(e).__name__, e)

    def _resume(self, consumer) -> None:
        """After a reconnect, each partition from the next offset not yet handed over (or its start, if
        retention removed it): nothing published meanwhile is lost."""
        if not self.next_offsets:
            return
        tps = [tp for tp in consumer.assignment() if tp.partition in self.next_offsets]
        starts = consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(self.next_offsets[tp.partition], starts[tp]))

    def close(self) -> None:
        self.halt.set()
        self.join(timeout=10)
