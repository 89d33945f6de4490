"""The service core and loop, driven in memory (no Kafka)."""

from __future__ import annotations

import threading
import time

import numpy as np
import orjson
import pytest

from pipeline.messages import encode_reading, parse_ts
from pipeline.service import ForecastCore, MemorySink, MemorySource, ModelSlot, Record, ServiceConfig, run
from tests.pipeline.fakes import LastValueModel

CH = ["temp", "pressure"]
HOUR = 3_600_000


def reading(entity: str, step: int, value: float | None = None) -> Record:
    v = float(step if value is None else value)
    return Record(encode_reading(entity, step * HOUR, {"temp": v, "pressure": -v}), entity.encode(), offset=step)


def core(model=None, **cfg) -> ForecastCore:
    return ForecastCore(ModelSlot(model or LastValueModel(CH)), ServiceConfig(**cfg))


def test_every_valid_reading_after_warm_up_yields_one_forecast() -> None:
    c = core()
    records = [reading(e, s) for s in range(10) for e in ("a", "b", "c")]
    out, stats = c.process(records)
    forecasts = [orjson.loads(m.value) for m in out if m.topic == "sensors.forecasts"]
    assert stats.buffered == 3 * 3  # lookback 4: the first 3 readings of each entity warm it up
    assert len(forecasts) == stats.forecasts == 3 * 7
    assert not [m for m in out if m.topic == "sensors.dlq"]
    assert c.slot.model.calls == [21]  # one forward pass for the whole micro-batch


def test_same_entity_twice_in_a_batch_uses_each_readings_own_window() -> None:
    c = core()
    out, _ = c.process([reading("a", s) for s in range(6)])
    docs = [orjson.loads(m.value) for m in out]
    # LastValueModel forecasts last value + step: the forecast after reading s starts at s + 1
    assert [d["forecast"]["temp"][0] for d in docs] == [4.0, 5.0, 6.0]
    assert [d["ts"] for d in docs] == ["1970-01-01T03:00:00Z", "1970-01-01T04:00:00Z", "1970-01-01T05:00:00Z"]
    assert docs[0]["forecast"]["pressure"] == [-2.0, -1.0, 0.0]
    assert docs[0]["model"] == {"name": "fake", "version": "1"} and docs[0]["horizon"] == 3


def test_bad_input_goes_to_the_dead_letter_topic_and_valid_readings_keep_flowing() -> None:
    c = core()
    bad = [
        Record(b"", offset=100),
        Record(b"{nope", offset=101),
        Record(b'{"entity": "a", "ts": 99, "values": {"temp": NaN, "pressure": 1}}', offset=102),
        Record(b'{"entity": "a", "ts": 99, "values": {"temp": 1}}', offset=103),
        Record(b'{"entity": "a", "ts": 99, "values": {"temp": 1, "pressure": 1, "x": 2}}', offset=104),
        Record(b'{"entity": "a", "ts": "later", "values": {"temp": 1, "pressure": 1}}', offset=105),
        Record(b"x" * 100_000, offset=106),
    ]
    good = [reading("a", s) for s in range(6)]
    records = good[:3] + bad + good[3:] + [reading("a", 2), reading("a", 5)]  # then a late and a duplicate
    out, stats = c.process(records)
    dead = [orjson.loads(m.value) for m in out if m.topic == "sensors.dlq"]
    assert [d["reason"] for d in dead] == [
        "empty", "not_json", "non_finite", "missing_channels", "unknown_channels", "bad_timestamp", "oversized", "late", "duplicate",
    ]
    assert dead[1]["offset"] == 101 and dead[1]["payload"] == "{nope"
    assert stats.forecasts == 3 and stats.buffered == 3
    assert stats.forecasts + stats.buffered + sum(stats.dead.values()) == len(records)  # nothing silently dropped


def test_model_swap_between_batches_and_a_mismatched_model_is_refused() -> None:
    c = core()
    c.process([reading("a", s) for s in range(4)])
    c.slot.swap(LastValueModel(CH, version="2"))
    out, _ = c.process([reading("a", 4)])
    assert orjson.loads(out[0].value)["model"]["version"] == "2"
    with pytest.raises(ValueError, match="restart"):
        c.slot.swap(LastValueModel(["temp"], version="3"))


class ConfirmCheckingSource(MemorySource):
    """Fails the test if the loop commits while a published message is still unconfirmed."""

    def __init__(self, records, sink: MemorySink):
        super().__init__(records)
        self.sink, self.commits = sink, 0

    def commit(self) -> None:
        assert not self.sink.pending, "committed before the sink confirmed every message"
        self.commits += 1
        super().commit()


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


def test_run_commits_when_the_stream_goes_quiet() -> None:
    sink = MemorySink()
    source = ConfirmCheckingSource([reading(e, s) for s in range(5) for e in "ab"], sink)
    stop = threading.Event()
    t = threading.Thread(target=run, args=(source, sink, core(max_batch=16, commit_interval_ms=60_000), stop))
    t.start()
    deadline = time.monotonic() + 5
    while source.committed < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    t.join(5)
    assert source.committed == 10  # committed by the first empty poll, long before the cadence
    assert source.commits >= 1


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


def test_with_a_real_itransformer_forecaster(tmp_path) -> None:
    from models.checkpoint import save
    from models.data import Scaler
    from models.forecaster import Forecaster
    from models.itransformer import ITransformer, ITransformerConfig

    save(tmp_path, ITransformer(ITransformerConfig(lookback=8, horizon=5, d_model=32, n_heads=4, d_ff=32)), CH, Scaler.identity(2))
    forecaster = Forecaster.from_checkpoint(tmp_path, device="cpu")
    c = core(forecaster)
    out, stats = c.process([reading(e, s) for s in range(12) for e in ("x", "y")])
    assert stats.forecasts == 2 * 5
    doc = orjson.loads(out[-1].value)
    assert len(doc["forecast"]["temp"]) == 5 and all(np.isfinite(doc["forecast"]["pressure"]))
