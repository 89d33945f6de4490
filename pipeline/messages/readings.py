"""Readings on the wire, pure: parse and validate one (`parse_reading`), its key and time checks,
the refusal reasons, and the time helpers every message shares (`parse_ts`, `format_ts`)."""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from dataclasses import dataclass

import numpy as np
import orjson

REASONS = (
    "empty",
    "oversized",
    "not_json",
    "not_an_object",
    "bad_entity",
    "bad_timestamp",
    "bad_values",
    "non_finite",
    "out_of_range",
    "missing_channels",
    "unknown_channels",
    "late",
    "duplicate",
    "future_timestamp",
    "ts_unit",
    "off_grid",
    "bad_key",
    "undecodable",
    "non_finite_forecast",
    "refused_by_broker",
)
# Epoch units a numeric ts may be written in, as multipliers to milliseconds (seconds as a float)
TS_UNITS = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}
YEAR_MS = 365 * 86_400_000
FLOAT32_MAX = float(np.finfo(np.float32).max)


class BadReading(ValueError):
    """A reading the service refuses; `reason` is one of REASONS, the message says what was wrong."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Reading:
    entity: str
    ts_ms: int
    values: np.ndarray  # (N,) float32, in the model's channel order; NaN: a channel the reading lacks
    lacking: int = 0  # how many channels it lacks (NaN in `values`)


@dataclass(frozen=True, slots=True)
class TimePolicy:
    """How a reading's ts is read and checked against the Kafka record's timestamp (the broker's or
    the producer's clock): `ts_unit` for epoch numbers, and how far ahead of the record a reading may
    claim to be (`max_future_ms`; None: no limit). A record without a timestamp is not checked."""

    ts_unit: str = "ms"
    max_future_ms: int | None = 86_400_000

    @classmethod
    def of(cls, settings) -> TimePolicy:
        """The policy that `pipeline.settings.Settings` (its ts_unit and max_future_s) describe."""
        return cls(settings.ts_unit, int(settings.max_future_s * 1000) if settings.max_future_s else None)


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MILLISECOND = dt.timedelta(milliseconds=1)
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: the last instant a forecast's ts can be written as


def parse_ts(value: object, unit: str = "ms") -> int:
    """ISO 8601 (a 'Z' or an offset; naive means UTC) or an epoch number in `unit` (s, ms, us, ns)
    → epoch ms, 1970 to 9999."""
    if isinstance(value, bool):
        raise BadReading("bad_timestamp", f"ts must be an ISO 8601 string or epoch milliseconds, got {value!r}")
    if unit != "ms" and isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise BadReading("bad_timestamp", f"ts {value!r} is not an epoch count")
        try:
            value = value * 1000 if unit == "s" and isinstance(value, int) else value * TS_UNITS[unit]
        except OverflowError:
            raise BadReading("bad_timestamp", f"ts {_short(value)} is beyond 9999") from None
        if isinstance(value, float) and math.isfinite(value) and 0 <= value <= MAX_TS_MS:
            value = int(value)
    if isinstance(value, int):  # any size: a 400-digit integer compares fine, math.isfinite would overflow
        if not 0 <= value <= MAX_TS_MS:
            raise BadReading(
                "bad_timestamp", f"ts {_short(value)} is not an epoch millisecond count between 1970 and 9999"
            )
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or not 0 <= value <= MAX_TS_MS:
            raise BadReading("bad_timestamp", f"ts {value!r} is not an epoch millisecond count between 1970 and 9999")
        return int(value)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            ts_ms = (parsed - EPOCH) // MILLISECOND  # exact: float seconds × 1000 lost a millisecond
        except (ValueError, OverflowError):
            raise BadReading(
                "bad_timestamp", f"ts {_short(value)} is not an ISO 8601 time between 1970 and 9999"
            ) from None
        if not 0 <= ts_ms <= MAX_TS_MS:
            raise BadReading("bad_timestamp", f"ts {_short(value)} is before 1970 or after 9999")
        return ts_ms
    raise BadReading(
        "bad_timestamp", f"ts must be an ISO 8601 string or epoch milliseconds, got {type(value).__name__}"
    )


def format_ts(ts_ms: int) -> str:
    """Epoch ms → ISO 8601 UTC with a Z; milliseconds only when there are some (time.gmtime: half
    the cost of datetime, and this runs once per forecast)."""
    ms = ts_ms % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts_ms // 1000)) + (f".{ms:03d}Z" if ms else "Z")


Bounds = tuple[np.ndarray, np.ndarray]  # (low, high) per channel: what the serving model can take


def parse_reading(
    raw: bytes | None,
    channels: list[str],
    max_bytes: int = 64 * 1024,
    bounds: Bounds | None = None,
    *,
    record_ts_ms: int = 0,
    policy: TimePolicy | None = None,
    allow_missing: bool = False,
) -> Reading:
    """Validate one message against the serving model's channels (and, given `bounds`, the range the
    model can take). The service's decode step: it returns a Reading or raises BadReading, nothing else.

    `record_ts_ms` is the Kafka record's timestamp (0: none): a ts far ahead of it is refused as
    `future_timestamp`, an epoch number that only makes sense in another unit as `ts_unit`. With
    `allow_missing`, a channel the reading lacks is NaN (the windows fill it or refuse it)."""
    try:
        return _parse_reading(raw, channels, max_bytes, bounds, record_ts_ms, policy or TimePolicy(), allow_missing)
    except BadReading:
        raise
    except Exception as e:  # the boundary: whatever we did not foresee is a dead letter, never a crash
        raise BadReading("undecodable", f"{type(e).__name__}: {_short(e)}") from None


def check_key(key: bytes | None, entity: str, key_policy: str = "refuse") -> bool:
    """A record keyed otherwise than by its entity lands on a partition of its own key's choosing,
    where it can be read before or after the entity's other readings: it would move the entity's
    clock out of order. Refused by default (bad_key); `key_policy="accept"` takes it. Returns True
    when the record is keyed otherwise and taken (the service counts those)."""
    if key == entity.encode():
        return False
    if key_policy == "refuse":
        shown = "no key" if key is None else f"key {key[:64]!r}"
        raise BadReading(
            "bad_key",
            f"the record has {shown}, not its entity {entity!r}: key readings by entity, so that each "
            "entity's readings stay in order on one partition (or set SENSORCAST_KEY_POLICY=accept)",
        )
    return True


def check_time(ts_value: object, ts_ms: int, record_ts_ms: int, policy: TimePolicy) -> None:
    """Refuse a ts that the record's own timestamp shows to be wrong: in another unit, or in the future."""
    if record_ts_ms <= 0:
        return
    if isinstance(ts_value, (int, float)) and not isinstance(ts_value, bool) and abs(ts_ms - record_ts_ms) > YEAR_MS:
        for unit, scale in TS_UNITS.items():
            if unit != policy.ts_unit and math.isfinite(ts_value) and abs(ts_value * scale - record_ts_ms) <= YEAR_MS:
                raise BadReading(
                    "ts_unit",
                    f"ts {_short(ts_value)} read as {policy.ts_unit} is {format_ts(ts_ms)}, far from the record's "
                    f"time {format_ts(record_ts_ms)}; it looks like epoch {unit} (set SENSORCAST_TS_UNIT={unit})",
                )
    if policy.max_future_ms is not None and ts_ms > record_ts_ms + policy.max_future_ms:
        raise BadReading(
            "future_timestamp",
            f"ts {format_ts(ts_ms)} is more than {policy.max_future_ms / 3_600_000:g} h after the record's "
            f"time {format_ts(record_ts_ms)}: a clock ahead of the world",
        )


def _parse_reading(
    raw: bytes | None,
    channels: list[str],
    max_bytes: int,
    bounds: Bounds | None,
    record_ts_ms: int,
    policy: TimePolicy,
    allow_missing: bool,
) -> Reading:
    if not raw:
        raise BadReading("empty", "the message has no value")
    if len(raw) > max_bytes:
        raise BadReading("oversized", f"{len(raw)} bytes exceeds the limit of {max_bytes}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        doc = _lenient_json(raw, e)
    if not isinstance(doc, dict):
        raise BadReading("not_an_object", f"expected a JSON object, got {type(doc).__name__}")
    entity = doc.get("entity")
    if not isinstance(entity, str) or not entity or len(entity) > 256 or not _is_utf8(entity):
        raise BadReading(
            "bad_entity", f"entity must be a non-empty UTF-8 string of at most 256 characters, got {_short(entity)}"
        )
    if "ts" not in doc:
        raise BadReading("bad_timestamp", "the reading has no ts")
    ts_ms = parse_ts(doc["ts"], policy.ts_unit)
    check_time(doc["ts"], ts_ms, record_ts_ms, policy)
    values = doc.get("values")
    if not isinstance(values, dict):
        raise BadReading("bad_values", f"values must be an object of channel → number, got {type(values).__name__}")
    unknown = [k for k in values if k not in channels]
    if unknown:
        raise BadReading(
            "unknown_channels", f"channels {_short(unknown)} are not served by this model (it expects {channels})"
        )
    missing = [c for c in channels if c not in values]
    if missing and (not allow_missing or len(missing) == len(channels)):
        raise BadReading("missing_channels", f"channels {missing} are missing")
    out = np.empty(len(channels), dtype=np.float32)
    for i, c in enumerate(channels):
        v = values.get(c)
        if v is None and c not in values:
            out[i] = np.nan  # filled from the entity's last value, or refused, by the windows
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BadReading("bad_values", f"channel {c!r} must be a number, got {_short(v)}")
        try:
            f = float(v)  # an integer of hundreds of digits overflows here
        except OverflowError:
            raise BadReading("out_of_range", f"channel {c!r} is {_short(v)}, beyond float32") from None
        if not math.isfinite(f):
            raise BadReading("non_finite", f"channel {c!r} is {v!r}")
        if abs(f) > FLOAT32_MAX:
            raise BadReading("out_of_range", f"channel {c!r} is {v!r}, beyond float32")
        out[i] = f
    if bounds is not None:
        low, high = bounds
        outside = np.flatnonzero((out < low) | (out > high))
        if outside.size:
            i = int(outside[0])
            raise BadReading(
                "out_of_range",
                f"channel {channels[i]!r} is {float(out[i])!r}, "
                f"outside the model's range [{low[i]:.4g}, {high[i]:.4g}]",
            )
    return Reading(entity, ts_ms, out, len(missing))


def _is_utf8(text: str) -> bool:
    """False for strings with lone surrogates (Python's json lets "\\ud800" through): they cannot be
    written back as a key or in a forecast."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _short(value: object, limit: int = 120) -> str:
    """A repr for an error message, cut short: a refusal names the problem, the payload is in the dead letter."""
    try:
        text = repr(value)
    except Exception:  # a repr of a huge int can itself refuse (the int digit limit)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


def _non_finite(constant: str) -> float:
    raise BadReading("non_finite", f"the reading holds {constant}")


def _lenient_json(raw: bytes, error: Exception) -> object:
    """orjson refuses NaN, Infinity and 1e999 as invalid JSON; Python's json writes them. Tell those
    apart from broken JSON, so the dead letter names the real problem."""
    try:
        return json.loads(raw, parse_constant=_non_finite)
    except BadReading:
        raise
    except RecursionError:
        raise BadReading("not_json", f"nested too deeply ({error})") from None
    except (ValueError, UnicodeDecodeError) as e:
        if "integer string conversion" in str(e):  # int()'s digit limit (4,300): valid JSON, absurd number
            raise BadReading("out_of_range", "a number of more than 4,300 digits") from None
        raise BadReading("not_json", f"not valid UTF-8 JSON ({error})") from None


def encode_reading(entity: str, ts: str | int, values: dict[str, float]) -> bytes:
    return orjson.dumps({"entity": entity, "ts": ts, "values": values})
