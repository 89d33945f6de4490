"""An entity's window as one changelog record, and back, pure.

A restart used to rebuild every window by reading the input topic back over twice the model's window
(about 200 records per entity at L = 96). The service now writes each changed entity's window to a
compacted changelog topic at every commit point (pipeline/changelog.py), so a restart reads one
record per entity. This module is the record: the window's values oldest first, which of them were
filled, and the bookkeeping `EntityWindows` keeps for the entity (its slot on the grid, the grid it
learned, the channels running short, the refusals a learned grid is on trial for), plus the input
position the state covers.

Binary, not JSON: a window at L = 96 and 7 channels is 2.7 KB of float32 and is written per commit
point for every entity that changed, so its encoding is on the hot path.

>>> import numpy as np
>>> s = EntityState(lookback=2, channels=1, values=np.array([[1.0], [2.0]], np.float32), count=2, last_slot=7,
...                 last_ts=25_200_000, position=42)
>>> back = decode_state(encode_state(s))
>>> back.values.ravel().tolist(), back.count, back.last_slot, back.position
([1.0, 2.0], 2, 7, 42)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"SCW1"  # sensorcast window, format 1: a record of another format is not read as this one
_HEAD = struct.Struct("<4sHHqqqqqqiiii")  # magic, L, C, count, last_slot, last_ts, step, anchor, position,
# filled_now, taken_since, learning times, refused times (-1: None)


class BadState(ValueError):
    """A changelog record that is not a window of this format and shape: the restore falls back to the replay."""


@dataclass
class EntityState:
    """What `EntityWindows` holds for one entity, its window oldest first (rows before `count` are padding)."""

    lookback: int
    channels: int
    values: np.ndarray  # (L, C) float32, oldest first
    count: int = 0  # slots held, up to L
    last_slot: int = 0
    last_ts: int = 0
    position: int = 0  # the input partition's next offset when this was taken: the state covers what is before
    fills: np.ndarray = field(default=None)  # (L,) int32, values filled (not measured) per slot
    missing_run: np.ndarray = field(default=None)  # (C,) int32, readings running without each channel
    filled_now: int = 0
    step: int = 0  # the grid the entity learned (0: none, or the model's shared grid)
    anchor: int = 0
    learning: list[int] | None = None  # times seen while its grid is being learned (None: not learning)
    refused: list[int] | None = None  # times refused or reset while a learned grid is on trial (None: no trial)
    taken_since: int = 0  # readings taken since the last refusal, while on trial

    def __post_init__(self):
        if self.fills is None:
            self.fills = np.zeros(self.lookback, dtype=np.int32)
        if self.missing_run is None:
            self.missing_run = np.zeros(self.channels, dtype=np.int32)


def encode_state(s: EntityState) -> bytes:
    head = _HEAD.pack(
        MAGIC, s.lookback, s.channels, s.count, s.last_slot, s.last_ts, s.step, s.anchor, s.position,
        s.filled_now, s.taken_since, _length(s.learning), _length(s.refused),
    )  # fmt: skip
    return b"".join(
        (
            head,
            np.ascontiguousarray(s.values, dtype="<f4").tobytes(),
            np.ascontiguousarray(s.fills, dtype="<i4").tobytes(),
            np.ascontiguousarray(s.missing_run, dtype="<i4").tobytes(),
            np.asarray(s.learning or [], dtype="<i8").tobytes(),
            np.asarray(sorted(s.refused or []), dtype="<i8").tobytes(),
        )
    )


def state_bytes(lookback: int, channels: int, times: int = 16) -> int:
    """A window record's size (with up to `times` learning or trial timestamps): it must fit one message."""
    return _HEAD.size + lookback * channels * 4 + lookback * 4 + channels * 4 + times * 8


def _length(times: list[int] | None) -> int:
    return -1 if times is None else len(times)


def decode_state(data: bytes | None) -> EntityState:
    """The state in a changelog record; BadState for anything else (a tombstone, another format, a
    truncated record)."""
    if not data or len(data) < _HEAD.size or data[:4] != MAGIC:
        raise BadState("not a window record of this format")
    magic, L, C, count, last_slot, last_ts, step, anchor, position, filled_now, taken, n_learn, n_ref = (
        _HEAD.unpack_from(data)
    )
    sizes = (L * C * 4, L * 4, C * 4, max(n_learn, 0) * 8, max(n_ref, 0) * 8)
    if len(data) != _HEAD.size + sum(sizes) or not 0 <= count <= L:
        raise BadState(f"a window record of {len(data)} bytes does not hold L={L}, C={C}")
    at, parts = _HEAD.size, []
    for size in sizes:
        parts.append(data[at : at + size])
        at += size
    values, fills, missing, learning, refused = parts
    return EntityState(
        lookback=L,
        channels=C,
        values=np.frombuffer(values, dtype="<f4").reshape(L, C).astype(np.float32),
        count=count,
        last_slot=last_slot,
        last_ts=last_ts,
        position=position,
        fills=np.frombuffer(fills, dtype="<i4").astype(np.int32),
        missing_run=np.frombuffer(missing, dtype="<i4").astype(np.int32),
        filled_now=filled_now,
        step=step,
        anchor=anchor,
        learning=np.frombuffer(learning, dtype="<i8").tolist() if n_learn >= 0 else None,
        refused=np.frombuffer(refused, dtype="<i8").tolist() if n_ref >= 0 else None,
        taken_since=taken,
    )
