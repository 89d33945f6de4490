"""The service's Source over Kafka: read readings, rehydrate windows on start, commit to the group."""

from __future__ import annotations

import logging
import time
from typing import Any

from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError

from pipeline.changelog import PartitionState
from pipeline.kafka.changelog import read_changelog, start_from
from pipeline.kafka.clients import KafkaUnavailable, StallNudge, make_consumer, partitions_of
from pipeline.kafka.sink import TransactionalKafkaSink
from pipeline.records import Record
from pipeline.settings import Settings
from pipeline.state import EntityState

log = logging.getLogger("sensorcast.kafka")


class KafkaSource:
    """pipeline.records.Source over two KafkaConsumers: a group-less `fetcher` reads, a `committer`
    in the consumer group commits.

    Why two: kafka-python 3 makes every poll of a grouped consumer wait on its I/O thread to
    confirm the group coordinator, about 8% of the serving loop under load; a group-less consumer
    skips that, and the committer talks to the coordinator only on commits.

    Partitions are assigned explicitly (all of the topic's, or the `partitions` given), not by
    group rebalancing: kafka-python 3.0 was seen to stall for good in a rejoin right after its first
    commit (assignment made before topic metadata arrived, then a rebalance that never completed).
    Offsets are still committed to the consumer group, so a restart resumes where it stopped.

    On start each partition is rewound before its committed offset and those records are marked as
    replays, so the windows that a previous process held are rebuilt before new readings are
    forecast: a restart costs no forecasts. How far: by time when `rehydrate_ms` is known (the
    model's window in time; each commit carries the timestamp of the last record it covers, and the
    partition is read back from that time less `rehydrate_ms`, however many entities share it), else
    `rehydrate_records` records.

    With the windows' changelog read (`resume`, pipeline/changelog.py), a partition whose changelog is
    usable resumes from it instead: its entities' windows are handed over in `restored` (for the
    loop's core to load), and only the input from the changelog's marker to the committed offset is
    replayed, usually one commit interval. The log says which path each partition took."""

    def __init__(
        self,
        fetcher: KafkaConsumer,
        committer: KafkaConsumer,
        topic: str,
        rehydrate_records: int = 0,
        partitions: list[int] | None = None,
        timeout_s: float = 30.0,
        new_group_from: str = "earliest",
        rehydrate_ms: int | None = None,
        resume: dict[int, PartitionState] | None = None,
    ):
        self.fetcher, self.committer = fetcher, committer
        self.replay_until: dict[TopicPartition, int] = {}
        self._position: dict[TopicPartition, int] = {}  # next offset to read, per partition
        self._last_ts: dict[TopicPartition, int] = {}  # timestamp of the last record read, per partition
        self._committed: dict[TopicPartition, int] = {}
        self.restored: dict[str, tuple[EntityState, int]] = {}  # entity → (its window, its partition), to load
        self.changelog_partitions: set[int] = set()  # the changelog's, when it may be kept (none: it may not)
        self._skip: dict[TopicPartition, dict[bytes, int]] = {}  # replays a restored state already holds
        self.transactional: TransactionalKafkaSink | None = None  # exactly-once: commits go through its transactions
        self._unstick = StallNudge(fetcher)  # after an empty poll
        self.topic, self.follow_new_partitions = topic, partitions is None  # an explicit list stays as given
        self.partition_check_s = 10.0  # how often to look for partitions added to the topic
        self._next_partition_check = time.monotonic() + self.partition_check_s
        tps = [
            tp for tp in partitions_of(fetcher, topic, timeout_s) if partitions is None or tp.partition in partitions
        ]
        fetcher.assign(tps)
        beginnings = fetcher.beginning_offsets(tps)
        ends = fetcher.end_offsets(tps)
        for tp in tps:
            meta = committer.committed(tp, metadata=True)
            committed = None if meta is None or meta.offset is None or meta.offset < 0 else meta.offset
            if committed is None:  # a new group: from the topic's start, or only what comes next
                start = beginnings[tp] if new_group_from == "earliest" else ends[tp]
            else:
                self._committed[tp] = committed
                start = max(beginnings[tp], committed - rehydrate_records)
                last_ts = committed_ts(meta.metadata)
                if rehydrate_ms and last_ts is not None:
                    found = fetcher.offsets_for_times({tp: max(0, last_ts - rehydrate_ms)}).get(tp)
                    start = max(beginnings[tp], min(committed, found.offset if found is not None else committed))
                if resume is not None:
                    start = self._resume(tp, resume.get(tp.partition, PartitionState()), committed, start)
                else:
                    log.info("partition %d: replaying %d records", tp.partition, committed - start)
                if start < committed:
                    self.replay_until[tp] = committed
            fetcher.seek(tp, start)
            self._position[tp] = start

    def _resume(self, tp: TopicPartition, part: PartitionState, committed: int, replay_start: int) -> int:
        """Where the partition is read from: its changelog's marker when usable (its windows kept in
        `restored`), else the replay's start."""
        start, plan = start_from(tp.partition, part, committed, replay_start)
        if plan is not None:
            self.restored.update((e, (s, tp.partition)) for e, s in part.states.items())
            if plan.skip:
                self._skip[tp] = plan.skip
        return start

    def poll(self, max_records: int, timeout_ms: float):
        if self.follow_new_partitions and time.monotonic() >= self._next_partition_check:
            self._take_new_partitions()
        batches = self.fetcher.poll(timeout_ms=int(max(timeout_ms, 0)), max_records=max_records)
        if not batches:
            self._unstick()
        out = []
        for tp, records in batches.items():
            if not records:
                continue
            until = self.replay_until.get(tp)
            skip = self._skip.get(tp)
            out.extend(
                Record(
                    r.value, r.key, r.topic, r.partition, r.offset, r.timestamp, until is not None and r.offset < until
                )
                for r in records
                if skip is None or r.offset >= skip.get(r.key, -1)  # a restored window holds it already
            )
            self._position[tp] = records[-1].offset + 1
            self._last_ts[tp] = advance_marker(self._last_ts.get(tp), [r.timestamp for r in records])
            if until is not None and records[-1].offset + 1 >= until:
                del self.replay_until[tp]
                self._skip.pop(tp, None)
        return out

    def _take_new_partitions(self) -> None:
        """Partitions added to the topic since start are read too, from their beginning (everything in
        them is new). Seen once the client's metadata refreshes (`metadata_max_age_ms`: 30 s here)."""
        self._next_partition_check = time.monotonic() + self.partition_check_s
        found = self.fetcher.partitions_for_topic(self.topic) or set()
        new = [
            TopicPartition(self.topic, p) for p in sorted(found) if TopicPartition(self.topic, p) not in self._position
        ]
        if not new:
            return
        self.fetcher.assign(list(self._position) + new)
        for tp, pos in self._position.items():  # assign() may forget positions: keep our own
            self.fetcher.seek(tp, pos)
        for tp, start in self.fetcher.beginning_offsets(new).items():
            committed = self.committer.committed(tp)
            start = committed if committed is not None and committed >= 0 else start
            self.fetcher.seek(tp, start)
            self._position[tp] = start
        log.info("reading partitions %s added to %s", [tp.partition for tp in new], self.topic)

    def checkpoint(self) -> dict[TopicPartition, tuple[int, int | None]]:
        return {tp: (pos, self._last_ts.get(tp)) for tp, pos in self._position.items()}

    @staticmethod
    def positions(checkpoint: dict[TopicPartition, tuple[int, int | None]]) -> dict[int, int]:
        """Partition → next offset, of a checkpoint (what the window changelog records)."""
        return {tp.partition: pos for tp, (pos, _) in checkpoint.items()}

    def commit(self, checkpoint: dict[TopicPartition, tuple[int, int | None]] | None = None) -> None:
        """Commit every partition read past its last commit, up to `checkpoint` (default: all polled;
        the loop calls this only once the outputs of what it covers are published and confirmed), with
        the timestamp of the last record covered (a restart reads back by time from there)."""
        upto = self.checkpoint() if checkpoint is None else checkpoint
        moved = {tp: at for tp, at in upto.items() if self._committed.get(tp) != at[0]}
        if not moved and self.transactional is None:
            return
        offsets = {tp: OffsetAndMetadata(pos, commit_metadata(ts), -1) for tp, (pos, ts) in moved.items()}
        if self.transactional is not None:  # the output and these offsets in one transaction
            self.transactional.commit_with(offsets, self.committer.config["group_id"])
            self._committed.update({tp: pos for tp, (pos, _) in moved.items()})
            return
        deadline = time.monotonic() + 30.0
        while True:
            try:
                self.committer.commit(offsets)
                self._committed.update({tp: pos for tp, (pos, _) in moved.items()})
                return
            except KafkaError as e:
                # The coordinator moving (a broker restarting) or a group in flux: try again for a
                # while, then leave these offsets uncommitted, as the confluent source does. The next
                # commit covers them; a crash before it re-forecasts them. At-least-once either way;
                # the service never stops over a refused commit.
                if getattr(e, "retriable", False) and time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                log.warning("offsets not committed (%s: %s); the next commit covers them", type(e).__name__, e)
                return

    def lag(self) -> dict[int, int]:
        """Messages behind the high watermark, per partition the last fetches reported on: local
        state, no request to the broker on the serving path."""
        behind = {}
        for tp in self.fetcher.assignment():
            high = self.fetcher.highwater(tp)
            if high is not None:
                behind[tp.partition] = max(0, high - self._position[tp])
        return behind

    def close(self) -> None:
        self.fetcher.close()
        self.committer.close()


MARKER_AHEAD_MS = 5 * 60_000  # a record stamped further ahead of this host's clock does not move the marker


def advance_marker(marker: int | None, stamps, now_ms: int | None = None) -> int | None:
    """The time marker a commit carries: the latest record timestamp read that is not ahead of this
    host's clock. A restart re-reads from it (minus the windows' span) by offsets_for_times, so one
    producer whose clock runs a year ahead must not move it there (nothing would be re-read), and one
    running behind must not move it back (the max keeps it). None until a sane timestamp is read.

    >>> advance_marker(None, [1_000, 5_000, 10**15], now_ms=6_000)
    5000
    >>> advance_marker(5_000, [1_000], now_ms=6_000)
    5000
    """
    limit = (int(time.time() * 1000) if now_ms is None else now_ms) + MARKER_AHEAD_MS
    sane = [t for t in stamps if t is not None and 0 <= t <= limit]
    if not sane:
        return marker
    newest = max(sane)
    return newest if marker is None else max(marker, newest)


def commit_metadata(last_ts: int | None) -> str:
    """What a commit carries besides its offset: the timestamp of the last record it covers."""
    return "" if last_ts is None or last_ts < 0 else f"ts={last_ts}"


def committed_ts(metadata: str | None) -> int | None:
    """The timestamp a commit carried (None: an older commit, or another client's), whichever of the
    two clients wrote it.

    >>> committed_ts("ts=1700000000000"), committed_ts("ts=1700000000000" + chr(0)), committed_ts("")
    (1700000000000, 1700000000000, None)
    """
    metadata = (metadata or "").rstrip("\x00")  # librdkafka's commits end in a NUL, as C strings do
    if metadata.startswith("ts="):
        try:
            return int(metadata[3:])
        except ValueError:
            return None
    return None


def changelog_partitions(settings: Settings, consumer: KafkaConsumer, parts: list[int]) -> set[int] | None:
    """The windows' changelog's partitions, when it can be kept: None when its topic lacks one of the
    readings' partitions `parts` (the service then replays, as before)."""
    held = consumer.partitions_for_topic(settings.windows_topic) or set()
    if not set(parts) <= held:
        log.warning(
            "window changelog off: %s has partitions %s, the readings %s; restarts replay the input",
            settings.windows_topic, sorted(held), parts,
        )  # fmt: skip
        return None
    return held


def served_partitions(settings: Settings, consumer: KafkaConsumer) -> list[int]:
    """The readings' partitions this instance may serve: the settings' list on kafka-python; any of
    them on confluent, whose group assigns them."""
    wanted = settings.partition_list if settings.kafka_client == "kafka-python" else None
    parts = [tp.partition for tp in partitions_of(consumer, settings.readings_topic, settings.startup_timeout_s)]
    return [p for p in parts if wanted is None or p in wanted]


def changelog_reader(settings: Settings) -> KafkaConsumer:
    """A group-less read_committed consumer for the changelog (large fetches: a window is ~3 KB)."""
    return make_consumer(settings, group=None, fetch_max_bytes=64 * 1024 * 1024)


def changelog_states(settings: Settings, shape: tuple[int, int]) -> tuple[dict[int, PartitionState], set[int]] | None:
    """The windows' changelog read back for the partitions this instance serves, and the changelog's
    partitions; None when it cannot be kept (`changelog_partitions`)."""
    reader = changelog_reader(settings)
    try:
        parts = served_partitions(settings, reader)
        held = changelog_partitions(settings, reader, parts)
        if held is None:
            return None
        return read_changelog(reader, settings.windows_topic, parts, *shape), held
    finally:
        reader.close()


def kafka_source(
    settings: Settings, rehydrate_ms: int | None = None, shape: tuple[int, int] | None = None, **overrides: Any
) -> KafkaSource:
    """The service's source as the settings describe it: topic, group, partitions, rehydration (from
    the windows' changelog when `shape`, the model's (lookback, channels), is given and the settings
    keep one; else by time over `rehydrate_ms` when the model's window in time is known, else by
    record count)."""
    found = changelog_states(settings, shape) if shape is not None else None
    resume, held = found if found is not None else (None, set())
    fetcher = make_consumer(
        settings, group=None, **{"max_poll_records": settings.max_batch, "metadata_max_age_ms": 30_000, **overrides}
    )
    try:
        committer = make_consumer(settings)
    except KafkaUnavailable:
        fetcher.close()
        raise
    try:
        source = KafkaSource(
            fetcher,
            committer,
            settings.readings_topic,
            settings.rehydrate_records,
            partitions=settings.partition_list,
            new_group_from=settings.offset_reset,
            rehydrate_ms=rehydrate_ms,
            resume=resume,
        )
        source.changelog_partitions = held
        return source
    except Exception:
        fetcher.close()
        committer.close()
        raise
