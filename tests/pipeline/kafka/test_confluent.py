"""The confluent transactional sink's own logic, with a stand-in producer: a transactional call that
never returns (librdkafka#5456) must not hang the service."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import TopicPartition

from pipeline.kafka import confluent
from pipeline.kafka.confluent import TransactionalSink
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
