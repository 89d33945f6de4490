"""Kafka client factories and topic set-up: the only module that knows kafka-python's knobs.

The tuned defaults come from measurements on 2 cores (see ../shared/notes/stack-facts.md):
linger 5 ms and large batches on the producer, manual commits on the consumer, and every start-up
wait bounded so that a client that cannot join fails fast with a clear error.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
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
