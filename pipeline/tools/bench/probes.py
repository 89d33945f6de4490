"""What a bench asks of a running stack, from outside: has a consumer group committed the readings
topic's end, which version a service says it serves, and a wait on such a question with a ceiling
that only stops a hang (a bench waits on events and counts, never on a wall-clock budget)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable

from pipeline.settings import Settings


def committed_everything(settings: Settings, group: str) -> bool:
    """The consumer group has committed the readings topic's end on every partition."""
    from kafka import KafkaConsumer, TopicPartition

    from pipeline.kafka import make_admin
    from pipeline.kafka.security import kafka_python_security

    admin = make_admin(settings)
    try:
        committed = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, **kafka_python_security(settings))
    try:
        topic = settings.readings_topic
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        ends, starts = consumer.end_offsets(parts), consumer.beginning_offsets(parts)
    finally:
        consumer.close()
    # an empty partition gets no commit: nothing to commit there
    return all(end == starts[tp] or (tp in committed and committed[tp].offset >= end) for tp, end in ends.items())


def wait_until(check: Callable[[], bool], ceiling_s: float, what: str, poll_s: float = 0.5) -> float:
    """Wait for `check`, returning the seconds it took; raise after `ceiling_s` (a hang guard)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > ceiling_s:
            raise TimeoutError(f"{what}: not after {ceiling_s:.0f} s")
        time.sleep(poll_s)
    return time.monotonic() - started


def served_version(port: int) -> str | None:
    try:
        doc = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
    except (OSError, ValueError):
        return None
    return (doc.get("model") or {}).get("version")
