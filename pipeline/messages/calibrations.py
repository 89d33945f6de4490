"""Calibrations on the compacted topic: the monitor's multipliers of a version's interval half-widths."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import orjson

from pipeline.messages.readings import _short

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
