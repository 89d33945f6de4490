from __future__ import annotations

import base64
import hashlib

import numpy as np
import orjson
import pytest

from pipeline.messages import (
    MAX_TS_MS,
    BadReading,
    TimePolicy,
    encode_dead_letter,
    encode_forecast,
    format_ts,
    parse_reading,
    parse_ts,
)

CH = ["temp", "pressure"]


def test_a_good_reading_parses_in_channel_order() -> None:
    r = parse_reading(b'{"entity":"pump-7","ts":"2026-11-24T10:00:00Z","values":{"pressure":3.1,"temp":71.2}}', CH)
    assert r.entity == "pump-7" and r.ts_ms == 1795514400000
    assert np.allclose(r.values, [71.2, 3.1]) and r.values.dtype == np.float32


def test_timestamps_iso_offsets_and_epoch_ms() -> None:
    assert parse_ts("2026-11-24T10:00:00Z") == parse_ts("2026-11-24T11:00:00+01:00") == parse_ts(1795514400000)
    assert parse_ts("2026-11-24T10:00:00") == 1795514400000  # naive means UTC
    assert format_ts(1795514400000) == "2026-11-24T10:00:00Z"
    assert format_ts(1795514400123) == "2026-11-24T10:00:00.123Z"


@pytest.mark.parametrize(
    "raw, reason",
    [
        (None, "empty"),
        (b"", "empty"),
        (b"x" * 70_000, "oversized"),
        (b"{not json", "not_json"),
        (b"\xff\xfe", "not_json"),
        (b"[1, 2]", "not_an_object"),
        (b'{"ts": 1, "values": {"temp": 1, "pressure": 2}}', "bad_entity"),
        (b'{"entity": 7, "ts": 1, "values": {"temp": 1, "pressure": 2}}', "bad_entity"),
        (b'{"entity": "a", "values": {"temp": 1, "pressure": 2}}', "bad_timestamp"),
        (b'{"entity": "a", "ts": "yesterday", "values": {"temp": 1, "pressure": 2}}', "bad_timestamp"),
        (b'{"entity": "a", "ts": true, "values": {"temp": 1, "pressure": 2}}', "bad_timestamp"),
        (b'{"entity": "a", "ts": -1, "values": {"temp": 1, "pressure": 2}}', "bad_timestamp"),
        (b'{"entity": "a", "ts": 1e17, "values": {"temp": 1, "pressure": 2}}', "bad_timestamp"),  # past year 9999
        (b'{"entity": "a", "ts": "1969-12-31T23:00:00Z", "values": {"temp": 1, "pressure": 2}}', "bad_timestamp"),
        (b'{"entity": "a", "ts": 1, "values": [1, 2]}', "bad_values"),
        (b'{"entity": "a", "ts": 1, "values": {"temp": "hot", "pressure": 2}}', "bad_values"),
        (b'{"entity": "a", "ts": 1, "values": {"temp": null, "pressure": 2}}', "bad_values"),
        (b'{"entity": "a", "ts": 1, "values": {"temp": NaN, "pressure": 2}}', "non_finite"),
        (b'{"entity": "a", "ts": 1, "values": {"temp": -Infinity, "pressure": 2}}', "non_finite"),
        (b'{"entity": "a", "ts": 1, "values": {"temp": 1e999, "pressure": 2}}', "non_finite"),
        (b'{"entity": "a", "ts": 1, "values": {"temp": 1}}', "missing_channels"),
        (b'{"entity": "a", "ts": 1, "values": {"temp": 1, "pressure": 2, "rpm": 3}}', "unknown_channels"),
    ],
)
def test_bad_input_is_refused_with_its_reason(raw, reason) -> None:
    with pytest.raises(BadReading) as err:
        parse_reading(raw, CH, max_bytes=64 * 1024)
    assert err.value.reason == reason


def test_every_accepted_timestamp_can_be_written_back() -> None:
    for ts in (0, 1, 999, 4039, 1795514400123, MAX_TS_MS):  # 4039: float seconds × 1000 once gave 4038
        assert parse_ts(format_ts(ts)) == ts
    assert format_ts(MAX_TS_MS) == "9999-12-31T23:59:59.999Z"


def test_a_float_beyond_float32_is_out_of_range() -> None:
    with pytest.raises(BadReading) as err:
        parse_reading(b'{"entity": "a", "ts": 1, "values": {"temp": 1e39, "pressure": 2}}', CH)
    assert err.value.reason == "out_of_range"


def test_forecast_message_shape() -> None:
    fc = np.arange(6, dtype=np.float32).reshape(2, 3)
    doc = orjson.loads(
        encode_forecast("pump-7", 1795514400000, CH, fc, "m", "3", format_ts(1795514400500), 3_600_000, 2)
    )
    assert doc == {
        "entity": "pump-7",
        "ts": "2026-11-24T10:00:00Z",
        "step_ms": 3_600_000,
        "filled": 2,
        "horizon": 3,
        "channels": CH,
        "forecast": {"temp": [0.0, 1.0, 2.0], "pressure": [3.0, 4.0, 5.0]},
        "model": {"name": "m", "version": "3"},
        "produced_at": "2026-11-24T10:00:00.500Z",
    }


def test_dead_letter_keeps_the_original_bytes() -> None:
    doc = orjson.loads(encode_dead_letter(BadReading("not_json", "x"), "t", 2, 41, b"{oops"))
    assert doc["reason"] == "not_json" and doc["payload"] == "{oops" and doc["payload_encoding"] == "utf-8"
    assert (doc["topic"], doc["partition"], doc["offset"]) == ("t", 2, 41)
    binary = orjson.loads(encode_dead_letter(BadReading("not_json", "x"), "t", 0, 0, b"\xff\x00"))
    assert binary["payload_encoding"] == "base64" and base64.b64decode(binary["payload"]) == b"\xff\x00"


@pytest.mark.parametrize(
    "payload",
    [bytes(range(256)) * 3600, b"\x01" * 180_000, '{"entity": "é"}'.encode() * 40_000, b"x" * 900_000],
    ids=["binary-900KB", "control-180KB", "utf8-cut-mid-character", "text-900KB"],
)
def test_a_dead_letter_is_bounded_whatever_it_carries(payload) -> None:
    doc_bytes = encode_dead_letter(BadReading("oversized", "x"), "t", 0, 7, payload)
    doc = orjson.loads(doc_bytes)
    assert len(doc_bytes) < 6 * 16 * 1024 + 2048  # far under the broker's 1 MB
    assert doc["truncated"] and doc["payload_bytes"] == len(payload)
    assert doc["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    prefix = base64.b64decode(doc["payload"]) if doc["payload_encoding"] == "base64" else doc["payload"].encode()
    assert payload.startswith(prefix) and len(prefix) >= 16 * 1024 - 3


def test_epoch_seconds_are_refused_naming_the_unit_and_read_with_the_unit_set() -> None:
    now = 1_795_514_400_000
    raw = b'{"entity": "a", "ts": 1795514400, "values": {"temp": 1, "pressure": 2}}'
    with pytest.raises(BadReading) as err:
        parse_reading(raw, CH, record_ts_ms=now)
    assert err.value.reason == "ts_unit" and "SENSORCAST_TS_UNIT=s" in str(err.value)
    assert parse_reading(raw, CH, record_ts_ms=now, policy=TimePolicy(ts_unit="s")).ts_ms == now
    assert parse_reading(raw, CH).ts_ms == 1795514400  # no record time to judge by: read as ms, as documented


def test_a_clock_far_ahead_of_its_record_is_refused_and_history_is_not() -> None:
    now = 1_795_514_400_000
    future = b'{"entity": "a", "ts": "2101-01-01T00:00:00Z", "values": {"temp": 1, "pressure": 2}}'
    with pytest.raises(BadReading) as err:
        parse_reading(future, CH, record_ts_ms=now)
    assert err.value.reason == "future_timestamp"
    past = b'{"entity": "a", "ts": "2013-01-01T00:00:00Z", "values": {"temp": 1, "pressure": 2}}'
    assert parse_reading(past, CH, record_ts_ms=now).ts_ms < now  # a replay of history is not refused
    assert parse_reading(future, CH, record_ts_ms=now, policy=TimePolicy(max_future_ms=None))


def test_a_missing_channel_is_nan_only_when_allowed() -> None:
    raw = b'{"entity": "a", "ts": 1, "values": {"temp": 1}}'
    assert np.isnan(parse_reading(raw, CH, allow_missing=True).values[1])
    with pytest.raises(BadReading) as err:
        parse_reading(raw, CH)
    assert err.value.reason == "missing_channels"
