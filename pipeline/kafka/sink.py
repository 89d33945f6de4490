"""The service's Sink over Kafka: publish, and confirm every send before the loop commits.

A message larger than `max_message_bytes` (under the broker's 1 MB `message.max.bytes`) is never
sent: a small dead letter that names it (topic, key, size, SHA-256) takes its place, so one record
never stops the service and nothing is lost silently. The check is made before the send because
kafka-python's idempotent producer treats a broker's MESSAGE_TOO_LARGE as fatal: it aborts every
batch after it, the dead letter's too. A refusal the check did not foresee (a broker limit below
`max_message_bytes`), a refused topic (missing, not authorized) or a broker that never answers stops
the service with a clear `OutputRefused`, and nothing is committed past what was confirmed. The
confluent sink (pipeline/kafka/confluent.py) checks alike, and replaces a refused message after the
fact too.
"""

from __future__ import annotations

import hashlib
import logging

import orjson
from kafka import KafkaProducer
from kafka.errors import (
    CorruptRecordError,
    InvalidRecordError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)

from pipeline.kafka.clients import close_producer, flush_producer, make_producer
from pipeline.records import Outgoing
from pipeline.settings import Settings

log = logging.getLogger("sensorcast.kafka")
# errors that belong to one message, not to the topic or the cluster
PER_MESSAGE = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError, CorruptRecordError)
MAX_MESSAGE_BYTES = 1_000_000  # key + value; the broker's default message.max.bytes is 1,048,588 with headers


def within_limit(message: Outgoing, limit: int, dlq_topic: str) -> Outgoing | None:
    """None for a message that may be sent as it is; for one over `limit` (key + value), the small
    dead letter to send in its place (checked before the send on both clients)."""
    size = len(message.value or b"") + len(message.key or b"")
    if size <= limit:
        return None
    log.error("a %d-byte message to %s is over the limit; a dead letter names it", size, message.topic)
    letter = refusal_letter(message, f"{size} bytes is over the limit of {limit}")
    return Outgoing(dlq_topic, message.key, letter)


class OutputRefused(RuntimeError):
    """The cluster refuses the service's output as a whole (a topic missing or not authorized, no
    acknowledgement in time): the service stops, and what was not confirmed is not committed."""


class TransactionAborted(OutputRefused):
    """Exactly-once: the open transaction was aborted (by this process, or by the broker past its
    timeout, which also fences the producer), so none of its output is read. The service starts
    its ends over (pipeline.serve) and forecasts again from the last committed offsets."""


def refusal_letter(message: Outgoing, error: str) -> bytes:
    """The dead letter that stands in for a message the broker refused: small, whatever was refused."""
    return orjson.dumps(
        {
            "error": f"the broker refused this output: {error}"[:1024],
            "reason": "refused_by_broker",
            "topic": message.topic,
            "key": (message.key or b"")[:256].decode("utf-8", "replace"),
            "payload": "",
            "payload_bytes": len(message.value or b""),
            "payload_sha256": hashlib.sha256(message.value or b"").hexdigest(),
            "truncated": True,
        }
    )


class KafkaSink:
    """pipeline.records.Sink over a KafkaProducer: flush returns only when every send is acknowledged.
    `dlq_topic` receives the stand-in for a message the broker refuses on its own account."""

    commit_when_quiet = True  # settled waits: see there

    def __init__(
        self,
        producer: KafkaProducer,
        flush_timeout_s: float = 30.0,
        dlq_topic: str = "sensors.dlq",
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ):
        self.producer = producer
        self.flush_timeout_s = flush_timeout_s
        self.dlq_topic, self.max_message_bytes = dlq_topic, max_message_bytes
        self._sent: list[tuple[object, Outgoing]] = []  # (future, message)
        self._published = 0
        self.refused = 0  # messages the broker refused, each replaced by a dead letter

    def publish(self, messages) -> None:
        send, sent, limit = self.producer.send, self._sent, self.max_message_bytes
        for m in messages:
            out = within_limit(m, limit, self.dlq_topic) or m
            self.refused += out is not m
            sent.append((send(out.topic, key=out.key, value=out.value, partition=out.partition), m))
        self._published += len(messages)

    def mark(self) -> int:
        return self._published

    def settled(self, mark: int) -> bool:
        """Waits for the acknowledgements (unlike the confluent sink): kafka-python's producer does
        its I/O on a Python thread, and a loop that never waits starves it of the GIL. Measured at
        6,000 readings/s with the no-model relay: p95 119 ms when the loop only polled for
        acknowledgements, 37-41 ms when it waited; at 4,000/s with the model, p95 103-111 ms when
        it waited on the cadence alone, 72-76 ms when it also waited whenever the stream went quiet."""
        self.flush()
        return True

    def flush(self) -> None:
        try:
            flush_producer(self.producer, self.flush_timeout_s)
        except KafkaError as e:
            raise OutputRefused(f"sends not confirmed within {self.flush_timeout_s:g} s: {e}") from e
        sent, self._sent = self._sent, []
        for future, message in sent:
            try:
                future.get(timeout=0)
            except PER_MESSAGE as e:
                raise OutputRefused(
                    f"the broker refused a {len(message.value)}-byte message to {message.topic}: {e}; its limit is "
                    f"below SENSORCAST_MAX_MESSAGE_BYTES={self.max_message_bytes}: lower that setting"
                ) from e
            except KafkaError as e:  # the topic or the cluster: the batch is not committed
                raise OutputRefused(
                    f"the broker refused output to {message.topic}: {type(e).__name__}: {e} "
                    "(does the topic exist, and may this client write to it?)"
                ) from e

    def close(self) -> None:
        close_producer(self.producer, self.flush_timeout_s)


class TransactionalKafkaSink(KafkaSink):
    """Exactly-once on kafka-python (`SENSORCAST_PROCESSING_GUARANTEE=exactly-once`): what was
    published since the last commit and the consumer offsets it answers go in one transaction, as
    on confluent (pipeline.kafka.confluent.TransactionalSink). The kafka-python source assigns its
    partitions itself instead of joining a group, so there is no group generation to fence zombies
    with (KIP-447); the transactional id is fixed by the group and the partitions read instead
    (`transactional_id`): a restart's `init_transactions` fences the process before it and aborts
    its open transaction at once, rather than after the broker's timeout.

    The sends are flushed (within `flush_timeout_s`) before the commit; kafka-python's
    `commit_transaction` itself has no timeout, so only a broker lost between the two waits longer."""

    commit_when_quiet = True

    def __init__(self, producer: KafkaProducer, **kwargs):
        super().__init__(producer, **kwargs)
        self.open = False  # a transaction is open: messages were published since the last commit
        self.committed = 0  # transactions committed

    def flush(self) -> None:
        try:
            super().flush()
        except OutputRefused as e:  # in a transaction, any refused send dooms it
            self._abort()
            raise TransactionAborted(f"the transaction was aborted: {e}") from e

    def _begin(self) -> None:
        if not self.open:
            self.producer.begin_transaction()
            self.open = True

    def publish(self, messages) -> None:
        try:
            self._begin()
            super().publish(messages)
        except KafkaError as e:  # the producer is in error: its transaction is lost
            self._abort()
            raise TransactionAborted(f"the transaction was lost ({type(e).__name__}: {e})") from e

    def settled(self, mark: int) -> bool:
        return True  # the transaction's commit confirms: the loop commits each point at once

    def commit_with(self, offsets: dict, group_id: str) -> None:
        """Commit what was published since the last commit with `offsets` ({TopicPartition:
        OffsetAndMetadata}) in one transaction; an aborted one raises TransactionAborted."""
        if not offsets and not self.open:
            return
        try:
            self._begin()
            self.flush()
            if offsets:
                self.producer.send_offsets_to_transaction(offsets, group_id)
            self.producer.commit_transaction()
            self.open = False
            self.committed += 1
        except TransactionAborted:  # the flush found a refused send and aborted already
            raise
        except (KafkaError, OutputRefused) as e:
            self._abort()
            raise TransactionAborted(
                f"the transaction was aborted ({type(e).__name__}: {e}): its forecasts are never read"
            ) from e

    def _abort(self) -> None:
        if not self.open:
            return
        self.open = False
        try:
            self.producer.abort_transaction()
        except KafkaError as e:
            log.warning("could not abort the open transaction (%s): the broker aborts it at its timeout", e)

    def close(self) -> None:
        self._abort()  # the loop ended without its final commit (an error): nothing of it is read
        super().close()


TRANSACTION_TIMEOUT_MS = 10_000  # a killed process's open transaction is aborted by the broker after this


def transactional_id_prefix(settings: Settings) -> str:
    """How every transactional id of the service's group begins, on either client: the secured
    broker grants the service exactly these (`pipeline.kafka.roles`)."""
    return f"sensorcast-{settings.consumer_group}-"


def transactional_id(settings: Settings) -> str:
    """The id of the kafka-python service's transactions: one per group and set of partitions read,
    so that a restart of the same instance fences the one before it.

    >>> from pipeline.settings import Settings
    >>> transactional_id(Settings(consumer_group="g", partitions="0,2"))
    'sensorcast-g-sensors.readings-p0,2'
    """
    partitions = "all" if settings.partition_list is None else ",".join(map(str, settings.partition_list))
    return f"{transactional_id_prefix(settings)}{settings.readings_topic}-p{partitions}"


def transactional_kafka_sink(settings: Settings) -> TransactionalKafkaSink:
    """The kafka-python exactly-once sink, initialised: an earlier producer of the same id is fenced
    and its open transaction aborted."""
    tid = transactional_id(settings)
    producer = make_producer(settings, linger_ms=1, transactional_id=tid, transaction_timeout_ms=TRANSACTION_TIMEOUT_MS)
    try:
        producer.init_transactions()
    except Exception:
        close_producer(producer, 5.0)
        raise
    log.info("exactly-once: output and offsets commit in transactions of %s", tid)
    return TransactionalKafkaSink(producer, dlq_topic=settings.dlq_topic, max_message_bytes=settings.max_message_bytes)
