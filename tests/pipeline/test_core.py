"""The service core, in memory: records in, forecasts and dead letters out."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from pipeline.messages import encode_reading
from pipeline.records import Record
from tests.fixtures.fakes import LastValueModel, reading
from tests.fixtures.fakes import fake_core as core

CH = ["temp", "pressure"]
HOUR = 3_600_000


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
        Record(b'{"entity": "new", "ts": 99, "values": {"temp": 1}}', b"new", offset=103),  # nothing to fill from
        Record(b'{"entity": "a", "ts": 99, "values": {"temp": 1, "pressure": 1, "x": 2}}', offset=104),
        Record(b'{"entity": "a", "ts": "later", "values": {"temp": 1, "pressure": 1}}', offset=105),
        Record(b"x" * 100_000, offset=106),
    ]
    good = [reading("a", s) for s in range(6)]
    records = good[:3] + bad + good[3:] + [reading("a", 2), reading("a", 5)]  # then a late and a duplicate
    out, stats = c.process(records)
    dead = [orjson.loads(m.value) for m in out if m.topic == "sensors.dlq"]
    assert [d["reason"] for d in dead] == [
        "empty",
        "not_json",
        "non_finite",
        "missing_channels",
        "unknown_channels",
        "bad_timestamp",
        "oversized",
        "late",
        "duplicate",
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


def test_with_a_real_itransformer_forecaster(tiny_checkpoint) -> None:
    from models.forecaster import Forecaster

    forecaster = Forecaster.from_checkpoint(tiny_checkpoint(horizon=5), device="cpu")
    c = core(forecaster)
    out, stats = c.process([reading(e, s) for s in range(12) for e in ("x", "y")])
    assert stats.forecasts == 2 * 5
    doc = orjson.loads(out[-1].value)
    assert len(doc["forecast"]["temp"]) == 5 and all(np.isfinite(doc["forecast"]["pressure"]))


def test_a_model_with_a_cycle_forecasts_from_each_windows_time_on_its_grid(tmp_path) -> None:
    """Two entities with the same values at different hours get different forecasts from a cycle model:
    the core hands it each window's last slot, and each forecast is the model's for that window and time."""
    import torch

    from models.checkpoint import save
    from models.data import Scaler
    from models.forecaster import Forecaster
    from models.nets.itransformer import ITransformer, ITransformerConfig

    torch.manual_seed(0)
    net = ITransformer(ITransformerConfig(8, 4, d_model=16, n_heads=4, d_ff=16, cycle=24, n_variates=2))
    with torch.no_grad():
        net.cycle.normal_()
    save(tmp_path, net.eval(), CH, Scaler.identity(2), extra={"grid": {"interval_ms": HOUR, "anchor_ms": 0}})
    forecaster = Forecaster.from_checkpoint(tmp_path, device="cpu")
    out, stats = core(forecaster).process(
        [reading("x", s, value=s % 3) for s in range(8)] + [reading("y", s, value=s % 3) for s in range(30, 38)]
    )
    assert stats.forecasts == 2
    got = {d["entity"]: d["forecast"]["temp"] for d in (orjson.loads(m.value) for m in out)}
    x = np.array([[[s % 3, -(s % 3)] for s in range(8)]], dtype=np.float32)
    for entity, last in (("x", 7), ("y", 37)):
        expected = forecaster.predict(x, np.array([last * HOUR]))[0, :, 0]
        np.testing.assert_allclose(got[entity], expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got["x"], got["y"])
    with pytest.raises(ValueError, match="SENSORCAST_READING_INTERVAL_S"):
        core(forecaster, interval_ms=HOUR // 2)
    # the same rule for a hot swap: a service slotting every 30 min refuses the cycle model, keeps its own
    plain = core(LastValueModel(CH, lookback=8, horizon=4), interval_ms=HOUR // 2)
    with pytest.raises(ValueError, match="SENSORCAST_READING_INTERVAL_S"):
        plain.slot.swap(forecaster)
    assert isinstance(plain.slot.model, LastValueModel)


def test_a_version_with_intervals_sends_each_level_around_every_forecast(tmp_path) -> None:
    """The version's split-conformal half-widths (scaled units) come out in raw units around the point."""
    import torch

    from models.checkpoint import save
    from models.data import Scaler
    from models.forecaster import Forecaster
    from models.nets import build

    torch.manual_seed(0)
    half = {"0.8": [[1.0, 2.0]] * 4, "0.95": [[3.0, 4.0]] * 4}  # (H, N) per level
    extra = {"intervals": {"score": "abs_error_scaled", "windows": 100, "half_width": half}}
    net = build("itransformer", lookback=8, horizon=4, d_model=16, n_heads=4, d_ff=16)
    save(tmp_path, net, CH, Scaler(np.zeros(2), np.array([10.0, 0.5])), extra=extra)
    out, stats = core(Forecaster.from_checkpoint(tmp_path, device="cpu")).process([reading("x", s) for s in range(8)])
    (doc,) = [orjson.loads(m.value) for m in out]
    for c, scale, w8, w95 in (("temp", 10.0, 1.0, 3.0), ("pressure", 0.5, 2.0, 4.0)):
        point = np.array(doc["forecast"][c])
        for level, w in (("0.8", w8), ("0.95", w95)):
            np.testing.assert_allclose(np.array(doc["intervals"][level]["upper"][c]) - point, w * scale, rtol=1e-5)
            np.testing.assert_allclose(point - np.array(doc["intervals"][level]["lower"][c]), w * scale, rtol=1e-5)


def test_a_version_calibrated_on_window_scaled_errors_widens_each_interval_with_its_own_window(tmp_path) -> None:
    """Half-width = stored width × training σ × √(the input window's σ in training σ, floored at 0.05)."""
    import torch

    from models.checkpoint import save
    from models.conformal import WINDOW_SCORE
    from models.data import Scaler
    from models.forecaster import Forecaster
    from models.nets import build

    torch.manual_seed(0)
    half = {"0.8": [[1.0, 2.0]] * 4}  # (H, N)
    extra = {"intervals": {"score": WINDOW_SCORE, "power": 0.5, "windows": 100, "half_width": half}}
    net = build("itransformer", lookback=8, horizon=4, d_model=16, n_heads=4, d_ff=16)
    save(tmp_path, net, CH, Scaler(np.zeros(2), np.array([10.0, 0.5])), extra=extra)
    c = core(Forecaster.from_checkpoint(tmp_path, device="cpu"))
    calm = [reading("calm", s, value=5.0 + 0.01 * (s % 2)) for s in range(8)]  # a near-constant window
    busy = [reading("busy", s) for s in range(8)]  # temp 0..7 and pressure 0..-7: σ 2.29 each
    docs = {d["entity"]: d for d in (orjson.loads(m.value) for m in c.process(calm + busy)[0])}
    for entity, window_std in (("calm", 0.005), ("busy", float(np.std(np.arange(8))))):
        for c_, scale, w in (("temp", 10.0, 1.0), ("pressure", 0.5, 2.0)):
            expected = w * scale * np.sqrt(max(window_std / scale, 0.05))
            got = np.array(docs[entity]["intervals"]["0.8"]["upper"][c_]) - np.array(docs[entity]["forecast"][c_])
            np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_the_monitors_calibration_scales_its_versions_intervals_and_a_swap_starts_from_the_new_versions_own() -> None:
    from pipeline.messages import encode_calibration, parse_calibration

    def with_intervals(version: str) -> LastValueModel:
        m = LastValueModel(CH, version=version)
        m.interval_widths = {"0.9": np.ones((2, 3))}  # (N, H): ±1 around every step
        return m

    def half_widths(c) -> list[float]:
        (doc,) = [orjson.loads(m.value) for m in c.process([reading("a", next(hours))])[0]]
        return [(u - p) for u, p in zip(doc["intervals"]["0.9"]["upper"]["temp"], doc["forecast"]["temp"], strict=True)]

    def calibration(version: str, temp: list[float]):
        doc = {"0.9": {"temp": temp, "pressure": [1.0, 1.0, 1.0]}}
        return parse_calibration(encode_calibration("fake", version, doc, "2026-01-01T00:00:00Z"))

    hours = iter(range(100))
    c = core(with_intervals("1"))
    c.process([reading("a", next(hours)) for _ in range(3)])  # warm up
    assert half_widths(c) == [1.0, 1.0, 1.0]  # the version's static widths until the monitor speaks
    assert c.slot.calibrate(calibration("1", [2.0, 0.5, 100.0]))
    assert half_widths(c) == [2.0, 0.5, 10.0]  # applied from the next batch, a multiplier clipped to 10
    assert not c.slot.calibrate(calibration("2", [3.0, 3.0, 3.0]))  # kept for v2, not v1's
    assert half_widths(c) == [2.0, 0.5, 10.0]
    c.slot.swap(with_intervals("2"))
    assert half_widths(c) == [3.0, 3.0, 3.0]  # v2 arrives with its own calibration
    c.slot.swap(with_intervals("3"))
    assert half_widths(c) == [1.0, 1.0, 1.0]  # v3 has none yet: its static widths
    assert not c.slot.calibrate(parse_calibration(encode_calibration("other-model", "3", {"0.9": {}}, "")))
    assert c.slot.calibrate(calibration("3", [1.0, 1.0]))  # the wrong horizon: v3 keeps its static widths
    assert half_widths(c) == [1.0, 1.0, 1.0]


def test_an_entity_silent_past_the_ttl_is_forgotten_and_warms_up_again() -> None:
    c = core(entity_ttl_s=60.0)
    warm = c.prepare([reading("quiet", s) for s in range(4)] + [reading("busy", 0)], now_s=0.0)
    assert len(warm.ready) == 1 and len(c.windows) == 2
    later = c.prepare([reading("busy", 1)], now_s=100.0)  # quiet said nothing for 100 s
    assert later.stats.evicted == 1 and set(c.windows.slots) == {"busy"}
    back = c.prepare([reading("quiet", 4)], now_s=101.0)
    assert back.ready == [] and back.stats.buffered == 1  # a fresh window: warming again, no stale history


def test_a_record_not_keyed_by_its_entity_is_refused_or_counted_and_forecasts_are_keyed_by_entity() -> None:
    stream = [reading("a", s) for s in range(5)]
    stream[4] = Record(stream[4].value, None)  # no key: it could sit on any partition, out of order
    out, stats = core().process(stream)
    assert [orjson.loads(m.value)["reason"] for m in out if m.topic == "sensors.dlq"] == ["bad_key"]
    out, stats = core(key_policy="accept").process(stream)
    assert stats.rekeyed == 1 and [m.key for m in out if m.topic == "sensors.forecasts"] == [b"a", b"a"]


@pytest.mark.parametrize("batched", [False, True])
def test_a_replayed_reading_passes_the_key_check_as_it_did_live(batched: bool) -> None:
    """A null-keyed reading stamped later than its neighbours was refused live (bad_key). Before, on a
    restart it was replayed first without the check, moved the entity's clock ahead, and made the
    keyed readings replayed after it `late`: only 2 of the next 4 readings were forecast."""
    from dataclasses import replace

    from pipeline.core import SMALL_BATCH

    c = core()
    stray = replace(reading("a", 9), key=None, replay=True)
    replayed = [stray] + [replace(reading("a", s), replay=True) for s in range(4)]
    live = [reading("a", s) for s in range(4, 8)]
    pad = [replace(reading(f"pad{k}", 0), replay=True) for k in range(SMALL_BATCH + 1)] if batched else []
    out, stats = c.process(pad + replayed + live)
    forecasts = [orjson.loads(m.value) for m in out if m.topic == "sensors.forecasts"]
    assert [d["ts"][11:13] for d in forecasts] == ["04", "05", "06", "07"], forecasts
    assert stats.readings == 4 and not [m for m in out if m.topic == "sensors.dlq"]  # replays publish nothing


@pytest.mark.parametrize("batched", [False, True])
def test_a_fleet_reporting_at_its_own_minutes_loses_no_reading_on_a_model_trained_at_the_hour(batched: bool) -> None:
    """Devices at :05, :35 and :58, each with ±10 min of jitter, a model whose grid is anchored at :00.
    Before, the :35 device's readings straddled the half-hour boundary of the model's grid: some
    landed in their neighbour's slot (a false `duplicate`) and left a gap behind (a filled slot)."""
    from pipeline.core import SMALL_BATCH

    model = LastValueModel(["temp", "pressure"])
    model.grid = {"interval_ms": HOUR, "anchor_ms": 0}
    c = core(model)
    rng = np.random.default_rng(7)
    minutes = {"at-05": 5, "at-35": 35, "at-58": 58}
    records = []
    for step in range(60):
        for entity, minute in minutes.items():
            ts = step * HOUR + minute * 60_000 + int(rng.uniform(-10, 10) * 60_000)
            records.append(Record(encode_reading(entity, ts, {"temp": 1.0, "pressure": 2.0}), entity.encode()))
    size = SMALL_BATCH + 5 if batched else 1
    dead, filled, forecasts = [], 0, 0
    for start in range(0, len(records), size):
        out, stats = c.process(records[start : start + size])
        dead += [orjson.loads(m.value)["reason"] for m in out if m.topic == "sensors.dlq"]
        filled += stats.filled
        forecasts += stats.forecasts
    assert dead == [] and filled == 0, (dead, filled)
    assert forecasts == 3 * (60 - (model.lookback - 1))  # every reading after warm-up


def test_with_a_configured_interval_a_device_whose_phase_moved_is_relearned_not_lost_for_good() -> None:
    """SENSORCAST_READING_INTERVAL_S set; a device reports at :00, then (a clock reset) at :30 with
    ±10 min of jitter, across the half-hour boundary of the phase it was anchored on. Before, each
    entity anchored on its first reading and never relearned: readings kept colliding for as long as
    it lived. Now a few refusals later its phase is learned again and nothing more is lost."""
    c = core(interval_ms=HOUR)
    rng = np.random.default_rng(3)
    stamps = [s * HOUR for s in range(20)] + [
        s * HOUR + 30 * 60_000 + int(rng.uniform(-10, 10) * 60_000) for s in range(20, 120)
    ]
    dead = []
    for ts in stamps:
        out, _ = c.process([Record(encode_reading("pump", ts, {"temp": 1.0, "pressure": 2.0}), b"pump")])
        dead.append(sum(m.topic == "sensors.dlq" for m in out))
    assert sum(dead[:20]) == 0 and sum(dead[60:]) == 0, dead
