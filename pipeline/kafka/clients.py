"""Kafka client factories and topic set-up: the one place that knows kafka-python's knobs.

The tuned defaults come from measurements on 2 cores (see ../shared/notes/stack-facts.md):
linger 5 ms and large batches on the producer, manual commits on the consumer, and every start-up
wait bounded so that a client that cannot join fails fast with a clear error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import kafka.errors as Errors
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, UnknownError
from kafka.partitioner import DefaultPartitioner
from kafka.partitioner.default import murmur2

from pipeline.kafka.security import kafka_python_security
from pipeline.settings import Settings

log = logging.getLogger("sensorcast.kafka")


class KafkaUnavailable(RuntimeError):
    pass


def unreachable(settings: Settings, error: object) -> KafkaUnavailable:
    """The error for a cluster that did not answer; on a secured one, where to look first."""
    hint = ""
    if settings.kafka_security_protocol != "PLAINTEXT":
        hint = (
            f" (over {settings.kafka_security_protocol}: check SENSORCAST_KAFKA_SASL_USERNAME/_PASSWORD, the "
            "mechanism and SENSORCAST_KAFKA_SSL_CAFILE)"
        )
    return KafkaUnavailable(f"cannot reach Kafka at {settings.bootstrap_servers}: {error}{hint}")


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
        enable_idempotence=True,  # with acks=all and unbounded retries: a broker's restart neither loses nor repeats
        linger_ms=5,
        batch_size=256 * 1024,
        max_request_size=4 * 1024 * 1024,
        client_id="sensorcast-producer",
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        **kafka_python_security(settings),
    )
    config.update(overrides)
    try:
        return KafkaProducer(**config)
    except Exception as e:  # NoBrokersAvailable and friends
        raise unreachable(settings, e) from e


SETTINGS_GROUP = "<settings.consumer_group>"
# kafka-python backs off up to 30 s between reconnects; after a broker restart the service then sat
# idle for up to that long. The Java clients' 1 s bound brings it back within a second or two.
RECONNECT_BACKOFF_MAX_MS = 1000


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
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        isolation_level="read_committed",  # an exactly-once service's aborted output is never read
        **kafka_python_security(settings),
    )
    config.update(overrides)
    try:
        return KafkaConsumer(**config)
    except Exception as e:
        raise unreachable(settings, e) from e


def make_admin(settings: Settings) -> KafkaAdminClient:
    try:
        security = kafka_python_security(settings)
        return KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="sensorcast-admin", **security)
    except Exception as e:
        raise unreachable(settings, e) from e


TOPIC_CONFIGS = {
    "calibration": {"cleanup.policy": "compact"},
    # the windows' changelog: compacted, rolled every 10 min or 64 MiB so the cleaner keeps about one
    # record per entity (it never cleans the active segment), tombstones kept a day for slow readers
    "windows": {
        "cleanup.policy": "compact",
        "segment.ms": "600000",
        "segment.bytes": str(64 * 1024 * 1024),
        "min.cleanable.dirty.ratio": "0.25",
        "delete.retention.ms": "86400000",
    },
}


def ensure_topics(settings: Settings, topics: Iterable[str] | None = None, partitions: int | None = None) -> None:
    """Create the topics that are missing (idempotent) and wait until their metadata is visible. The
    calibration topic is compacted: it keeps the latest message of each model version; so is the
    windows' changelog (one record per entity, pipeline/changelog.py), with segments small enough
    that the cleaner gets to them within minutes."""
    s = settings
    names = list(
        topics
        or [s.readings_topic, s.forecasts_topic, s.dlq_topic, s.models_topic, s.calibration_topic, s.windows_topic]
    )
    parts = partitions or settings.topic_partitions
    admin = make_admin(settings)
    try:
        existing = set(admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            result = admin.create_topics(
                [
                    NewTopic(
                        n,
                        num_partitions=parts,
                        replication_factor=settings.topic_replication,
                        topic_configs=TOPIC_CONFIGS.get(
                            "calibration" if n == s.calibration_topic else "windows" if n == s.windows_topic else "", {}
                        ),
                    )
                    for n in missing
                ],
                raise_errors=False,
            )
            refused = _refused_topics(result)
            if refused:  # a component's login on a secured broker sees only its own topics, and creates none
                log.info("this login may not create or see %s: a secured broker's admin creates them", refused)
                names = [n for n in names if n not in refused]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if _all_led(admin, names):
                return
            time.sleep(0.2)
        raise KafkaUnavailable(f"topics {names} did not get partition leaders within 30 s")
    finally:
        admin.close()


def _refused_topics(result: dict) -> list[str]:
    """The topics a CreateTopics answer refused for lack of rights; any other error but "exists" raises."""
    refused = []
    for topic in result.get("topics", []):
        error = Errors.for_code(topic["error_code"])
        if error in (Errors.TopicAuthorizationFailedError, Errors.ClusterAuthorizationFailedError):
            refused.append(topic["name"])
        elif error not in (Errors.NoError, Errors.TopicAlreadyExistsError):
            raise error(f"creating topic {topic['name']}: {topic.get('error_message')}")
    return refused


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


class StallNudge:
    """kafka-python 3 can stall after a fetched batch while a partition awaits offset validation
    (dpkp/kafka-python#3106: empty polls, lag growing); position() waits for that validation. Call
    this after each empty poll: it asks at most once a second (`timeout_ms` bounds each ask; a
    reader that must not hang on a broker away passes one and `tolerant`)."""

    def __init__(self, consumer: KafkaConsumer, timeout_ms: int | None = None, tolerant: bool = False):
        self.consumer, self.timeout_ms, self.tolerant = consumer, timeout_ms, tolerant
        self._last = 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last < 1.0:
            return
        self._last = now
        try:
            for tp in self.consumer.assignment():
                self.consumer.position(tp, timeout_ms=self.timeout_ms)
        except Exception:
            if not self.tolerant:
                raise


def partitions_of(consumer: KafkaConsumer, topic: str, timeout_s: float = 30.0) -> list[TopicPartition]:
    """The topic's partitions once the client's metadata shows them; a bounded wait."""
    deadline = time.monotonic() + timeout_s
    while not (found := consumer.partitions_for_topic(topic)):
        if time.monotonic() > deadline:
            raise KafkaUnavailable(f"topic {topic} has no partitions visible after {timeout_s:.0f} s")
        time.sleep(0.1)
    return [TopicPartition(topic, p) for p in sorted(found)]


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
    flushed = True
    try:
        flush_producer(producer, timeout_s)
    except KafkaError as e:
        flushed = False
        log.warning("closing the producer with unconfirmed sends: %s", e)
    try:
        producer.close(timeout=timeout_s if flushed else 0)
    except KafkaError as e:
        log.warning("the producer did not close cleanly: %s", e)
