"""The confluent client's own logic, with stand-ins for librdkafka: a transactional call that never
returns (librdkafka#5456) must not hang the service; a partition assigned with a usable changelog
resumes from its marker and skips what the restored windows hold."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from confluent_kafka import TopicPartition

from pipeline.changelog import PartitionState
from pipeline.kafka import confluent
from pipeline.kafka.confluent import ConfluentSource, TransactionalSink
from pipeline.kafka.sink import TransactionAborted


class HangingProducer:
    """Begins transactions; `send_offsets_to_transaction` blocks until released, whatever its timeout."""

    def __init__(self) -> None:
        self.release, self.calls = threading.Event(), []

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def send_offsets_to_transaction(self, offsets, metadata, timeout) -> None:
        self.calls.append("send_offsets")
        self.release.wait(30)  # a ceiling: without the guard the test fails after it, instead of hanging

    def __getattr__(self, name: str):  # anything else (commit, abort, flush) would be a misuse once given up
        def called(*_args, **_kwargs):
            self.calls.append(name)
            return 0

        return called


def test_a_send_offsets_that_never_returns_gives_the_producer_up_instead_of_hanging(monkeypatch) -> None:
    monkeypatch.setattr(confluent, "WEDGED_GRACE_S", 0.2)
    producer = HangingProducer()
    sink = TransactionalSink(producer, timeout_s=0.1)
    started = time.monotonic()
    try:
        with pytest.raises(TransactionAborted, match="did not return within 0.3 s"):
            sink.commit_with([TopicPartition("readings", 0, 5)], object())
        assert time.monotonic() - started < 30  # given up before the stand-in's own ceiling
        assert sink.wedged and not sink.open
        sink.close()  # leaves the producer to the call that holds it: no abort, no flush
        assert producer.calls == ["begin", "send_offsets"]
    finally:
        producer.release.set()


class Message:
    def __init__(self, offset: int, key: bytes) -> None:
        self._offset, self._key = offset, key

    def error(self):
        return None

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return b"{}"

    def topic(self) -> str:
        return "r"

    def timestamp(self) -> tuple[int, int]:
        return (1, self._offset)


class GroupConsumer:
    """Partition 0 of topic r committed at 15, offsets 0..19 on it; what was read is handed out once."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages, self.assigned_at = messages, []

    def subscribe(self, topics, **callbacks) -> None:
        self.callbacks = callbacks

    def committed(self, partitions, timeout):
        return [TopicPartition("r", 0, 15)]

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        return (0, 20)

    def incremental_assign(self, partitions) -> None:
        self.assigned_at = [(tp.partition, tp.offset) for tp in partitions]

    def poll(self, timeout):
        return self.messages.pop(0) if self.messages else None

    def consume(self, n, timeout):
        out, self.messages = self.messages[:n], self.messages[n:]
        return out


def test_an_assignment_resumes_from_the_changelog_and_skips_what_a_restored_window_holds() -> None:
    """The changelog's marker is 10, a's window holds up to 12 (a capture cut short): the partition is
    read from 10, a's readings before 12 are not pushed again, b's are, all as replays up to 15."""
    from pipeline.state import EntityState

    a = EntityState(lookback=4, channels=2, values=np.zeros((4, 2), np.float32), position=12)
    keys = [b"a", b"b", b"a", b"b", b"a", b"a"]
    consumer = GroupConsumer([Message(10 + i, k) for i, k in enumerate(keys)])
    source = ConfluentSource(
        consumer, "r", rehydrate_records=100, read_changelog=lambda parts: {0: PartitionState(10, {"a": a})}
    )
    loaded: list[dict] = []
    source.on_restore = loaded.append
    source._on_assign(consumer, [TopicPartition("r", 0)])
    assert consumer.assigned_at == [(0, 10)] and list(loaded[0]) == ["a"] and loaded[0]["a"][1] == 0
    records = source.poll(100, 0)
    assert [(r.offset, r.key, r.replay) for r in records] == [
        (11, b"b", True), (12, b"a", True), (13, b"b", True), (14, b"a", True), (15, b"a", False)
    ]  # fmt: skip
    assert source.checkpoint()[0][0] == 16 and not source.replay_until and not source._skip
