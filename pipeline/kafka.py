"""Kafka client factories and topic set-up: the only module that knows kafka-python's knobs.

The tuned defaults come from measurements on 2 cores (see ../shared/notes/stack-facts.md):
linger 5 ms and large batches on the producer, manual commits on the consumer, and every start-up
wait bounded so that a client that cannot join fails fast with a clear error.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterable

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError, UnknownError
from kafka.partitioner import DefaultPartitioner
from kafka.partitioner.default import murmur2

from pipeline.settings import Settings


class KafkaUnavailable(RuntimeError):
    pass


class KeyCachingPartitioner(DefaultPartitioner):
    """The default partitioner's choice (murmur2 of the key, as the Java client), remembered per
    key and partition count: kafka-python hashes in pure Python on every send, and a stream's keys
    are a few thousand entities repeating."""

    def __init__(self, max_keys: int = 100_000):
        self.max_keys = max_keys
        self._chosen: dict[tuple[bytes, int], int] = {}

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        if serialized_key is None:
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        partitions = cluster.partitions_for_topic(topic)
        if not partitions:
            raise ValueError(f"Topic {topic} not found in ClusterMetadata")
        slot = (serialized_key, len(partitions))
        chosen = self._chosen.get(slot)
        if chosen is None:
            if len(self._chosen) >= self.max_keys:
                self._chosen.clear()
            chosen = self._chosen[slot] = sorted(partitions)[(murmur2(serialized_key) & 0x7FFFFFFF) % len(partitions)]
        return chosen


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    config: dict[str, Any] = dict(
        partitioner=KeyCachingPartitioner(),
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        linger_ms=5,
        batch_size=256 * 1024,
        max_request_size=4 * 1024 * 1024,
        client_id="sensorcast-producer",
    )
    config.update(overrides)
    try:
        return KafkaProducer(**config)
    except Exception as e:  # NoBrokersAvailable and friends
        raise KafkaUnavailable(f"cannot reach Kafka at {settings.bootstrap_servers}: {e}") from e


SETTINGS_GROUP = "<settings.consumer_group>"


def make_consumer(settings: Settings, group: str | None = SETTINGS_GROUP, **overrides: Any) -> KafkaConsumer:
    """`group=None` makes a group-less consumer (it cannot commit); the default is the settings' group."""
    config: dict[str, Any] = dict(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.consumer_group if group == SETTINGS_GROUP else group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=2000,
        fetch_max_wait_ms=5,
        client_id="sensorcast-consumer",
    )
    config.update(overrides)
    try:
        return KafkaConsumer(**config)
    except Exception as e:
        raise KafkaUnavailable(f"cannot reach Kafka at {settings.bootstrap_servers}: {e}") from e


def make_admin(settings: Settings) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="sensorcast-admin")
    except Exception as e:
        raise KafkaUnavailable(f"cannot reach Kafka at {settings.bootstrap_servers}: {e}") from e


def ensure_topics(settings: Settings, topics: Iterable[str] | None = None, partitions: int | None = None) -> None:
    """Create the topics that are missing (idempotent) and wait until their metadata is visible."""
    names = list(topics or [settings.readings_topic, settings.forecasts_topic, settings.dlq_topic, settings.models_topic])
    parts = partitions or settings.topic_partitions
    admin = make_admin(settings)
    try:
        existing = set(admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            try:
                admin.create_topics([NewTopic(n, num_partitions=parts, replication_factor=1) for n in missing])
            except TopicAlreadyExistsError:
                pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if _all_led(admin, names):
                return
            time.sleep(0.2)
        raise KafkaUnavailable(f"topics {names} did not get partition leaders within 30 s")
    finally:
        admin.close()


def _all_led(admin: KafkaAdminClient, names: list[str]) -> bool:
    """Every partition has a leader: right after a broker restart a topic can exist without one."""
    try:
        described = admin.describe_topics(names)
    except Exception:
        return False
    found = {t["name"]: t for t in described if t.get("error_code", 0) == 0}
    return set(found) == set(names) and all(
        p.get("error_code", 0) == 0 and p.get("leader_id", -1) >= 0 for t in found.values() for p in t["partitions"]
    )


def partitions_of(consumer: KafkaConsumer, topic: str, timeout_s: float = 30.0) -> list[TopicPartition]:
    """The topic's partitions once the client's metadata shows them; a bounded wait."""
    deadline = time.monotonic() + timeout_s
    while not (found := consumer.partitions_for_topic(topic)):
        if time.monotonic() > deadline:
            raise KafkaUnavailable(f"topic {topic} has no partitions visible after {timeout_s:.0f} s")
        time.sleep(0.1)
    return [TopicPartition(topic, p) for p in sorted(found)]


# -- the service's Source and Sink on Kafka ------------------------------------------------------


class KafkaSource:
    """pipeline.service.Source over two KafkaConsumers: a group-less `fetcher` reads, a `committer`
    in the consumer group commits.

    Why two: kafka-python 3 makes every poll of a grouped consumer wait on its I/O thread to
    confirm the group coordinator, about 8% of the serving loop under load; a group-less consumer
    skips that, and the committer talks to the coordinator only on commits.

    Partitions are assigned explicitly (all of the topic's, or the `partitions` given), not by
    group rebalancing: kafka-python 3.0 was seen to stall for good in a rejoin right after its first
    commit (assignment made before topic metadata arrived, then a rebalance that never completed).
    Offsets are still committed to the consumer group, so a restart resumes where it stopped.

    On start each partition is rewound up to `rehydrate_records` before its committed offset and
    those records are marked as replays, so the windows that a previous process held are rebuilt
    before new readings are forecast: a restart costs no forecasts."""

    def __init__(self, fetcher: KafkaConsumer, committer: KafkaConsumer, topic: str, rehydrate_records: int = 0,
                 partitions: list[int] | None = None, timeout_s: float = 30.0, new_group_from: str = "earliest"):
        self.fetcher, self.committer = fetcher, committer
        self.replay_until: dict[TopicPartition, int] = {}
        self._position: dict[TopicPartition, int] = {}  # next offset to read, per partition
        self._committed: dict[TopicPartition, int] = {}
        self._last_unstick = 0.0
        tps = [tp for tp in partitions_of(fetcher, topic, timeout_s) if partitions is None or tp.partition in partitions]
        fetcher.assign(tps)
        beginnings = fetcher.beginning_offsets(tps)
        ends = fetcher.end_offsets(tps)
        for tp in tps:
            committed = committer.committed(tp)
            if committed is None:  # a new group: from the topic's start, or only what comes next
                start = beginnings[tp] if new_group_from == "earliest" else ends[tp]
            else:
                self._committed[tp] = committed
                start = max(beginnings[tp], committed - rehydrate_records)
                if start < committed:
                    self.replay_until[tp] = committed
            fetcher.seek(tp, start)
            self._position[tp] = start

    def poll(self, max_records: int, timeout_ms: float):
        from pipeline.service import Record

        batches = self.fetcher.poll(timeout_ms=int(max(timeout_ms, 0)), max_records=max_records)
        if not batches:
            self._unstick()
        out = []
        for tp, records in batches.items():
            if not records:
                continue
            until = self.replay_until.get(tp)
            out.extend(
                Record(r.value, r.key, r.topic, r.partition, r.offset, r.timestamp, until is not None and r.offset < until)
                for r in records
            )
            self._position[tp] = records[-1].offset + 1
            if until is not None and records[-1].offset + 1 >= until:
                del self.replay_until[tp]
        return out

    def _unstick(self) -> None:
        """kafka-python 3 can stall after a fetched batch while a partition awaits offset validation
        (dpkp/kafka-python#3106: empty polls, lag growing); position() waits for that validation.
        Ask for it at most once a second, only when a poll came back empty."""
        now = time.monotonic()
        if now - self._last_unstick < 1.0:
            return
        self._last_unstick = now
        for tp in self.fetcher.assignment():
            self.fetcher.position(tp)

    def commit(self) -> None:
        """Commit every partition read past its last commit (the loop calls this only once all
        that was polled is published and confirmed)."""
        moved = {tp: pos for tp, pos in self._position.items() if self._committed.get(tp) != pos}
        if moved:
            self.committer.commit({tp: OffsetAndMetadata(pos, "", -1) for tp, pos in moved.items()})
            self._committed.update(moved)

    def lag(self) -> int | None:
        """Messages behind the high watermarks the last fetches reported: local state, no request
        to the broker on the serving path."""
        total, known = 0, False
        for tp in self.fetcher.assignment():
            high = self.fetcher.highwater(tp)
            if high is None:
                continue
            known = True
            total += max(0, high - self._position[tp])
        return total if known else None

    def close(self) -> None:
        self.fetcher.close()
        self.committer.close()


def kafka_source(settings: Settings, **overrides: Any) -> KafkaSource:
    """The service's source as the settings describe it: topic, group, partitions, rehydration."""
    fetcher = make_consumer(settings, group=None, **{"max_poll_records": settings.max_batch, **overrides})
    try:
        committer = make_consumer(settings)
    except KafkaUnavailable:
        fetcher.close()
        raise
    try:
        return KafkaSource(fetcher, committer, settings.readings_topic, settings.rehydrate_records,
                           partitions=settings.partition_list, new_group_from=settings.offset_reset)
    except Exception:
        fetcher.close()
        committer.close()
        raise


def flush_producer(producer: KafkaProducer, timeout_s: float) -> None:
    """`producer.flush`, working round a kafka-python 3.0 quirk: when the broker refuses a batch as too
    large, the producer splits and re-sends it, and a flush racing that split raises
    UnknownError('Future not done') though the halves are still on their way. Flush again until the
    deadline; the per-send futures then say what really failed."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            producer.flush(timeout=max(0.0, deadline - time.monotonic()))
            return
        except UnknownError:
            if time.monotonic() >= deadline:
                raise KafkaTimeoutError(f"sends not confirmed within {timeout_s} s") from None
            time.sleep(0.01)


def close_producer(producer: KafkaProducer, timeout_s: float) -> None:
    """Close without raising: what was not confirmed by now is reported by the futures, not by close."""
    try:
        flush_producer(producer, timeout_s)
    except KafkaError as e:
        log.warning("closing the producer with unconfirmed sends: %s", e)
    try:
        producer.close(timeout=0)
    except KafkaError as e:
        log.warning("the producer did not close cleanly: %s", e)


class KafkaSink:
    """pipeline.service.Sink over a KafkaProducer: flush returns only when every send is acknowledged."""

    def __init__(self, producer: KafkaProducer, flush_timeout_s: float = 30.0):
        self.producer = producer
        self.flush_timeout_s = flush_timeout_s
        self._futures: list = []

    def publish(self, messages) -> None:
        send = self.producer.send
        self._futures.extend(send(m.topic, key=m.key, value=m.value) for m in messages)

    def flush(self) -> None:
        flush_producer(self.producer, self.flush_timeout_s)
        futures, self._futures = self._futures, []
        for f in futures:
            f.get(timeout=0)  # raises KafkaError if a send failed: the batch is then not committed

    def close(self) -> None:
        close_producer(self.producer, self.flush_timeout_s)


def topic_reader(settings: Settings, topic: str, from_beginning: bool = False, timeout_s: float = 30.0, **overrides: Any) -> KafkaConsumer:
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
