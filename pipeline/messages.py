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
`undecodable`, naming the exception's type). tests/pipeline/test_messages_fuzz.py proves it with
Hypothesis.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import time
from dataclasses import dataclass

import msgspec
import numpy as np
import orjson

# The reasons a reading can be refused; the dead-letter metric is labelled by these.
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


class Decoded:
    """A batch of messages as columns, row i from message i: `entity[i]` is None for a refused message
    (its BadReading in `refused[i]`); `values` holds NaN where a reading lacks a channel."""

    __slots__ = ("entity", "ts_ms", "values", "lacking", "refused")

    def __init__(self, n: int, n_channels: int):
        self.entity: list[str | None] = [None] * n
        self.ts_ms = np.zeros(n, dtype=np.int64)
        self.values = np.zeros((n, n_channels), dtype=np.float32)
        self.lacking = np.zeros(n, dtype=np.int64)
        self.refused: dict[int, BadReading] = {}


class BatchDecoder:
    """`parse_reading` for a whole batch, with the same answers at a fraction of the cost.

    A typed decode (msgspec: the reading's shape, exactly this model's channels, numbers that are not
    booleans) takes each message that is plainly a reading, and the value checks (finite, float32,
    the model's range, the time against the record's) run once over the batch as arrays. A message
    either step is unsure of goes through `parse_reading` itself, so every refusal, and its reason,
    is the one `parse_reading` gives (tests/pipeline/test_messages_batch.py checks the two agree on
    any bytes).

    >>> d = BatchDecoder(["temp"]).decode([encode_reading("a", 0, {"temp": 1.5}), b"junk"], [0, 0])
    >>> d.entity, d.values[0].tolist(), d.refused[1].reason
    (['a', None], [1.5], 'not_json')
    """

    TS_CACHE = 4096  # ISO strings remembered: entities on one grid share their times

    def __init__(
        self,
        channels: list[str],
        max_bytes: int = 64 * 1024,
        *,
        policy: TimePolicy | None = None,
        allow_missing: bool = False,
    ):
        self.channels, self.max_bytes = list(channels), max_bytes
        self.policy, self.allow_missing = policy or TimePolicy(), allow_missing
        fields = [(f"c{i}", float) for i in range(len(channels))]
        values = msgspec.defstruct(
            "Values", fields, rename={f"c{i}": c for i, c in enumerate(channels)}, forbid_unknown_fields=True
        )
        shape = msgspec.defstruct(
            "Shape", [("entity", str), ("ts", int | str), ("values", values)], forbid_unknown_fields=True
        )
        self._decode = msgspec.json.Decoder(shape).decode
        self._iso: dict[str, int] = {}

    def parse_one(self, raw: bytes | None, record_ts_ms: int, bounds: Bounds | None = None) -> Reading:
        """`parse_reading` of one message with this decoder's channels, limit and policies."""
        return parse_reading(
            raw,
            self.channels,
            self.max_bytes,
            bounds,
            record_ts_ms=record_ts_ms,
            policy=self.policy,
            allow_missing=self.allow_missing,
        )

    def decode(self, raws: list[bytes | None], record_ts_ms: list[int], bounds: Bounds | None = None) -> Decoded:
        n, policy = len(raws), self.policy
        out = Decoded(n, len(self.channels))
        fast: list[int] = []
        rows: list[tuple] = []
        unsure: list[int] = []
        decode, astuple, iso = self._decode, msgspec.structs.astuple, self._iso
        epoch_ints = policy.ts_unit == "ms"
        for i, raw in enumerate(raws):
            try:
                if not raw or len(raw) > self.max_bytes:
                    raise ValueError
                doc = decode(raw)
                entity, ts = doc.entity, doc.ts
                if not entity or len(entity) > 256 or not (entity.isascii() or _is_utf8(entity)):
                    raise ValueError
                if type(ts) is str:
                    ts_ms = iso.get(ts)
                    if ts_ms is None:
                        ts_ms = parse_ts(ts)
                        if len(iso) >= self.TS_CACHE:
                            iso.clear()
                        iso[ts] = ts_ms
                    ts = ts_ms
                elif not epoch_ints or not 0 <= ts <= MAX_TS_MS:
                    raise ValueError
                out.entity[i] = entity
                out.ts_ms[i] = ts
                rows.append(astuple(doc.values))
                fast.append(i)
            except Exception:  # not plainly a reading: parse_reading says what it is
                unsure.append(i)
        if fast:
            idx = np.asarray(fast, dtype=np.int64)
            wide = np.asarray(rows, dtype=np.float64)
            with np.errstate(over="ignore"):  # beyond float32: refused just below
                narrow = wide.astype(np.float32)
            ok = np.isfinite(wide).all(axis=1) & (np.abs(wide) <= FLOAT32_MAX).all(axis=1)
            if bounds is not None:
                ok &= ((narrow >= bounds[0]) & (narrow <= bounds[1])).all(axis=1)
            rec_ts = np.asarray(record_ts_ms, dtype=np.int64)[idx]
            ts = out.ts_ms[idx]
            timed = rec_ts > 0
            ok &= ~(timed & (np.abs(ts - rec_ts) > YEAR_MS))  # far from the record: maybe another unit
            if policy.max_future_ms is not None:
                ok &= ~(timed & (ts > rec_ts + policy.max_future_ms))
            out.values[idx] = narrow
            for i in idx[~ok].tolist():
                out.entity[i] = None
                unsure.append(i)
        for i in unsure:
            try:
                reading = self.parse_one(raws[i], record_ts_ms[i], bounds)
            except BadReading as bad:
                out.refused[i] = bad
                continue
            out.entity[i], out.ts_ms[i], out.lacking[i] = reading.entity, reading.ts_ms, reading.lacking
            out.values[i] = reading.values
        return out


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


def encode_forecast(
    entity: str,
    ts_ms: int,
    channels: list[str],
    forecast_nh: np.ndarray,
    model_name: str,
    model_version: str,
    produced_at: str,
    step_ms: int | None = None,
    filled: int = 0,
    intervals: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> bytes:
    """`forecast_nh` is (N, H) and C-contiguous: each row goes out as one channel's list.
    `produced_at` comes formatted (`format_ts`): a batch formats it once for all its forecasts.
    `ts` is the reading's slot on the grid; step k of the forecast is for ts + k·`step_ms`;
    `filled` counts the values in the model's input window that were filled, not measured.
    `intervals` maps a level ("0.8") to its (lower, upper), each (N, H) like the forecast; a model
    without intervals sends none (and the message has no "intervals" key)."""
    doc = {
        "entity": entity,
        "ts": format_ts(ts_ms),
        "step_ms": step_ms,
        "filled": filled,
        "horizon": int(forecast_nh.shape[1]),
        "channels": channels,
        "forecast": {c: forecast_nh[i] for i, c in enumerate(channels)},
    }
    if intervals:
        doc["intervals"] = {
            level: {
                "lower": {c: lower[i] for i, c in enumerate(channels)},
                "upper": {c: upper[i] for i, c in enumerate(channels)},
            }
            for level, (lower, upper) in intervals.items()
        }
    doc |= {"model": {"name": model_name, "version": str(model_version)}, "produced_at": produced_at}
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


class ForecastEncoder:
    """`encode_forecast` for a batch, byte for byte, with little Python per forecast: the numbers of
    the whole batch are written in one orjson call, and each forecast is one %-format of a template
    that holds what the batch's forecasts share (channels, horizon, model, produced_at).

    >>> enc = ForecastEncoder(["temp"])
    >>> enc.encode(["a"], [0], np.ones((1, 1, 2), np.float32), "m", "1", "2026-01-01T00:00:00Z", [None], [0])
    [b'{"entity":"a","ts":"1970-01-01T00:00:00Z","step_ms":null,"filled":0,"horizon":2,"channels":["temp"],\
"forecast":{"temp":[1.0,1.0]},"model":{"name":"m","version":"1"},"produced_at":"2026-01-01T00:00:00Z"}']
    """

    CACHE = 4096  # entities and times remembered between batches (their JSON, their ISO form)

    def __init__(self, channels: list[str]):
        self.channels = list(channels)
        self._entity: dict[str, bytes] = {}
        self._ts: dict[int, bytes] = {}
        self._templates: dict[tuple, bytes] = {}  # by model and horizon: what a batch's forecasts share

    def _template(self, model_name: str, model_version: str, horizon: int, levels: tuple[str, ...] = ()) -> bytes:
        """One forecast as a %-template: entity, ts, step, filled, each channel's row (the forecast's,
        then each level's lower and upper rows), produced_at."""
        shared = lambda x: orjson.dumps(x).replace(b"%", b"%%")  # noqa: E731 (a literal % in a name)
        rows = b"".join(shared(c) + b":[%b" for c in self.channels)  # each %b brings its "],"
        intervals = b""
        if levels:
            each = [shared(level) + b':{"lower":{' + rows + b'},"upper":{' + rows + b"}}" for level in levels]
            intervals = b',"intervals":{' + b",".join(each) + b"}"
        return (
            b'{"entity":%b,"ts":"%b","step_ms":%b,"filled":%d,"horizon":'
            + str(horizon).encode()
            + b',"channels":'
            + shared(self.channels)
            + b',"forecast":{'
            + rows
            + b"}"
            + intervals
            + b',"model":'
            + shared({"name": model_name, "version": model_version})
            + b',"produced_at":%b}'
        )

    def encode(
        self,
        entities: list[str],
        ts_ms: list[int],
        forecasts_bnh: np.ndarray,
        model_name: str,
        model_version: str,
        produced_at: str,
        steps_ms: list[int | None],
        filled: list[int],
        bounds: np.ndarray | None = None,
        levels: tuple[str, ...] = (),
    ) -> list[bytes]:
        """Forecast i: `entities[i]` at its slot `ts_ms[i]`, `forecasts_bnh[i]` (N, H) row per channel;
        `bounds[i]` (2·levels, N, H): each level's lower, then upper (None: no intervals)."""
        b, n, h = forecasts_bnh.shape
        if not b:
            return []
        dumps = orjson.dumps
        blocks = forecasts_bnh[:, None] if bounds is None else np.concatenate([forecasts_bnh[:, None], bounds], axis=1)
        k = blocks.shape[1]  # (forecast, lower, upper, ...) per forecast, each N rows
        numbers = dumps(np.ascontiguousarray(blocks).reshape(b * k * n, h), option=orjson.OPT_SERIALIZE_NUMPY)
        rows = numbers.split(b"[")[2:]  # no number holds a bracket: the B·K·N rows, each with its "]," or "]]"
        levels = tuple(levels) if bounds is not None else ()
        key = (model_name, str(model_version), h, levels)
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) > 16:
                self._templates.clear()
            template = self._templates[key] = self._template(model_name, str(model_version), h, levels)
        produced = dumps(produced_at)
        names, times = self._entity, self._ts
        if len(names) > self.CACHE:
            names.clear()
        if len(times) > self.CACHE:
            times.clear()
        out = []
        for i, entity in enumerate(entities):
            name = names.get(entity)
            if name is None:
                name = names[entity] = dumps(entity)
            ts = ts_ms[i]
            when = times.get(ts)
            if when is None:
                when = times[ts] = format_ts(ts).encode()
            step = b"null" if steps_ms[i] is None else b"%d" % steps_ms[i]
            if k == 1:
                last = rows[i * n + n - 1][:-1]  # the forecast's last row: its "]" without the "," (or "]") after
                out.append(template % (name, when, step, filled[i], *rows[i * n : i * n + n - 1], last, produced))
                continue
            own = rows[i * k * n : (i + 1) * k * n]
            for j in range(n - 1, k * n, n):  # each block's last row closes its object: no "," after its "]"
                own[j] = own[j][:-1]
            out.append(template % (name, when, step, filled[i], *own, produced))
        return out


DEAD_LETTER_PAYLOAD_BYTES = 16 * 1024


def encode_dead_letter(
    error: BadReading | str,
    topic: str,
    partition: int,
    offset: int,
    payload: bytes | None,
    max_payload: int = DEAD_LETTER_PAYLOAD_BYTES,
) -> bytes:
    """A refusal with its reason and at most `max_payload` bytes of the payload, with the payload's
    full size and SHA-256 to find the original by. Bounded: base64 grows a prefix by 4/3, JSON escapes a
    control character to 6 bytes, so a dead letter is under 6 × max_payload + 2 KiB whatever arrived."""
    raw = payload or b""
    prefix = raw[:max_payload]
    try:
        text, encoding = prefix.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as e:
        if len(prefix) < len(raw) and e.start >= len(prefix) - 3:  # the cut split a character: drop its bytes
            prefix = prefix[: e.start]
            try:
                text, encoding = prefix.decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                text, encoding = base64.b64encode(prefix).decode("ascii"), "base64"
        else:
            text, encoding = base64.b64encode(prefix).decode("ascii"), "base64"
    reason = error.reason if isinstance(error, BadReading) else "error"
    message = str(error).encode("utf-8", "backslashreplace").decode("utf-8")  # no lone surrogates
    return orjson.dumps(
        {
            "error": message if len(message) <= 1024 else message[:1024] + "…",
            "reason": reason,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "payload": text,
            "payload_encoding": encoding,
            "payload_bytes": len(raw),
            "payload_sha256": hashlib.sha256(raw).hexdigest(),
            "truncated": len(prefix) < len(raw),
        }
    )


CALIBRATION_BYTES = 1 << 20  # a calibration message larger than this is refused unread
MULTIPLIER_RANGE = (0.1, 10.0)  # the service applies a multiplier only within this range (clipped)


class BadCalibration(ValueError):
    """A calibration message the service will not apply; it keeps the intervals it has."""


@dataclass(frozen=True)
class Calibration:
    """The monitor's latest word on one version's intervals: each level's half-widths, per channel
    and horizon step, are the version's split-conformal ones times these multipliers.

    >>> cal = parse_calibration(encode_calibration("m", "3", {"0.9": {"temp": [1.5, 2.0]}}, "2026-01-01T00:00:00Z"))
    >>> cal.version, cal.scales(["temp"], horizon=2)["0.9"].tolist()
    ('3', [[1.5, 2.0]])
    """

    name: str
    version: str
    multipliers: dict[str, dict[str, list[float]]]
    updated_at: str = ""

    def scales(self, channels: list[str], horizon: int) -> dict[str, np.ndarray]:
        """{level: (N, H)} in the model's channel order; a level that does not cover every channel
        and step of this model is left out (its static widths stay)."""
        out = {}
        for level, per_channel in self.multipliers.items():
            rows = [per_channel.get(c) for c in channels]
            if all(r is not None and len(r) == horizon for r in rows):
                out[level] = np.clip(np.array(rows, dtype=np.float64), *MULTIPLIER_RANGE)
        return out


def calibration_key(name: str, version: str) -> bytes:
    """The compacted topic keeps the latest message per key: one per model version."""
    return f"{name}:{version}".encode()


def encode_calibration(
    name: str, version: str, multipliers: dict[str, dict[str, list[float]]], updated_at: str
) -> bytes:
    return orjson.dumps(
        {"name": name, "version": str(version), "multipliers": multipliers, "updated_at": updated_at},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def parse_calibration(raw: bytes | None) -> Calibration:
    """A `Calibration`, or `BadCalibration` saying why not: every multiplier a finite positive
    number; nothing else escapes."""
    if not raw:
        raise BadCalibration("empty calibration message")
    if len(raw) > CALIBRATION_BYTES:
        raise BadCalibration(f"calibration message of {len(raw)} bytes is over {CALIBRATION_BYTES}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadCalibration(f"calibration message is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadCalibration("calibration message is not a JSON object")
    name, version, levels = doc.get("name"), doc.get("version"), doc.get("multipliers")
    if not isinstance(name, str) or not isinstance(version, str | int) or isinstance(version, bool):
        raise BadCalibration("calibration message without a model name and version")
    if not isinstance(levels, dict):
        raise BadCalibration("calibration message without multipliers")
    multipliers: dict[str, dict[str, list[float]]] = {}
    for level, per_channel in levels.items():
        if not isinstance(per_channel, dict):
            raise BadCalibration(f"level {_short(level)}: not an object of channels")
        multipliers[level] = {}
        for channel, row in per_channel.items():
            ok = isinstance(row, list) and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in row
            )
            if not ok:
                raise BadCalibration(f"level {_short(level)}, channel {_short(channel)}: not positive numbers")
            multipliers[level][channel] = [float(v) for v in row]
    updated = doc.get("updated_at")
    return Calibration(name, str(version), multipliers, updated if isinstance(updated, str) else "")
