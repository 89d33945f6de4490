"""Kafka client factories and topic set-up: the only module that knows kafka-python's knobs.

The tuned defaults come from measurements on 2 cores (see ../shared/notes/stack-facts.md):
linger 5 ms and large batches on the producer, manual commits on the consumer, and every start-up
wait bounded so that a client that cannot join fails fast with a clear error.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from pipeline.settings import Settings


class KafkaUnavailable(RuntimeError):
    pass


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    config: dict[str, Any] = dict(
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


def make_consumer(settings: Settings, *topics: str, group: str | None = None, **overrides: Any) -> KafkaConsumer:
    config: dict[str, Any] = dict(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group if group is not None else settings.consumer_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=2000,
        fetch_max_wait_ms=5,
        client_id="sensorcast-consumer",
    )
    config.update(overrides)
    try:
        return KafkaConsumer(*topics, **config)
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


# -- the service's Source and Sink on Kafka ------------------------------------------------------


class _Rehydrate(ConsumerRebalanceListener):
    """Notes newly assigned partitions; KafkaSource rewinds them on its next poll (kafka-python
    cannot make broker requests from inside this callback)."""

    def __init__(self, source: "KafkaSource"):
        self.source = source

    def on_partitions_revoked(self, revoked) -> None:
        for tp in revoked:
            self.source.replay_until.pop(tp, None)
            self.source.pending.discard(tp)

    def on_partitions_assigned(self, assigned) -> None:
        self.source.pending.update(assigned)


class KafkaSource:
    """pipeline.service.Source over a KafkaConsumer in a group, with manual commits.

    On assignment it rewinds each partition up to `rehydrate_records` before the committed offset
    and marks those records as replays, so the windows a previous process held are rebuilt before
    new readings are forecast: a restart costs no forecasts."""

    def __init__(self, consumer: KafkaConsumer, topic: str, rehydrate_records: int = 0):
        self.consumer = consumer
        self.rewind = rehydrate_records
        self.replay_until: dict[TopicPartition, int] = {}
        self.pending: set[TopicPartition] = set()
        consumer.subscribe([topic], listener=_Rehydrate(self))

    def _rewind(self) -> set[TopicPartition]:
        """Seek the newly assigned partitions back; returns those whose polled records to drop."""
        tps, self.pending = list(self.pending), set()
        if not self.rewind or not tps:
            return set()
        rewound = set()
        beginnings = self.consumer.beginning_offsets(tps)
        for tp in tps:
            committed = self.consumer.committed(tp)
            if committed is None:
                continue
            start = max(beginnings.get(tp, 0), committed - self.rewind)
            if start < committed:
                self.replay_until[tp] = committed
                self.consumer.seek(tp, start)
                rewound.add(tp)
        return rewound

    def poll(self, max_records: int, timeout_ms: float):
        from pipeline.service import Record

        batches = self.consumer.poll(timeout_ms=int(max(timeout_ms, 0)), max_records=max_records)
        if self.pending:
            rewound = self._rewind()  # these partitions' records come again, after their replay
            batches = {tp: recs for tp, recs in batches.items() if tp not in rewound}
        out = []
        for tp, records in batches.items():
            until = self.replay_until.get(tp)
            out.extend(
                Record(r.value, r.key, r.topic, r.partition, r.offset, r.timestamp, until is not None and r.offset < until)
                for r in records
            )
            if until is not None and records and records[-1].offset + 1 >= until:
                del self.replay_until[tp]
        return out

    def commit(self) -> None:
        self.consumer.commit()

    def lag(self) -> int | None:
        """Messages behind the end of the assigned partitions; None before an assignment."""
        parts = self.consumer.assignment()
        if not parts:
            return None
        ends = self.consumer.end_offsets(list(parts))
        return sum(max(0, ends[tp] - self.consumer.position(tp)) for tp in parts)

    def close(self) -> None:
        self.consumer.close()


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
        self.producer.flush(timeout=self.flush_timeout_s)
        futures, self._futures = self._futures, []
        for f in futures:
            f.get(timeout=0)  # raises KafkaError if a send failed: the batch is then not committed

    def close(self) -> None:
        self.producer.close(timeout=self.flush_timeout_s)
