"""The decode step's guarantee, fuzzed: whatever bytes arrive, `parse_reading` returns a valid
reading or raises BadReading with a known reason, and the dead letter for it can always be written.

The payloads below the strategies are the ones that crashed the service before (issue #12) or that
Hypothesis found; they stay here as named cases."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.messages import (
    REASONS,
    BadReading,
    encode_dead_letter,
    encode_forecast,
    format_ts,
    parse_reading,
    parse_ts,
)
from tests.fixtures.payloads import json_values, readings, to_bytes

CH = ["temp", "pressure"]
BOUNDS = (np.array([-1e9, -10.0]), np.array([1e9, 10.0]))
FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_or_refuse(raw: bytes | None) -> str:
    """Apply the invariant to one payload; returns 'ok' or the refusal's reason."""
    try:
        reading = parse_reading(raw, CH, max_bytes=64 * 1024, bounds=BOUNDS)
    except BadReading as bad:
        assert bad.reason in REASONS and str(bad).startswith(bad.reason)
        letter = orjson.loads(encode_dead_letter(bad, "readings", 0, 7, raw))
        assert letter["reason"] == bad.reason and letter["offset"] == 7
        return bad.reason
    assert isinstance(reading.entity, str) and 0 < len(reading.entity) <= 256
    reading.entity.encode("utf-8")  # it can be a key and go out in a forecast
    assert reading.values.dtype == np.float32 and reading.values.shape == (len(CH),)
    assert np.isfinite(reading.values).all()
    assert ((reading.values >= BOUNDS[0]) & (reading.values <= BOUNDS[1])).all()
    assert parse_ts(format_ts(reading.ts_ms)) == reading.ts_ms
    orjson.loads(
        encode_forecast(reading.entity, reading.ts_ms, CH, np.zeros((2, 3), np.float32), "m", "1", format_ts(0))
    )
    return "ok"


# -- properties ------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=512))
@example(b"[" * 1100)
@example(b"\xff\xfe\x00")
def test_any_bytes_decode_or_are_refused_with_a_reason(raw: bytes) -> None:
    decode_or_refuse(raw)


@FUZZ
@given(json_values, st.booleans())
def test_any_json_document_decodes_or_is_refused_with_a_reason(doc: object, ascii_only: bool) -> None:
    decode_or_refuse(to_bytes(doc, ascii_only))


@FUZZ
@given(readings, st.booleans())
def test_reading_shaped_documents_with_wrong_fields_decode_or_are_refused(doc: dict, ascii_only: bool) -> None:
    decode_or_refuse(to_bytes(doc, ascii_only))


@FUZZ
@given(st.integers(min_value=1, max_value=5000), st.sampled_from([b"[", b'{"a":', b'{"entity":[']))
def test_deep_nesting_is_refused_not_a_crash(depth: int, opener: bytes) -> None:
    assert decode_or_refuse(opener * depth) != "ok"


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["entity", "ts", "values"]), json_values), min_size=1, max_size=6))
def test_duplicate_keys_decode_or_are_refused(pairs: list[tuple[str, object]]) -> None:
    body = ", ".join(f"{json.dumps(k)}: {json.dumps(v, allow_nan=True)}" for k, v in pairs)
    decode_or_refuse(("{" + body + "}").encode("utf-8", "surrogatepass"))


# -- named cases: what crashed the service, and what the fuzzing found --------------------------------

BIG = "9" * 400


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"[" * 1100, "not_json"),  # orjson refuses the depth; json.loads raised RecursionError
        (
            f'{{"entity": "a", "ts": 1, "values": {{"temp": {BIG}, "pressure": 1}}}}'.encode(),
            "out_of_range",
        ),  # OverflowError
        (
            f'{{"entity": "a", "ts": {BIG}, "values": {{"temp": 1, "pressure": 1}}}}'.encode(),
            "bad_timestamp",
        ),  # OverflowError
        (
            b'{"entity": "a", "ts": 1, "values": {"temp": ' + b"9" * 5000 + b', "pressure": 1}}',
            "out_of_range",
        ),  # int digit limit
        (b'{"entity": "a", "ts": 1, "values": {"temp": 3e38, "pressure": 3e38}}', "out_of_range"),  # finite, absurd
        (b'{"entity": "a", "ts": 1, "values": {"temp": 1, "pressure": 11}}', "out_of_range"),  # past the model's range
        (b'{"entity": "a", "ts": 1, "values": {"temp": 1e39, "pressure": 1}}', "out_of_range"),  # beyond float32
        (b'{"entity": "\\ud800", "ts": 1, "values": {"temp": 1, "pressure": 1}}', "bad_entity"),  # a lone surrogate
        (b'{"entity": "a", "ts": "0001-01-01T00:00:00+01:00", "values": {"temp": 1, "pressure": 1}}', "bad_timestamp"),
        (b'{"entity": "a", "ts": "9999-12-31T23:59:59-01:00", "values": {"temp": 1, "pressure": 1}}', "bad_timestamp"),
        (b'{"entity": "a", "ts": 1, "values": {"temp": Infinity, "pressure": 1}}', "non_finite"),
        (b'{"entity": "a", "ts": 1, "values": {"temp": -Infinity, "pressure": 1}}', "non_finite"),
        (
            b'{"entity": "a", "ts": 1, "entity": 5, "values": {"temp": 1, "pressure": 1}}',
            "bad_entity",
        ),  # the last key wins
        (b'{"entity": "a", "ts": 1, "values": {"temp": 1, "pressure": 1, "temp": "x"}}', "bad_values"),
    ],
)
def test_named_payloads_are_refused_with_their_reason(raw: bytes, reason: str) -> None:
    assert decode_or_refuse(raw) == reason


def test_an_unforeseen_exception_becomes_undecodable_with_its_type(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.messages.readings as messages

    def explode(*_args):
        raise KeyError("something nobody planned for")

    monkeypatch.setattr(messages, "_parse_reading", explode)
    with pytest.raises(BadReading) as err:
        parse_reading(b'{"entity": "a"}', CH)
    assert err.value.reason == "undecodable" and "KeyError" in str(err.value)
    letter = orjson.loads(encode_dead_letter(err.value, "readings", 1, 2, b'{"entity": "a"}'))
    assert letter["reason"] == "undecodable" and "KeyError" in letter["error"]


def apply_or_refuse(raw: bytes | None) -> None:
    """The calibration's invariant: a Calibration whose scales are finite and in range, or
    BadCalibration; nothing else escapes, so the service's follower never dies of a message."""
    from pipeline.messages import MULTIPLIER_RANGE, BadCalibration, parse_calibration

    try:
        cal = parse_calibration(raw)
    except BadCalibration as bad:
        assert str(bad)
        return
    for scales in cal.scales(CH, horizon=2).values():
        assert scales.shape == (2, 2) and np.all((scales >= MULTIPLIER_RANGE[0]) & (scales <= MULTIPLIER_RANGE[1]))


@FUZZ
@given(st.binary(max_size=512) | json_values.map(lambda doc: to_bytes(doc, ascii_only=False)))
@example(b'{"name": "m", "version": true, "multipliers": {}}')
@example(b'{"name": "m", "version": "1", "multipliers": {"0.9": {"temp": [1, NaN]}}}')
@example(b'{"name": "m", "version": "1", "multipliers": {"0.9": {"temp": [1e308, 1e-308], "pressure": [0, 1]}}}')
def test_any_calibration_message_is_applied_in_range_or_refused(raw: bytes) -> None:
    apply_or_refuse(raw)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["0.8", "0.9"]),
        st.dictionaries(st.sampled_from(CH), st.lists(st.floats() | st.integers() | st.booleans(), max_size=3)),
    )
)
def test_calibration_shaped_messages_are_applied_in_range_or_refused(multipliers: dict) -> None:
    apply_or_refuse(json.dumps({"name": "m", "version": "1", "multipliers": multipliers}).encode())
