"""The service loop driven in memory: confirm before commit, commit cadence, pipelined forward pass."""

from __future__ import annotations

import threading
import time

import orjson

from pipeline.loop import run
from pipeline.messages import parse_ts
from pipeline.testing import MemorySink, MemorySource
from tests.fixtures.fakes import LastValueModel, reading
from tests.fixtures.fakes import fake_core as core

CH = ["temp", "pressure"]
HOUR = 3_600_000


class ConfirmCheckingSource(MemorySource):
    """Fails the test if the loop commits a reading whose output the sink has not confirmed (with
    LastValueModel's lookback of 4, every reading from step 3 on has a forecast)."""

    def __init__(self, records, sink: MemorySink):
        super().__init__(records)
        self.sink, self.commits = sink, 0
        self.behind: list[int] = []  # readings polled past each commit's checkpoint when it was made

    def commit(self, checkpoint: int | None = None) -> None:
        upto = self.position if checkpoint is None else checkpoint
        self.behind.append(self.position - upto)
        outputs = sum(r.offset >= 3 for r in self.records[:upto])
        assert len(self.sink.confirmed) >= outputs, "committed before the sink confirmed every message"
        self.commits += 1
        super().commit(checkpoint)


def test_run_confirms_before_every_commit_and_commits_all_on_stop() -> None:
    sink = MemorySink()
    source = ConfirmCheckingSource([reading(e, s) for s in range(20) for e in "abcd"], sink)
    stop = threading.Event()

    class StopWhenDrained:
        def on_batch(self, stats, records, published_at):
            if source.position == len(source.records):
                stop.set()

    # a long cadence: nothing is committed until the stop, and then everything is
    handled = run(source, sink, core(max_batch=16, commit_interval_ms=60_000), stop, StopWhenDrained())
    assert handled == 80
    assert len(sink.on("sensors.forecasts")) == 4 * 17
    assert source.committed == 80
    assert source.commits == 1


def test_run_commits_on_its_cadence_while_records_keep_coming() -> None:
    sink = MemorySink()
    source = ConfirmCheckingSource([reading(e, s) for s in range(50) for e in "abcd"], sink)
    stop = threading.Event()

    class SlowBatches:  # 5 ms a batch, 13 batches, a commit due every 20 ms
        def on_batch(self, stats, records, published_at):
            time.sleep(0.005)
            if source.position == len(source.records):
                stop.set()

    run(source, sink, core(max_batch=16, commit_interval_ms=20), stop, SlowBatches())
    assert source.committed == 200
    assert 2 <= source.commits < 13  # on the cadence, not after every batch


def _committed_while_running(sink: MemorySink, source: MemorySource, commit_interval_ms: float) -> int:
    stop = threading.Event()
    t = threading.Thread(
        target=run, args=(source, sink, core(max_batch=16, commit_interval_ms=commit_interval_ms), stop)
    )
    t.start()
    deadline = time.monotonic() + 2
    while source.committed < len(source.records) and time.monotonic() < deadline:
        time.sleep(0.01)
    committed = source.committed
    stop.set()
    t.join(5)
    assert source.committed == len(source.records) and not sink.pending  # and the stop commits all
    return committed


def test_run_commits_within_a_cadence_of_the_stream_going_quiet() -> None:
    sink = MemorySink()
    source = ConfirmCheckingSource([reading(e, s) for s in range(5) for e in "ab"], sink)
    assert _committed_while_running(sink, source, commit_interval_ms=50) == 10  # not only by the stop


def test_a_sink_that_asks_for_it_gets_commits_when_the_stream_goes_quiet() -> None:
    sink = MemorySink(commit_when_quiet=True)
    source = ConfirmCheckingSource([reading(e, s) for s in range(5) for e in "ab"], sink)
    # by the first empty poll, long before the minute-long cadence
    assert _committed_while_running(sink, source, commit_interval_ms=60_000) == 10


def test_commits_wait_for_confirmation_without_holding_up_the_stream() -> None:
    class SlowAckSink(MemorySink):
        """Acknowledges a mark only after it has been asked about three times."""

        def __init__(self):
            super().__init__()
            self.asked: dict[int, int] = {}

        def settled(self, mark: int) -> bool:
            self.asked[mark] = self.asked.get(mark, 0) + 1
            return self.asked[mark] > 3 and super().settled(mark)

    sink = SlowAckSink()
    source = ConfirmCheckingSource([reading(e, s) for s in range(60) for e in "abcd"], sink)
    stop = threading.Event()

    class Paced:  # 2 ms a batch, a commit point due every 10 ms
        def on_batch(self, stats, records, published_at):
            time.sleep(0.002)
            if source.position == len(source.records):
                stop.set()

    handled = run(source, sink, core(max_batch=8, commit_interval_ms=10), stop, Paced())
    assert handled == 240 and source.committed == 240
    assert source.commits >= 2
    # while a point waited for its acknowledgement the loop went on polling: commits trail the stream
    assert max(sink.asked.values()) > 3 and any(b > 0 for b in source.behind[:-1])


def test_forward_passes_run_off_the_loop_thread_and_batches_land_in_order() -> None:
    class SlowThreadNotingModel(LastValueModel):
        def predict(self, x):
            self.threads.add(threading.current_thread().name)
            time.sleep(0.002)
            return super().predict(x)

    model = SlowThreadNotingModel(CH)
    model.threads = set()
    sink = MemorySink()
    source = MemorySource([reading(e, s) for s in range(40) for e in "abc"])
    stop = threading.Event()

    class StopWhenDrained:
        def on_batch(self, stats, records, published_at):
            if source.position == len(source.records):
                stop.set()

    run(source, sink, core(model, max_batch=7), stop, StopWhenDrained())
    assert model.threads and threading.current_thread().name not in model.threads
    forecasts = [orjson.loads(m.value) for m in sink.on("sensors.forecasts")]
    assert len(forecasts) == 3 * 37
    for e in "abc":
        stamps = [f["ts"] for f in forecasts if f["entity"] == e]
        assert stamps == sorted(stamps) and len(set(stamps)) == 37
    for f in forecasts:  # each forecast from its own window: no staging buffer reused while in flight
        step = parse_ts(f["ts"]) // HOUR
        assert f["forecast"]["temp"] == [step + 1.0, step + 2.0, step + 3.0]
