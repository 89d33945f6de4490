"""The batch decoder gives `parse_reading`'s answer for every message, fuzzed: the same reading
(entity, time, values, channels lacking) or the same refusal reason, whatever the bytes, the record
times, the time policy and the model's range."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.messages import (
    MAX_TS_MS,
    BadReading,
    BatchDecoder,
    ForecastEncoder,
    TimePolicy,
    encode_forecast,
    encode_reading,
    parse_reading,
    parse_ts,
)
from tests.fixtures.payloads import json_values, readings, to_bytes

CH = ["temp", "pressure"]
BOUNDS = (np.array([-1e9, -10.0], np.float32), np.array([1e9, 10.0], np.float32))
NOW = 1_800_000_000_000
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

plain = st.builds(  # valid readings, some near the edges of the checks
    lambda e, ts, t, p: encode_reading(e, ts, {"temp": t, "pressure": p}),
    st.sampled_from(["a", "pompe-é", "b" * 256, "b" * 257, ""]),
    st.one_of(st.integers(NOW - 2 * 365 * 86_400_000, NOW + 2 * 86_400_000), st.just("2027-01-15T08:00:00Z")),
    st.one_of(st.floats(-50, 50), st.sampled_from([3.5e38, 1e9, -1e9, 0.0])),
    st.one_of(st.floats(-20, 20), st.integers(-12, 12), st.sampled_from([True, None, "1"])),
)
messages = st.one_of(
    plain,
    plain,
    st.builds(to_bytes, readings, st.booleans()),
    st.builds(to_bytes, json_values, st.booleans()),
    st.binary(max_size=64),
    st.none(),
)


def one_at_a_time(raw, record_ts, bounds, policy, allow_missing):
    try:
        return parse_reading(raw, CH, 300, bounds, record_ts_ms=record_ts, policy=policy, allow_missing=allow_missing)
    except BadReading as bad:
        return bad.reason


@FUZZ
@given(
    batch=st.lists(st.tuples(messages, st.sampled_from([0, NOW])), max_size=24),
    bounded=st.booleans(),
    policy=st.sampled_from([TimePolicy(), TimePolicy("s"), TimePolicy(max_future_ms=None)]),
    allow_missing=st.booleans(),
)
def test_the_batch_decoder_answers_as_parse_reading_does(batch, bounded, policy, allow_missing) -> None:
    raws, record_ts = [r for r, _ in batch], [t for _, t in batch]
    bounds = BOUNDS if bounded else None
    decoded = BatchDecoder(CH, 300, policy=policy, allow_missing=allow_missing).decode(raws, record_ts, bounds)
    for i, (raw, ts) in enumerate(batch):
        expected = one_at_a_time(raw, ts, bounds, policy, allow_missing)
        if isinstance(expected, str):
            assert decoded.entity[i] is None and decoded.refused[i].reason == expected
        else:
            assert i not in decoded.refused and decoded.entity[i] == expected.entity
            assert decoded.ts_ms[i] == expected.ts_ms and decoded.lacking[i] == expected.lacking
            np.testing.assert_array_equal(decoded.values[i], expected.values)


def test_a_batch_of_plain_readings_is_decoded_into_columns() -> None:
    raws = [encode_reading(f"e{i}", "2027-01-15T08:00:00Z", {"pressure": i, "temp": 0.5 * i}) for i in range(3)]
    decoded = BatchDecoder(CH).decode(raws, [0, 0, 0])
    assert decoded.entity == ["e0", "e1", "e2"] and not decoded.refused
    assert decoded.ts_ms.tolist() == [parse_ts("2027-01-15T08:00:00Z")] * 3
    np.testing.assert_array_equal(decoded.values, [[0, 0], [0.5, 1], [1, 2]])


def test_duplicate_keys_take_the_last_value_as_parse_reading_does() -> None:
    raw = json.dumps({"entity": "a", "ts": 1}).encode()[:-1] + b', "values": {"temp": 1, "pressure": 2, "temp": 3}}'
    decoded = BatchDecoder(CH).decode([raw], [0])
    assert decoded.values[0].tolist() == [3.0, 2.0] == parse_reading(raw, CH).values.tolist()


names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)  # quotes, %, escapes, any plane


@FUZZ
@given(
    channels=st.lists(names, min_size=1, max_size=4, unique=True),
    forecasts=st.integers(0, 5),
    horizon=st.integers(1, 4),
    entities=st.lists(names, min_size=5, max_size=5),
    numbers=st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=80, max_size=80),
    ts=st.lists(st.integers(0, MAX_TS_MS), min_size=5, max_size=5),
    steps=st.lists(st.one_of(st.none(), st.integers(1, 10**9)), min_size=5, max_size=5),
    model=st.tuples(names, names),
)
def test_the_forecast_encoder_writes_what_encode_forecast_writes(
    channels, forecasts, horizon, entities, numbers, ts, steps, model
) -> None:
    n = len(channels)
    fc = np.array(numbers[: forecasts * n * horizon], np.float32).reshape(forecasts, n, horizon)
    filled = list(range(forecasts))
    k = forecasts
    got = ForecastEncoder(channels).encode(entities[:k], ts[:k], fc, *model, "2026-11-30T08:00:00Z", steps[:k], filled)
    assert got == [
        encode_forecast(entities[i], ts[i], channels, fc[i], *model, "2026-11-30T08:00:00Z", steps[i], filled[i])
        for i in range(forecasts)
    ]


@FUZZ
@given(
    channels=st.lists(names, min_size=1, max_size=3, unique=True),
    forecasts=st.integers(0, 4),
    horizon=st.integers(1, 3),
    levels=st.lists(st.sampled_from(["0.5", "0.8", "0.9", "0.95", "0.99"]), min_size=1, max_size=3, unique=True),
    numbers=st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=36, max_size=36),
    widths=st.lists(st.floats(0, 1e6, width=32), min_size=27, max_size=27),
)
def test_with_intervals_the_forecast_encoder_writes_what_encode_forecast_writes(
    channels, forecasts, horizon, levels, numbers, widths
) -> None:
    n, k = len(channels), forecasts
    fc = np.array(numbers[: k * n * horizon], np.float32).reshape(k, n, horizon)
    w = {
        lv: np.array(widths[j * 9 : j * 9 + n * horizon], np.float32).reshape(n, horizon) for j, lv in enumerate(levels)
    }
    bounds = np.stack([b for lv in levels for b in (fc - w[lv], fc + w[lv])], axis=1) if k else None
    got = ForecastEncoder(channels).encode(
        [f"e{i}" for i in range(k)], list(range(k)), fc, "m", "1", "now", [60_000] * k, [0] * k, bounds, tuple(levels)
    )
    assert got == [
        encode_forecast(
            f"e{i}",
            i,
            channels,
            fc[i],
            "m",
            "1",
            "now",
            60_000,
            0,
            {lv: (fc[i] - w[lv], fc[i] + w[lv]) for lv in levels},
        )
        for i in range(k)
    ]
