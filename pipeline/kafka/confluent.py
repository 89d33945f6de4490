"""The service's Source and Sink over confluent-kafka (librdkafka): its I/O runs in C threads outside
the GIL, and its consumer groups rebalance for real, so several instances share the partitions.

Chosen with `SENSORCAST_KAFKA_CLIENT=confluent` (`--kafka-client confluent`); kafka-python stays the
default. Same contract as pipeline/kafka/source.py and sink.py: commit only what was published and
confirmed, rebuild the windows of every partition taken on, dead letters and lag as before.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from pipeline.changelog import PartitionState
from pipeline.kafka.changelog import read_changelog, start_from
from pipeline.kafka.clients import RECONNECT_BACKOFF_MAX_MS, KafkaUnavailable, unreachable
from pipeline.kafka.security import confluent_security
from pipeline.kafka.sink import (
    MAX_MESSAGE_BYTES,
    TRANSACTION_TIMEOUT_MS,
    OutputRefused,
    TransactionAborted,
    refusal_letter,
    transactional_id_prefix,
    within_limit,
)
from pipeline.kafka.source import (
    advance_marker,
    changelog_partitions,
    changelog_reader,
    commit_metadata,
    committed_ts,
    served_partitions,
)
from pipeline.records import Outgoing, Record
from pipeline.settings import Settings
from pipeline.state import EntityState

log = logging.getLogger("sensorcast.kafka")
# librdkafka's own log lines (a broker refusing a connection, say) go through Python logging, served on
# poll, instead of straight to stderr from its threads, where they outlived a test session's summary
LIBRDKAFKA_LOG = logging.getLogger("sensorcast.kafka.librdkafka")
# a commit to try again: the group is rebalancing, or its coordinator is moving (a broker died)
RETRY_COMMIT = {
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._WAIT_COORD,
}
# a send refused because of the message itself, not its topic or the cluster
PER_MESSAGE = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError.RECORD_LIST_TOO_LARGE}


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Idempotent, acks=all, and murmur2 partitioning so a key lands where Java clients and
    kafka-python put it (librdkafka's default, CRC32, would not)."""
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "partitioner": "murmur2_random",
        "client.id": "sensorcast-producer",
        "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS,
        "logger": LIBRDKAFKA_LOG,
        **confluent_security(settings),
        **overrides,
    }


def consumer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": settings.consumer_group,
        "enable.auto.commit": False,
        "auto.offset.reset": settings.offset_reset,
        "partition.assignment.strategy": "cooperative-sticky",
        # an instance that dies without leaving (SIGKILL, a lost host) holds its partitions until its
        # session expires: 10 s, as kafka-python's default, not librdkafka's 45 s
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 2_000,
        "fetch.wait.max.ms": 5,
        "topic.metadata.refresh.interval.ms": 30_000,  # partitions added to the topic join within 30 s
        "client.id": "sensorcast-consumer",
        "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS,  # librdkafka's default is 10 s
        "logger": LIBRDKAFKA_LOG,
        **confluent_security(settings),
        **overrides,
    }


def make_confluent_producer(settings: Settings, **overrides: Any) -> Producer:
    producer = Producer(producer_config(settings, **overrides))
    try:
        producer.list_topics(timeout=settings.startup_timeout_s / 3)  # fail fast, not on the first send
    except KafkaException as e:
        raise unreachable(settings, e) from e
    return producer


class ConfluentSink:
    """pipeline.records.Sink over a confluent Producer: flush returns only when every message is
    acknowledged, and raises `OutputRefused` if the topic or the cluster refused any (the loop then
    does not commit). A message refused on its own account (too large, invalid) is replaced by a
    small dead letter naming it, as the kafka-python sink does: one record never stops the service.

    Messages are counted in epochs between marks, so the loop can ask, without waiting, whether
    everything published before a mark is acknowledged (`settled`) and commit only then."""

    commit_when_quiet = False  # commits on the cadence only: measured p99 at 6,000/s 73 ms vs 128 ms

    def __init__(
        self,
        producer: Producer,
        flush_timeout_s: float = 30.0,
        dlq_topic: str = "sensors.dlq",
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ):
        self.producer, self.flush_timeout_s, self.dlq_topic = producer, flush_timeout_s, dlq_topic
        self.max_message_bytes = max_message_bytes
        self._failed: list[KafkaError] = []
        self._epoch = 0
        self._unconfirmed: dict[int, int] = {0: 0}  # epoch → its messages not acknowledged yet
        self._delivered = self._callback(0)
        self.refused = 0  # messages the broker refused, each replaced by a dead letter

    def _callback(self, epoch: int, stand_in: bool = False):
        unconfirmed, failed = self._unconfirmed, self._failed

        def delivered(err: KafkaError | None, msg) -> None:
            if err is not None and err.code() in PER_MESSAGE and not stand_in:
                self._stand_in(epoch, msg, err)  # counted in the same epoch: commits wait for it
            elif err is not None and err.code() in PER_MESSAGE:
                log.error("the dead letter for a refused message was refused too: %s", err.str())
            elif err is not None:
                failed.append(err)
            unconfirmed[epoch] -= 1

        return delivered

    def _stand_in(self, epoch: int, msg, err: KafkaError) -> None:
        self.refused += 1
        value = msg.value() or b""
        log.error(
            "the broker refused a message to %s (%d bytes): %s; a dead letter names it", msg.topic(), len(value), err
        )
        letter = refusal_letter(Outgoing(msg.topic(), msg.key(), value), err.str())
        self._unconfirmed[epoch] += 1
        self._produce(self.dlq_topic, letter, msg.key(), self._callback(epoch, stand_in=True))

    def _produce(self, topic: str, value: bytes | None, key: bytes | None, on_delivery, partition: int = -1) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, partition, on_delivery=on_delivery)
                return
            except BufferError:  # librdkafka's queue is full: let it drain a little
                self.producer.poll(0.05)
            except KafkaException as e:  # refused before it left (larger than message.max.bytes)
                error = e.args[0]
                if error.code() not in (*PER_MESSAGE, KafkaError.MSG_SIZE_TOO_LARGE) or topic == self.dlq_topic:
                    raise
                self.refused += 1
                log.error("a message to %s was refused before it left: %s; a dead letter names it", topic, error)
                topic, value = self.dlq_topic, refusal_letter(Outgoing(topic, key, value), error.str())
                partition = -1

    def publish(self, messages: list[Outgoing]) -> None:
        produce, delivered = self.producer.produce, self._delivered
        self._unconfirmed[self._epoch] += len(messages)
        for m in messages:
            stand_in = within_limit(m, self.max_message_bytes, self.dlq_topic)
            if stand_in is not None:
                self.refused += 1
                m = stand_in
            partition = -1 if m.partition is None else m.partition  # -1: librdkafka's partitioner
            try:
                produce(m.topic, m.value, m.key, partition, on_delivery=delivered)
            except (BufferError, KafkaException):
                self._produce(m.topic, m.value, m.key, delivered, partition)
        self.producer.poll(0)  # serve delivery callbacks as they come, not all at flush

    def mark(self) -> int:
        mark, self._epoch = self._epoch, self._epoch + 1
        self._unconfirmed[self._epoch] = 0
        self._delivered = self._callback(self._epoch)
        return mark

    def _raise_failed(self) -> None:
        if self._failed:
            error = self._failed[0]
            self._failed.clear()
            raise OutputRefused(
                f"the broker refused output: {error.str()} (does the topic exist, and may this client write to it?)"
            ) from KafkaException(error)

    def settled(self, mark: int) -> bool:
        self.producer.poll(0)
        self._raise_failed()
        for epoch in [e for e in self._unconfirmed if e <= mark]:
            if self._unconfirmed[epoch]:
                return False
            del self._unconfirmed[epoch]
        return True

    def flush(self) -> None:
        left = self.producer.flush(self.flush_timeout_s)
        self._raise_failed()
        if left:
            raise OutputRefused(f"{left} sends not confirmed within {self.flush_timeout_s:g} s")

    def close(self) -> None:
        try:
            left = self.producer.flush(self.flush_timeout_s)
        except KafkaException as e:  # a producer in a fatal state (fenced): nothing more to send
            log.warning("closing a producer in error: %s", e.args[0].str())
            return
        if left:
            log.warning("closing the producer with %d unconfirmed sends", left)


WEDGED_GRACE_S = 10.0  # past a transactional call's own timeout, before it is taken for hung


class TransactionalSink(ConfluentSink):
    """Exactly-once (`SENSORCAST_PROCESSING_GUARANTEE=exactly-once`): the messages published since the
    last commit and the consumer offsets they answer go in one Kafka transaction. The source's
    `commit` calls `commit_with` (the loop is unchanged: a commit point is settled at once, since the
    transaction's commit is what confirms). Zombies are fenced by the consumer group's generation
    (KIP-447: the offsets go with the group's metadata), so each process takes a transactional id of
    its own. A transaction that fails (a broker lost past `timeout_s`, or one that aborted it past
    its timeout and fenced this producer) raises TransactionAborted: a read_committed consumer never
    sees its output, and the service starts its ends over from the last committed offsets
    (pipeline.serve). A process killed mid-transaction leaves it open until `transaction.timeout.ms`,
    when the broker aborts it; read_committed consumers wait that long at most."""

    # Commits on the cadence alone (`SENSORCAST_COMMIT_INTERVAL_MS`): a read_committed reader sees a
    # forecast when its transaction commits, so at 1,000 readings/s p50 was 139 ms, p99 263 ms. Also
    # committing whenever the stream went quiet cut that to 14 and 137 ms, but its many commits met
    # rebalances (ILLEGAL_GENERATION, the transaction aborted): not until a rebalance pauses commits.
    commit_when_quiet = False

    def __init__(self, producer: Producer, timeout_s: float = 30.0, **kwargs: Any):
        super().__init__(producer, **kwargs)
        self.timeout_s = timeout_s
        self.open = False  # a transaction is open: messages were published since the last commit
        self.committed = 0  # transactions committed
        self.wedged = False  # a call never returned: the producer is given up, never touched again

    def _begin(self) -> None:
        if not self.open:
            self.producer.begin_transaction()
            self.open = True

    def publish(self, messages: list[Outgoing]) -> None:
        try:
            self._begin()
            super().publish(messages)
        except KafkaException as e:  # fenced, or in error: the transaction is lost
            self._lost(e)

    def settled(self, mark: int) -> bool:
        self.producer.poll(0)
        try:
            self._raise_failed()
        except OutputRefused as e:
            self._lost(e)
        return True  # the transaction's commit confirms: the loop commits each point at once

    def flush(self) -> None:
        try:
            super().flush()
        except OutputRefused as e:
            self._lost(e)

    def commit_with(self, offsets: list[TopicPartition], group_metadata) -> None:
        """Commit what was published since the last commit with `offsets`, in one transaction. A
        broker that does not answer is waited for up to `timeout_s`; a transaction it aborted, or
        one that cannot commit, raises TransactionAborted."""
        if not offsets and not self.open:
            return
        try:
            self._begin()
            if offsets:
                self._bounded(lambda t: self.producer.send_offsets_to_transaction(offsets, group_metadata, t))
            self._retrying(self.producer.commit_transaction)
            self.open = False
            self.committed += 1
            self._raise_failed()
        except TransactionAborted:  # given up already (`_bounded`): nothing more to abort
            raise
        except (KafkaException, OutputRefused) as e:
            self._lost(e)

    def _retrying(self, call) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return call(max(1.0, deadline - time.monotonic()))
            except KafkaException as e:
                if not e.args[0].retriable() or time.monotonic() > deadline:
                    raise

    def _bounded(self, call) -> None:
        """`_retrying(call)` on a thread of its own, waited for `timeout_s` and a grace at most.
        librdkafka's send_offsets_to_transaction can block past its own timeout while the group
        coordinator is lost (librdkafka#5456, open in 2.16; seen here on one core, with the broker
        killed for 10 s: the loop hung for good). A call that does not return gives the producer up:
        its open transaction is never committed (the broker aborts it at its timeout), and the
        service starts over with new ends from the last committed offsets."""
        outcome: queue.Queue = queue.Queue(maxsize=1)

        def attempt() -> None:
            try:
                self._retrying(call)
                outcome.put(None)
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread as it is
                outcome.put(e)

        threading.Thread(target=attempt, name="sensorcast-txn-offsets", daemon=True).start()
        try:
            error = outcome.get(timeout=self.timeout_s + WEDGED_GRACE_S)
        except queue.Empty:
            self.wedged, self.open = True, False
            raise TransactionAborted(
                f"sending the offsets to the transaction did not return within {self.timeout_s + WEDGED_GRACE_S:g} s "
                "(librdkafka#5456): this producer is given up, and its transaction is never committed"
            ) from None
        if error is not None:
            raise error

    def _lost(self, e: Exception) -> None:
        error = e.args[0] if isinstance(e, KafkaException) else None
        if self.open and (error is None or error.txn_requires_abort()):
            self._abort()
        self.open = False
        raise TransactionAborted(
            f"the transaction was aborted ({error.str() if error is not None else e}): its forecasts are never read"
        ) from e

    def _abort(self) -> None:
        self.open = False
        try:
            self.producer.abort_transaction(self.timeout_s)
        except KafkaException as e:
            log.warning("could not abort the open transaction (%s): the broker aborts it at its timeout", e)

    def close(self) -> None:
        if self.wedged:  # a transactional call still holds the producer: leave it be (see `_bounded`)
            log.warning("leaving a producer whose transactional call never returned; the broker aborts its transaction")
            return
        if self.open:  # the loop ended without its final commit (an error): nothing of it is read
            self._abort()
        super().close()


def transactional_sink(settings: Settings) -> TransactionalSink:
    """The exactly-once sink: a transactional producer of this process's own id, initialised (fencing
    an earlier producer of the same id)."""
    transactional_id = f"{transactional_id_prefix(settings)}{uuid.uuid4().hex[:12]}"
    producer = make_confluent_producer(
        settings,
        **{"linger.ms": 1, "transactional.id": transactional_id, "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS},
    )
    producer.init_transactions(settings.startup_timeout_s)
    log.info("exactly-once: output and offsets commit in transactions of %s", transactional_id)
    return TransactionalSink(producer, dlq_topic=settings.dlq_topic, max_message_bytes=settings.max_message_bytes)


class ConfluentSource:
    """pipeline.records.Source over a confluent Consumer in the settings' consumer group, with the
    cooperative-sticky assignor: instances share the topic's partitions and rebalance as they come
    and go.

    On assignment, each new partition is rewound up to `rehydrate_records` before its committed
    offset and those records are replays (they refill windows, emit nothing), as on a restart.
    With the windows' changelog (`read_changelog`: partitions → their states), a partition whose
    changelog is usable resumes from its marker instead, its windows handed to `on_restore` (set by
    the service: the core loads them), as kafka_source does on start; a partition given up is
    handed to `on_release`, so the changelog stops speaking for its entities.

    On revocation, `before_revoke` (set by the loop) lands the batch in flight, waits for every
    message to be confirmed and commits (the changelog's last captures with it), before the
    partitions go to another instance: a hand-over re-forecasts nothing that was confirmed, and the
    next owner restores the windows as they were."""

    def __init__(
        self,
        consumer: Consumer,
        topic: str,
        rehydrate_records: int = 0,
        timeout_s: float = 30.0,
        rehydrate_ms: int | None = None,
        read_changelog: Callable[[list[int]], dict[int, PartitionState]] | None = None,
        changelog_partitions: set[int] | None = None,
    ):
        self.consumer, self.topic = consumer, topic
        self.read_changelog = read_changelog
        self.changelog_partitions: set[int] = changelog_partitions or set()  # none: the changelog is not kept
        self.restored: dict[str, tuple[EntityState, int]] = {}  # entity → (its window, its partition), to load
        self.on_restore: Callable[[dict[str, tuple[EntityState, int]]], None] | None = None
        self.on_release: Callable[[set[int]], None] | None = None
        self._skip: dict[int, dict[bytes, int]] = {}  # partition → replays a restored state already holds
        self.rehydrate_records, self.timeout_s, self.rehydrate_ms = rehydrate_records, timeout_s, rehydrate_ms
        self._last_ts: dict[int, int] = {}  # partition → timestamp of the last record read
        self.before_revoke: Callable[[], None] | None = None
        self.replay_until: dict[int, int] = {}
        self._position: dict[int, int] = {}  # partition → next offset to read
        self._committed: dict[int, int] = {}
        self._buffer: list = []  # messages polled while waiting for the first assignment
        self.assigned: set[int] = set()
        self.rebalances = 0
        self.transactional: TransactionalSink | None = None  # exactly-once: commits go through its transactions
        self.closing = False
        consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)

    # -- rebalancing (librdkafka calls these from inside poll/consume, on this thread) -------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.rebalances += 1
        if not partitions or self.closing:
            return
        committed = consumer.committed(partitions, timeout=self.timeout_s)
        states: dict[int, PartitionState] = {}
        if self.read_changelog is not None:
            states = self.read_changelog([tp.partition for tp in committed if tp.offset >= 0])
        start_at = []
        for tp in committed:
            p = tp.partition
            if tp.offset < 0:  # nothing committed: librdkafka starts where auto.offset.reset says
                self._committed.pop(p, None)
                start = tp.offset
            else:
                low, _high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=self.timeout_s)
                self._committed[p] = tp.offset
                start = max(low, tp.offset - self.rehydrate_records)
                last_ts = committed_ts(tp.metadata)
                if self.rehydrate_ms and last_ts is not None:  # by time: however many entities share it
                    query = TopicPartition(self.topic, p, max(0, last_ts - self.rehydrate_ms))
                    found = consumer.offsets_for_times([query], timeout=self.timeout_s)[0].offset
                    start = max(low, min(tp.offset, found if found >= 0 else tp.offset))
                if self.read_changelog is not None:
                    part = states.get(p, PartitionState())
                    start, plan = start_from(p, part, tp.offset, start)
                    if plan is not None:
                        self.restored.update((e, (s, p)) for e, s in part.states.items())
                        if plan.skip:
                            self._skip[p] = plan.skip
                if start < tp.offset:
                    self.replay_until[p] = tp.offset
                self._position[p] = start
            start_at.append(TopicPartition(self.topic, p, start))
        consumer.incremental_assign(start_at)
        self.assigned |= {tp.partition for tp in partitions}
        log.info("assigned partitions %s of %s", sorted(tp.partition for tp in partitions), self.topic)
        if self.restored and self.on_restore is not None:  # else the service loads them when it sets it
            self.on_restore(self.restored)
            self.restored = {}

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.rebalances += 1
        if partitions and self.before_revoke is not None:
            self.before_revoke()  # land, confirm, commit: everything polled so far is handled
        self._forget(consumer, partitions)
        log.info("gave up partitions %s of %s", sorted(tp.partition for tp in partitions), self.topic)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # taken away without a hand-over (this instance missed its session): nothing may be committed
        self._forget(consumer, partitions)
        log.warning("lost partitions %s of %s", sorted(tp.partition for tp in partitions), self.topic)

    def _forget(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            for table in (self._position, self._committed, self.replay_until, self._last_ts, self._skip):
                table.pop(tp.partition, None)
            self.assigned.discard(tp.partition)
        self._buffer = [m for m in self._buffer if m.partition() in self.assigned]
        if partitions:
            consumer.incremental_unassign(partitions)
            if self.on_release is not None:
                self.on_release({tp.partition for tp in partitions})

    # -- Source --------------------------------------------------------------------------------
    def wait_assigned(self, timeout_s: float | None = None) -> None:
        """Join the group and take a share of the partitions (what arrives meanwhile is kept)."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while not self.assigned:
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"no partitions of {self.topic} assigned within {timeout_s or self.timeout_s} s")
            msg = self.consumer.poll(0.1)
            if msg is not None:
                self._buffer.append(msg)

    def poll(self, max_records: int, timeout_ms: float) -> list[Record]:
        # poll() for the first message, then consume(n, 0) for what is already fetched: consume(n, t)
        # would wait for n messages or t, pure latency at low rates
        messages, self._buffer = self._buffer, []
        if not messages:
            first = self.consumer.poll(max(timeout_ms, 0) / 1000)
            if first is None:
                return []
            messages = [first]
        if len(messages) < max_records:
            messages.extend(self.consumer.consume(max_records - len(messages), 0))
        out = []
        position, replay_until, skips, stamps = self._position, self.replay_until, self._skip, {}
        for m in messages:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consumer: %s", err)
                continue
            p, offset, ts = m.partition(), m.offset(), m.timestamp()[1]
            until = replay_until.get(p)
            skip = skips.get(p)
            if skip is None or offset >= skip.get(m.key(), -1):  # else a restored window holds it already
                out.append(Record(m.value(), m.key(), m.topic(), p, offset, ts, until is not None and offset < until))
            position[p] = offset + 1
            stamps.setdefault(p, []).append(ts)
            if until is not None and offset + 1 >= until:
                del replay_until[p]
                skips.pop(p, None)
        for p, ts in stamps.items():
            self._last_ts[p] = advance_marker(self._last_ts.get(p), ts)
        return out

    def checkpoint(self) -> dict[int, tuple[int, int | None]]:
        return {p: (pos, self._last_ts.get(p)) for p, pos in self._position.items()}

    @staticmethod
    def positions(checkpoint: dict[int, tuple[int, int | None]]) -> dict[int, int]:
        """Partition → next offset, of a checkpoint (what the window changelog records)."""
        return {p: pos for p, (pos, _) in checkpoint.items()}

    def commit(self, checkpoint: dict[int, tuple[int, int | None]] | None = None) -> None:
        """Commit up to `checkpoint` (default: all polled) on the partitions this instance still holds,
        with the timestamp of the last record covered (a restart or a new owner reads back by time)."""
        upto = self.checkpoint() if checkpoint is None else checkpoint
        moved = [
            TopicPartition(self.topic, p, pos, metadata=commit_metadata(ts))
            for p, (pos, ts) in upto.items()
            if p in self._position and self._committed.get(p) != pos
        ]
        if self.transactional is not None:  # the output and these offsets in one transaction
            self.transactional.commit_with(moved, self.consumer.consumer_group_metadata())
            self._committed.update({tp.partition: tp.offset for tp in moved})
            return
        if not moved:
            return
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                self.consumer.commit(offsets=moved, asynchronous=False)
                self._committed.update({tp.partition: tp.offset for tp in moved})
                return
            except KafkaException as e:
                # Another instance joining or leaving, or the group's coordinator moving to another
                # broker (one died): the group refuses commits until librdkafka has re-synced in the
                # background. Try again until then; past `timeout_s`, or when the membership itself
                # is gone (the group re-joins and re-assigns), leave these offsets uncommitted: the
                # next commit covers them, or the partitions' next owner re-forecasts from the last
                # commit. At-least-once either way; the service never stops over a refused commit.
                error = e.args[0]
                if error.fatal():
                    raise
                if (error.code() in RETRY_COMMIT or error.retriable()) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                log.warning("offsets not committed (%s); the next commit or the next owner covers them", error)
                return

    def lag(self) -> dict[int, int]:
        """Messages behind the high watermark per partition, as the last fetches saw it (cached: no
        broker request)."""
        behind = {}
        for p, pos in self._position.items():
            _low, high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
            if high is not None and high >= 0:
                behind[p] = max(0, high - pos)
        return behind

    def close(self) -> None:
        self.before_revoke = None  # the loop has ended: nothing in flight to land
        self.closing = True  # an assignment that arrives now is not looked up: this member is leaving
        self.consumer.close()  # leaves the group at once: the others rebalance without waiting


def confluent_source(
    settings: Settings, rehydrate_ms: int | None = None, shape: tuple[int, int] | None = None, **overrides: Any
) -> ConfluentSource:
    """The service's source as the settings describe it (the readings topic, the group, rehydration:
    from the windows' changelog on each assignment when `shape`, the model's (lookback, channels), is
    given and the changelog can be kept)."""
    held, read = None, None
    if shape is not None:
        reader = changelog_reader(settings)  # a side read on kafka-python, as the service's followers
        try:
            held = changelog_partitions(settings, reader, served_partitions(settings, reader))
        finally:
            reader.close()
    if held is not None:

        def read(parts: list[int]) -> dict[int, PartitionState]:
            reader = changelog_reader(settings)
            try:
                return read_changelog(reader, settings.windows_topic, parts, *shape)
            finally:
                reader.close()

    config = consumer_config(settings, **overrides)
    consumer = Consumer(config)
    try:
        consumer.list_topics(settings.readings_topic, timeout=settings.startup_timeout_s / 3)
    except KafkaException as e:
        consumer.close()
        raise unreachable(settings, e) from e
    return ConfluentSource(
        consumer,
        settings.readings_topic,
        settings.rehydrate_records,
        rehydrate_ms=rehydrate_ms,
        read_changelog=read,
        changelog_partitions=held,
    )
