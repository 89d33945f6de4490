"""The windows' changelog in memory: the loop writes it after the commits that cover it, a restore
from it forecasts what one uninterrupted process would have, and a changelog that cannot be trusted
is not used."""

from __future__ import annotations

import threading
import time

import numpy as np

from pipeline.changelog import Changelog, PartitionState, decode_marker, fold, resume_from
from pipeline.loop import run
from pipeline.state import EntityState
from pipeline.testing import MemorySink, MemorySource
from tests.fixtures.fakes import fake_core as core
from tests.fixtures.fakes import reading

TOPIC = "w"


class MarkerCheckingSource(MemorySource):
    """Fails the test if a position marker is ever published ahead of the committed offset."""

    def __init__(self, records, sink: MemorySink):
        super().__init__(records)
        self.sink = sink

    def commit(self, checkpoint: int | None = None) -> None:
        markers = [decode_marker(m.value) for m in self.sink.pending + self.sink.confirmed if m.topic == TOPIC]
        assert all(m <= self.committed for m in markers if m is not None), "the state led the commit"
        super().commit(checkpoint)


def serve_until_drained(source: MemorySource, sink: MemorySink, c) -> None:
    stop = threading.Event()

    class StopWhenDrained:
        def on_batch(self, stats, records, published_at):
            if source.position == len(source.records):
                stop.set()

    run(source, sink, c, stop, StopWhenDrained(), Changelog(c, TOPIC))


def forecasts(c, records) -> list[bytes]:
    out, _ = c.process(records, now_ms=0)
    return [m.value for m in out]


def test_a_restart_from_the_changelog_forecasts_what_one_process_would_have() -> None:
    records = [reading(e, s) for s in range(12) for e in "abc"]
    first, rest = records[:20], records[20:]  # cut mid-window for c
    sink = MemorySink()
    source = MarkerCheckingSource(first, sink)
    serve_until_drained(source, sink, core(max_batch=4, commit_interval_ms=0))
    part = fold([(m.key, m.value) for m in sink.on(TOPIC)], lookback=4, channels=2)
    assert part.marker == source.committed == 20 and set(part.states) == {"a", "b", "c"}
    restored, whole = core(), core()
    for entity, state in part.states.items():
        restored.windows.load(entity, state)
    whole.process(first)
    assert forecasts(restored, rest) == forecasts(whole, rest) != []


def test_a_forgotten_entity_leaves_a_tombstone() -> None:
    c = core(entity_ttl_s=10.0)
    log = Changelog(c, TOPIC)
    c.prepare([reading("a", 0)], now_s=0.0)
    log.capture({0: 1})
    c.prepare([reading("b", 0)], now_s=100.0)  # a is silent past the TTL
    log.capture({0: 2})
    part = fold([(m.key, m.value) for m in log.due({0: 2})], lookback=4, channels=2)
    assert set(part.states) == {"b"} and part.marker == 2


def test_a_changelog_missing_ahead_or_behind_is_not_used_and_says_why() -> None:
    state = EntityState(lookback=4, channels=2, values=np.zeros((4, 2), np.float32), position=120)
    cases = {
        "no changelog": (PartitionState(), 100, 50),
        "ahead of the committed offset": (PartitionState(marker=130, states={"a": state}), 100, 50),
        "behind the replay's start": (PartitionState(marker=40, states={"a": state}), 100, 50),
    }
    for why, (part, committed, replay_start) in cases.items():
        plan, said = resume_from(part, committed, replay_start)
        assert plan is None and why in said
    plan, _ = resume_from(PartitionState(marker=110, states={"a": state}), 125, 50)
    assert (plan.start, plan.skip) == (110, {b"a": 120})  # a's state holds up to 120


def test_an_entity_on_a_partition_the_changelog_lacks_is_not_captured() -> None:
    """A partition added to the readings after start has no changelog partition to go to: its
    entities are left to the replay, and the service does not send to a partition that is not there."""
    c = core()
    log = Changelog(c, TOPIC, partitions={0})
    a, b = reading("a", 0), reading("b", 0)
    b.partition = 1
    c.prepare([a, b], now_s=0.0)
    log.capture({0: 1, 1: 1})
    assert {(m.key, m.partition) for m in log.due({0: 1, 1: 1})} == {(b"a", 0), (b"", 0)}


def test_a_partition_given_up_is_neither_captured_nor_tombstoned_and_a_restore_takes_it_back() -> None:
    """A consumer group moved partition 1 to another instance: that one writes its entities now, so
    this one's idle copy of b must not tombstone b's record there; when 1 comes back, b's state loads."""
    c = core(entity_ttl_s=10.0)
    log = Changelog(c, TOPIC)
    a, b = reading("a", 0), reading("b", 0)
    b.partition = 1
    c.prepare([a, b], now_s=0.0)
    log.capture({0: 1, 1: 1})
    b_state = fold([(m.key, m.value) for m in log.due({0: 1, 1: 1}) if m.partition == 1], 4, 2).states["b"]
    b = reading("b", 1)
    b.partition = 1
    c.prepare([b], now_s=1.0)  # touched, then given up before a capture
    c.release({1})
    c.prepare([reading("a", 1)], now_s=100.0)  # b is idle past the TTL: forgotten here
    log.capture({0: 2})
    assert "b" not in c.windows.slots
    assert {(m.key, m.value is None, m.partition) for m in log.due({0: 2})} == {(b"a", False, 0), (b"", False, 0)}
    c.restore({"b": (b_state, 1)}, now_s=100.0)
    assert c.home["b"] == 1 and "b" in c.windows.slots


def test_between_captures_a_window_is_written_once_however_often_it_changed() -> None:
    c = core()
    log = Changelog(c, TOPIC, every_s=10.0)
    log.capture({0: 0}, now_s=100.0)  # the first commit point captures (nothing changed yet: a marker)
    for step in range(3):
        c.prepare([reading("a", step), reading("b", step)], now_s=100.0 + step)
        log.capture({0: 2 * step + 2}, now_s=100.0 + step)  # not due: a and b wait
    assert len(log.pending) == 1
    log.capture({0: 6}, now_s=110.0)
    c.prepare([reading("a", 3)], now_s=111.0)
    log.capture({0: 7}, now_s=111.0, force=True)  # a stop: due or not
    written = log.due({0: 7})
    assert [decode_marker(m.value) for m in written if m.key == b""] == [0, 6, 7]
    assert sorted(m.key for m in written if m.key) == [b"a", b"a", b"b"]  # three changes each: once, then a again


def test_a_stop_writes_every_window_changed_since_the_last_capture_even_when_all_was_committed() -> None:
    """Captures an hour apart: only the first commit point's is due. The stream is drained and every
    reading committed before the stop: the stop still writes what changed since that capture."""
    records = [reading(e, s) for s in range(6) for e in "abc"]
    sink, stop = MemorySink(), threading.Event()
    source = MarkerCheckingSource(records, sink)
    c = core(max_batch=4, commit_interval_ms=0)
    serving = threading.Thread(target=run, args=(source, sink, c, stop, None, Changelog(c, TOPIC, every_s=3600.0)))
    serving.start()
    deadline = time.monotonic() + 30  # a ceiling against a hang: the wait ends on the count
    while source.committed < len(records) and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    serving.join(30)
    part = fold([(m.key, m.value) for m in sink.on(TOPIC)], lookback=4, channels=2)
    assert part.marker == source.committed == len(records) and set(part.states) == {"a", "b", "c"}
    assert all(state.position == len(records) for state in part.states.values())


class ReplayingSource(MarkerCheckingSource):
    """Its first `until` records are replays (a restart refilling windows), as the Kafka sources mark them."""

    def __init__(self, records, sink: MemorySink, until: int):
        super().__init__(records, sink)
        self.replay_until = {0: until}

    def poll(self, max_records: int, timeout_ms: float):
        batch = super().poll(max_records, timeout_ms)
        if self.position >= self.replay_until.get(0, 0):
            self.replay_until = {}
        return batch


def test_no_capture_is_taken_while_a_partition_is_replayed() -> None:
    records = [reading(e, s) for s in range(8) for e in "abc"]
    sink = MemorySink()
    source = ReplayingSource(records, sink, until=18)
    serve_until_drained(source, sink, core(max_batch=3, commit_interval_ms=0))
    markers = [decode_marker(m.value) for m in sink.on(TOPIC) if m.key == b""]
    assert markers and min(markers) >= 18 and markers[-1] == len(records)  # from the end of the replay on
