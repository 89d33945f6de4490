"""The batch decoder: `parse_reading` for a whole batch as columns, with the same answers."""

from __future__ import annotations

import msgspec
import numpy as np

from pipeline.messages.readings import (
    FLOAT32_MAX,
    MAX_TS_MS,
    YEAR_MS,
    BadReading,
    Bounds,
    Reading,
    TimePolicy,
    _is_utf8,
    parse_reading,
    parse_ts,
)


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
    is the one `parse_reading` gives (tests/pipeline/messages/test_batch.py checks the two agree on
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
