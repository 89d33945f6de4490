"""The service loop: poll → prepare → forecast (on a worker thread) → publish → commit.

Delivery is at-least-once: offsets are committed only after the sink confirms every message
those offsets led to. On a cadence (`commit_interval_ms`) the loop notes a commit point (the
source's checkpoint after the last published batch, and a sink mark) and commits it once the sink
says every message before the mark is acknowledged (`settled`). The confluent sink answers without
waiting, so commits trail the stream and the loop never stops for a broker round trip. The
kafka-python sink waits instead (its I/O thread needs the GIL the loop would hold), and asks for a
commit point whenever the stream goes quiet too (`commit_when_quiet`): those waits batch its work.
A stop and a rebalance's hand-over wait for confirmation (`flush`) and commit everything. A crash
re-forecasts at most the readings since the last commit.

With a window changelog (pipeline/changelog.py), a commit point also captures the windows that
changed (at most every `changelog_interval_ms`, and always on a stop), and a capture is published
once a commit covers it: after that commit (at-least-once), or
in its transaction (exactly-once). State may lag the output, never lead it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from pipeline.changelog import Changelog
from pipeline.core import BatchStats, ForecastCore, StagedBatch
from pipeline.records import Record, Sink, Source


class Observer(Protocol):
    def on_batch(self, stats: BatchStats, records: list[Record], published_at: float) -> None:
        """After a batch's messages went to the sink (`published_at`: the hand-over, before confirmation)."""
        ...


def run(
    source: Source,
    sink: Sink,
    core: ForecastCore,
    stop: threading.Event,
    observer: Observer | None = None,
    changelog: Changelog | None = None,
) -> int:
    """Serve until `stop` is set; what was polled is always finished, published, confirmed and committed.

    Pipelined one batch deep: batch k's forward pass runs on a worker thread (TorchScript and CUDA
    release the GIL) while this thread polls and prepares batch k+1, and batch k+1's forward runs
    while this thread encodes and publishes batch k. Batches still land in order.

    Commits trail the stream: a commit point covers the batches published when it was taken, and
    is committed once the sink has confirmed their messages (`settled`), oldest point first. No
    reading is ever committed before its forecast or dead letter is acknowledged."""
    handled = 0
    when_quiet = getattr(sink, "commit_when_quiet", False)
    every_s = core.cfg.commit_interval_ms / 1000
    next_point = time.monotonic() + every_s
    in_flight: tuple[StagedBatch, Future, object] | None = None
    published: object | None = None  # the source checkpoint after the last batch handed to the sink
    points: deque[tuple[int, object]] = deque()  # (sink mark, source checkpoint), oldest first

    def land(item: tuple[StagedBatch, Future, object]) -> None:
        nonlocal published
        batch, future, checkpoint = item
        messages, stats = core.finish(batch, *future.result())
        sink.publish(messages)
        published = checkpoint
        if observer is not None:
            observer.on_batch(stats, batch.records, time.time())

    in_transactions = getattr(source, "transactional", None) is not None

    def commit(checkpoint: object | None = None) -> None:
        """Commit up to `checkpoint` (default: all polled), with the changelog's captures it covers."""
        if changelog is None:
            source.commit(checkpoint)
            return
        due = changelog.due(source.positions(source.checkpoint() if checkpoint is None else checkpoint))
        if in_transactions:  # in the transaction the commit ends
            sink.publish(due)
            source.commit(checkpoint)
        else:  # after it: a crash in between leaves the state behind the commit, never ahead
            source.commit(checkpoint)
            sink.publish(due)

    def commit_settled() -> None:
        while points and sink.settled(points[0][0]):
            commit(points.popleft()[1])

    def commit_all() -> None:
        """Land the batch in flight, wait for every message to be confirmed, commit all polled so far
        (on stop, and before a rebalance takes partitions away)."""
        nonlocal in_flight, published
        if in_flight is not None:
            land(in_flight)
            in_flight = None
        if changelog is not None:  # the windows changed since the last capture: not due yet, maybe
            changelog.capture(source.positions(source.checkpoint()), force=True)
        if published is not None or points or (changelog is not None and changelog.pending):
            sink.flush()
            commit()
            if changelog is not None and not in_transactions:
                sink.flush()  # the last captures, so a restart reads no input back
        points.clear()
        published = None

    rebalancing = hasattr(source, "before_revoke")  # a consumer-group source (pipeline.records.RebalancingSource)
    if rebalancing:
        source.before_revoke = commit_all
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="sensorcast-forward") as forward:
            while not stop.is_set():
                records = source.poll(core.cfg.max_batch, 0 if in_flight else core.cfg.max_wait_ms)
                arrived = None
                if records:
                    batch = core.prepare(records)
                    arrived = (batch, forward.submit(core.forecast, batch), source.checkpoint())
                    handled += len(records)
                if in_flight is not None:
                    land(in_flight)
                in_flight = arrived
                if published is not None and (time.monotonic() >= next_point or (when_quiet and not records)):
                    points.append((sink.mark(), published))
                    published, next_point = None, time.monotonic() + every_s
                    # everything prepared so far, the batch in flight too; not while a partition is
                    # replayed: its windows all change, and would all be written again at each capture
                    # (a 20 M-record replay wrote 317 MB every 10 s); the first capture after it writes them
                    if changelog is not None and not getattr(source, "replay_until", None):
                        changelog.capture(source.positions(source.checkpoint()))
                if points:
                    commit_settled()
            commit_all()
    finally:  # after an error too: closing the source must not commit through a loop that is gone
        if rebalancing:
            source.before_revoke = None
    return handled
