"""Following an internal topic: nothing on it can stop the follower or make it miss what comes after."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.kafka import TopicFollower, ensure_topics, make_producer
from pipeline.settings import Settings

pytestmark = pytest.mark.integration


def test_a_message_the_handler_raises_on_is_skipped_and_the_follower_reads_on_from_the_next(
    kafka_settings: Settings,
) -> None:
    """A JSON list where an announcement was expected raised in the handler. Before, the follower then
    reconnected at the topic's end: whatever was published while it reconnected (here, two
    announcements) was never seen."""
    topic = kafka_settings.models_topic
    ensure_topics(kafka_settings, [topic])
    seen: list[bytes] = []
    raised = threading.Event()
    release = threading.Event()

    def handler(value: bytes) -> None:
        if value == b"[1, 2]":
            raised.set()
            release.wait(30)  # the next messages are published while this one is being refused
            raise AttributeError("'list' object has no attribute 'get'")
        seen.append(value)

    follower = TopicFollower(kafka_settings, topic, handler)
    follower.start()
    producer = make_producer(kafka_settings, linger_ms=0)
    try:
        assert follower.ready.wait(60)
        for value in (b'{"v": 1}', b"[1, 2]"):  # keyed as announcements are: one partition, one order
            producer.send(topic, key=b"model", value=value).get(30)
        assert raised.wait(60)
        for value in (b'{"v": 3}', b'{"v": 4}'):
            producer.send(topic, key=b"model", value=value).get(30)
        release.set()
        deadline = time.monotonic() + 120  # a ceiling against a hang: the wait ends on the count
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        producer.close()
        follower.close()
    assert seen == [b'{"v": 1}', b'{"v": 3}', b'{"v": 4}'] and follower.skipped == 1
