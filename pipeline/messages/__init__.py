"""The wire format, pure: parse and validate readings, encode forecasts, dead letters and calibrations.

Reading    {"entity": "pump-7", "ts": "2026-11-24T10:00:00Z" | epoch ms, "values": {"temp": 71.2, ...}}
Forecast   {"entity", "ts" (the reading's slot on the grid), "step_ms" (the grid's interval), "filled"
            (inputs filled, not measured), "horizon", "channels", "forecast": {channel: [H numbers]},
            "model": {"name", "version"}, "produced_at"}, and with a version's intervals "intervals":
            {level: {"lower": {channel: [H]}, "upper": {channel: [H]}}}
Calibration {"name", "version", "multipliers": {level: {channel: [H numbers]}}, "updated_at"}, keyed
            "name:version" on the compacted calibration topic: the monitor's online adaptation of a
            version's interval half-widths (see `Calibration`)
DeadLetter {"error", "reason", "topic", "partition", "offset", "payload", "payload_encoding",
            "payload_bytes", "payload_sha256", "truncated"}: at most `max_payload` bytes of the payload
            (16 KiB by default), so a dead letter is always far under the broker's 1 MB limit.

The guarantee of the decode step: whatever bytes arrive, `parse_reading` returns a valid `Reading`
or raises `BadReading` with one of `REASONS`; nothing else escapes it (anything unforeseen becomes
`undecodable`, naming the exception's type). tests/pipeline/messages/ proves it with
Hypothesis. One module per message kind: readings, batch (the batch decoder), forecasts,
deadletters, calibrations; every name is importable from here.
"""

from __future__ import annotations

from pipeline.messages.batch import (  # noqa: F401
    BatchDecoder,
    Decoded,
)
from pipeline.messages.calibrations import (  # noqa: F401
    CALIBRATION_BYTES,
    MULTIPLIER_RANGE,
    BadCalibration,
    Calibration,
    calibration_key,
    encode_calibration,
    parse_calibration,
)
from pipeline.messages.deadletters import (  # noqa: F401
    DEAD_LETTER_PAYLOAD_BYTES,
    encode_dead_letter,
)
from pipeline.messages.forecasts import (  # noqa: F401
    ForecastEncoder,
    encode_forecast,
)
from pipeline.messages.readings import (  # noqa: F401
    EPOCH,
    FLOAT32_MAX,
    MAX_TS_MS,
    MILLISECOND,
    REASONS,
    TS_UNITS,
    YEAR_MS,
    BadReading,
    Bounds,
    Reading,
    TimePolicy,
    _is_utf8,
    _lenient_json,
    _non_finite,
    _parse_reading,
    _short,
    check_key,
    check_time,
    encode_reading,
    format_ts,
    parse_reading,
    parse_ts,
)

__all__ = [
    "BadCalibration",
    "BadReading",
    "BatchDecoder",
    "Bounds",
    "CALIBRATION_BYTES",
    "Calibration",
    "DEAD_LETTER_PAYLOAD_BYTES",
    "Decoded",
    "EPOCH",
    "FLOAT32_MAX",
    "ForecastEncoder",
    "MAX_TS_MS",
    "MILLISECOND",
    "MULTIPLIER_RANGE",
    "REASONS",
    "Reading",
    "TS_UNITS",
    "TimePolicy",
    "YEAR_MS",
    "calibration_key",
    "check_key",
    "check_time",
    "encode_calibration",
    "encode_dead_letter",
    "encode_forecast",
    "encode_reading",
    "format_ts",
    "parse_calibration",
    "parse_reading",
    "parse_ts",
]
