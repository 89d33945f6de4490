"""The core under a generated mix of valid and bad records: every record ends as exactly one of a
forecast, a warm-up reading or a dead letter, and no forecast holds a non-finite number."""

from __future__ import annotations

import functools
import math

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core import ForecastCore, ModelSlot, ServiceConfig
from pipeline.messages import REASONS, encode_reading
from pipeline.records import Record
from tests.fixtures.fakes import LastValueModel
from tests.fixtures.payloads import json_values, to_bytes

CH = ["temp", "pressure"]
HOUR = 3_600_000
LOOKBACK = 4


class ExplodingModel(LastValueModel):
    """Forecasts inf for any window whose last temperature is above 100: the net misbehaving."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = super().predict(x)
        out[x[:, -1, 0] > 100] = np.inf
        return out


@functools.cache
def real_forecaster(architecture: str):
    """A tiny real network (identity scaler, so the model's range is ±1e9 on every channel)."""
    import torch

    from models.checkpoint import CheckpointMeta
    from models.forecaster import Forecaster
    from models.nets.itransformer import ITransformer, ITransformerConfig
    from models.nets.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    if architecture == "itransformer":
        net = ITransformer(ITransformerConfig(lookback=LOOKBACK, horizon=3, d_model=16, n_heads=2, d_ff=16))
    else:
        net = Transformer(
            TransformerConfig(lookback=LOOKBACK, horizon=3, n_variates=2, label_len=2, d_model=16, n_heads=2, d_ff=16)
        )
    meta = CheckpointMeta(
        architecture, net.cfg.to_dict(), CH, {"mean": [0.0, 0.0], "std": [1.0, 1.0]}, name=architecture
    )
    return Forecaster(net, meta, device="cpu")


MODELS = {
    "last-value": lambda: LastValueModel(CH, lookback=LOOKBACK),
    "exploding": lambda: ExplodingModel(CH, lookback=LOOKBACK),
    "itransformer": lambda: real_forecaster("itransformer"),
    "transformer": lambda: real_forecaster("transformer"),
}

values = st.one_of(st.floats(-50, 200), st.floats(-1e9, 1e9), st.sampled_from([1e9, -1e9, 3e38, 1e-300, 0.0]))
valid = st.builds(
    lambda entity, step, temp, pressure: encode_reading(entity, step * HOUR, {"temp": temp, "pressure": pressure}),
    st.sampled_from(["a", "b", "c"]),
    st.integers(0, 40),  # repeats and steps back: duplicates and late readings
    values,
    values,
)
payloads = st.one_of(
    valid, valid, valid, st.binary(max_size=64), st.builds(to_bytes, json_values, st.booleans()), st.none()
)


@pytest.mark.parametrize("model_name", list(MODELS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(payloads, max_size=60), batch=st.integers(1, 16))
def test_every_record_ends_as_one_outcome_and_forecasts_are_finite(model_name: str, records: list, batch: int) -> None:
    core = ForecastCore(ModelSlot(MODELS[model_name]()), ServiceConfig(max_batch=batch))
    stream = [Record(raw, offset=i) for i, raw in enumerate(records)]
    forecasts, dead, buffered = [], [], 0
    for start in range(0, len(stream), batch):
        out, stats = core.process(stream[start : start + batch])
        batch_forecasts = [orjson.loads(m.value) for m in out if m.topic == core.cfg.forecasts_topic]
        batch_dead = [orjson.loads(m.value) for m in out if m.topic == core.cfg.dlq_topic]
        assert len(batch_forecasts) == stats.forecasts and len(batch_dead) == sum(stats.dead.values())
        forecasts += batch_forecasts
        dead += batch_dead
        buffered += stats.buffered
    assert len(forecasts) + len(dead) + buffered == len(records), "every record: one forecast, warm-up or dead letter"
    assert all(d["reason"] in REASONS for d in dead)
    for doc in forecasts:
        numbers = [v for channel in doc["forecast"].values() for v in channel]
        assert all(isinstance(v, float) and math.isfinite(v) for v in numbers), doc
    if model_name != "exploding":
        assert not [d for d in dead if d["reason"] == "non_finite_forecast"]


def test_a_non_finite_forecast_becomes_a_dead_letter_not_a_null() -> None:
    core = ForecastCore(ModelSlot(ExplodingModel(CH, lookback=LOOKBACK)), ServiceConfig())
    temps = [1.0, 2.0, 3.0, 4.0, 500.0, 6.0]
    out, stats = core.process(
        [
            Record(encode_reading("a", s * HOUR, {"temp": t, "pressure": 0.0}), b"a", offset=s)
            for s, t in enumerate(temps)
        ]
    )
    dead = [orjson.loads(m.value) for m in out if m.topic == core.cfg.dlq_topic]
    assert stats.forecasts == 2 and stats.dead == {"non_finite_forecast": 1}
    assert dead[0]["offset"] == 4 and "NaN or inf" in dead[0]["error"] and '"temp":500.0' in dead[0]["payload"]


@pytest.mark.parametrize("architecture", ["itransformer", "transformer"])
def test_real_networks_stay_finite_at_the_edge_of_the_models_range(architecture: str) -> None:
    """The range rule (models/forecaster.py MAX_SCALED) holds for both networks: ±1e9 σ in, finite out."""
    core = ForecastCore(ModelSlot(real_forecaster(architecture)), ServiceConfig())
    edge = [1e9, -1e9, 1e9, 0.0, -1e9, 1e9]
    out, stats = core.process(
        [Record(encode_reading("a", s * HOUR, {"temp": v, "pressure": -v}), b"a") for s, v in enumerate(edge)]
    )
    assert stats.forecasts == 3 and not stats.dead
    assert all(math.isfinite(v) for m in out for ch in orjson.loads(m.value)["forecast"].values() for v in ch)


NOW = 1_795_514_400_000  # the records' Kafka timestamp: a reading's clock is judged against it
incident = st.tuples(
    st.integers(-30, 30),  # slot, in hours from now
    st.floats(-0.49, 0.49),  # clock jitter, in intervals
    st.sampled_from(["plain", "resend", "seconds", "far_future", "far_past", "dropped", "null_key", "off_key"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mess=st.lists(incident, max_size=40), gridded=st.booleans())
def test_no_messy_sequence_silences_an_entity_for_more_than_one_window(mess, gridded) -> None:
    """Whatever a gateway sends (re-sends, jitter, broken clocks, epoch seconds, dropped channels,
    wrong keys, in any order), on the model's grid the next LOOKBACK good readings after the entity's
    latest slot are all taken and forecast: no incident leaves it dark longer than one window. On a
    grid the entity's first readings taught (a model without one), it may have to learn it again
    first: forecast within four windows."""
    model = LastValueModel(CH, lookback=LOOKBACK)
    model.grid = {"interval_ms": HOUR, "anchor_ms": 0} if gridded else None
    core = ForecastCore(ModelSlot(model), ServiceConfig(max_batch=64))
    records = []
    for offset, jitter, kind in mess:
        ts = NOW + offset * HOUR + int(jitter * HOUR)
        ts = {"seconds": ts // 1000, "far_future": 4_102_444_800_000, "far_past": 631_152_000_000}.get(kind, ts)
        values = {"temp": 1.0} if kind == "dropped" else {"temp": 1.0, "pressure": 2.0}
        key = {"null_key": None, "off_key": b"b"}.get(kind, b"a")
        for _ in range(2 if kind == "resend" else 1):
            records.append(Record(encode_reading("a", ts, values), key, timestamp_ms=NOW))
            ts += 1000
    out, _ = core.process(records)
    assert all(np.isfinite(v).all() for m in out if m.topic == "sensors.forecasts"
               for v in orjson.loads(m.value)["forecast"].values())  # fmt: skip
    w = core.windows
    latest = int(w.last_ts[w.slots["a"]]) if "a" in w.slots and w.count[w.slots["a"]] else NOW - 100 * HOUR
    good = [  # sent when they were read: their Kafka timestamp is their own time
        Record(encode_reading("a", t, {"temp": 5.0, "pressure": 6.0}), b"a", timestamp_ms=max(NOW, t))
        for t in (latest + k * HOUR for k in range(1, (1 if gridded else 4) * LOOKBACK + 1))
    ]
    out, stats = core.process(good)
    assert stats.dead == {} or not gridded, stats.dead
    last = orjson.loads(out[-1].value)
    assert out[-1].topic == "sensors.forecasts" and last["entity"] == "a", last  # the last good reading is forecast


reading_events = st.tuples(
    st.sampled_from(["a", "b", "c", "d", "e"]),
    st.one_of(
        st.just(1), st.just(1), st.just(1), st.sampled_from([0, -1, 2, 5])
    ),  # the clock: steady, re-sent, late, gaps
    st.sampled_from([0, 0, 0, 1000, 1_790_000]),
    st.floats(-50, 50),
    st.one_of(st.just("keyed"), st.just("keyed"), st.just("keyed"), st.sampled_from(["unkeyed", "short", "junk"])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(reading_events, max_size=80),
    replayed=st.integers(0, 10),
    batch=st.integers(9, 40),
    missing_fill=st.sampled_from([0, 3]),
)
def test_a_batch_at_once_publishes_what_one_reading_at_a_time_does(events, replayed, batch, missing_fill) -> None:
    """The batch path (columns, push_many, the encoder) against the one-reading path (parse_reading,
    push): the same forecasts and dead letters, byte for byte, from the same messy stream."""
    clock: dict[str, int] = {}
    records = []
    for i, (entity, step, jitter, temp, kind) in enumerate(events):
        clock[entity] = clock.get(entity, 0) + step
        values = {"temp": temp} if kind == "short" else {"temp": temp, "pressure": 1.0}
        raw = b"{junk" if kind == "junk" else encode_reading(entity, clock[entity] * HOUR + jitter, values)
        key = None if kind == "unkeyed" else entity.encode()
        records.append(Record(raw, key, offset=i, timestamp_ms=NOW, replay=i < replayed))

    def publish(size: int) -> list:
        cfg = ServiceConfig(max_missing_fill=missing_fill, max_batch=size)
        core = ForecastCore(ModelSlot(LastValueModel(CH, lookback=LOOKBACK)), cfg)
        out = []
        for start in range(0, len(records), size):
            out += core.process(records[start : start + size], now_ms=NOW)[0]
        return out

    batched = publish(batch)
    assert sorted(batched, key=repr) == sorted(publish(1), key=repr)
