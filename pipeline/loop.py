"""The service loop: poll → prepare → forecast (on a worker thread) → publish → commit.

Delivery is at-least-once: offsets are committed only after the sink confirms every message.
Confirming and committing cost a broker round trip each, so the loop does them on a cadence
(`commit_interval_ms`), whenever the stream goes quiet, and on stop, not after every batch: a
crash re-forecasts at most that interval's readings, and the loop never idles waiting for acks.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from pipeline.core import BatchStats, ForecastCore, StagedBatch
from pipeline.records import Record, Sink, Source


class Observer(Protocol):
    def on_batch(self, stats: BatchStats, records: list[Record], published_at: float) -> None:
        """After a batch's messages went to the sink (`published_at`: the hand-over, before confirmation)."""
        ...


def run(source: Source, sink: Sink, core: ForecastCore, stop: threading.Event, observer: Observer | None = None) -> int:
    """Serve until `stop` is set; what was polled is always finished, published, confirmed and committed.

    Pipelined one batch deep: batch k's forward pass runs on a worker thread (TorchScript and CUDA
    release the GIL) while this thread polls and prepares batch k+1, and batch k+1's forward runs
    while this thread encodes and publishes batch k. Batches still land in order.

    A commit covers every record polled so far, so it first lands the batch in flight and waits
    for the sink to confirm every message (`flush`): at-least-once, never a committed reading
    without its output."""
    handled, uncommitted = 0, False
    every_s = core.cfg.commit_interval_ms / 1000
    next_commit = time.monotonic() + every_s
    in_flight: tuple[StagedBatch, Future] | None = None

    def land(item: tuple[StagedBatch, Future]) -> None:
        batch, future = item
        messages, stats = core.finish(batch, *future.result())
        sink.publish(messages)
        if observer is not None:
            observer.on_batch(stats, batch.records, time.time())

    def hand_over() -> None:
        """Before a rebalance takes partitions away: land, confirm and commit all polled so far."""
        nonlocal in_flight, uncommitted, next_commit
        if in_flight is not None:
            land(in_flight)
            in_flight = None
        if uncommitted:
            sink.flush()
            source.commit()
            uncommitted, next_commit = False, time.monotonic() + every_s

    rebalancing = hasattr(source, "before_revoke")  # a consumer-group source (pipeline.records.RebalancingSource)
    if rebalancing:
        source.before_revoke = hand_over
    with ThreadPoolExecutor(1, thread_name_prefix="sensorcast-forward") as forward:
        while not stop.is_set():
            records = source.poll(core.cfg.max_batch, 0 if in_flight else core.cfg.max_wait_ms)
            arrived = None
            if records:
                batch = core.prepare(records)
                arrived = (batch, forward.submit(core.forecast, batch))
                handled += len(records)
                uncommitted = True
            if in_flight is not None:
                land(in_flight)
            in_flight = arrived
            if uncommitted and (not records or time.monotonic() >= next_commit):
                if in_flight is not None:
                    land(in_flight)
                    in_flight = None
                sink.flush()
                source.commit()
                uncommitted, next_commit = False, time.monotonic() + every_s
        if in_flight is not None:
            land(in_flight)
        if uncommitted:
            sink.flush()
            source.commit()
    if rebalancing:
        source.before_revoke = None
    return handled
