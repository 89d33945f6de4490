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
