"""One time grid for serving, training and monitoring, pure.

A model is trained at a cadence (`interval_ms`) on a grid (`anchor_ms`, a phase within the
interval). Both are facts of its training data: `infer_grid` reads them off the readings, the retrain
flow stores them with the version, and every place that handles time (the service's windows, the
retrain flow's alignment, the monitor's join of forecasts with readings) puts a reading in its
slot with `Grid.slot`: round((ts - anchor) / interval). What the model saw in training is then what
it sees in serving, and a jittered clock, a re-send or a lost reading never moves the cadence.

>>> g = Grid(interval_ms=3_600_000, anchor_ms=0)
>>> g.slot(7_200_000 + 600_000), g.slot(7_200_000 - 900_000)  # ±10 and ±15 min of jitter: slot 2
(2, 2)
>>> infer_grid([[0, 3_590_000, 7_210_000, 7_211_000, 10_800_000]]).interval_ms  # a re-send 1 s later
3600000
>>> infer_grid([[h * 3_600_000 + d for h in range(6) for d in (0, 1000)]]).interval_ms  # every one re-sent
3600000
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

# Cadences sensors are set to: an inferred interval within 1% of one of these is taken as it
NICE_INTERVALS_MS = tuple(
    s * 1000
    for s in (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
)


class GridError(ValueError):
    """Too few readings, or no regular cadence, to tell a grid from."""


@dataclass(frozen=True, slots=True)
class Grid:
    interval_ms: int  # the cadence: one slot per interval
    anchor_ms: int = 0  # where slots fall, in [0, interval): slot k is at anchor + k·interval
    tolerance: float = 0.5  # a reading within this many intervals of its slot is that slot's value

    def __post_init__(self):
        if self.interval_ms <= 0:
            raise GridError(f"a grid needs a positive interval, got {self.interval_ms} ms")

    def slot(self, ts_ms: int) -> int:
        """The slot a reading at `ts_ms` belongs to (integer arithmetic: exact for any epoch ms; half an
        interval rounds up)."""
        return (ts_ms - self.anchor_ms + self.interval_ms // 2) // self.interval_ms

    def slots(self, ts_ms: np.ndarray) -> np.ndarray:
        """`slot` of every element of an int64 array, in one pass."""
        return (ts_ms - self.anchor_ms + self.interval_ms // 2) // self.interval_ms

    def ts_of(self, slot: int) -> int:
        """The time on the grid of `slot`."""
        return self.anchor_ms + slot * self.interval_ms

    def off_grid(self, ts_ms: int) -> bool:
        """Whether `ts_ms` is further than the tolerance from its slot (never, at the default half)."""
        return abs(ts_ms - self.ts_of(self.slot(ts_ms))) > self.tolerance * self.interval_ms

    def to_dict(self) -> dict:
        return {"interval_ms": int(self.interval_ms), "anchor_ms": int(self.anchor_ms)}

    @classmethod
    def from_dict(cls, doc: dict | None, tolerance: float = 0.5) -> Grid | None:
        if not doc or not doc.get("interval_ms"):
            return None
        return cls(int(doc["interval_ms"]), int(doc.get("anchor_ms", 0)) % int(doc["interval_ms"]), tolerance)


def _ints(times: Iterable[int]) -> np.ndarray:
    """Epoch ms as an int64 array, from an array (no copy), a list or any iterable."""
    return np.asarray(times if isinstance(times, np.ndarray | list | tuple) else list(times), dtype=np.int64)


def infer_interval(series: Iterable[Iterable[int]]) -> int:
    """The cadence of readings in several series (one per entity): robust to re-sends, jitter and gaps.

    First a rough step, the median of every entity's typical gap: the median of its gaps with the
    re-sends left out (gaps under a quarter of its upper quartile gap), so a stream where every
    reading is re-sent a second later still steps by the hour, not by a second or half an hour; a
    per-entity figure keeps one chatty entity from outvoting the rest. Then refined
    over whole runs: each gap counts round(gap / rough) steps, and the interval is the least-squares
    slope of every reading's time over its step (one intercept per entity), so the jitter of every
    reading averages out, not only that of a run's two ends. Within 1% of a common cadence
    (1 s … 1 day) it is snapped to it."""
    arrays = [np.unique(_ints(s)) for s in series]
    medians = [_typical_gap(a) for a in arrays if len(a) >= 3]
    if not medians:
        raise GridError("at least one entity needs 3 readings at distinct times to tell its cadence")
    rough = float(np.median(medians))
    if rough <= 0:
        raise GridError("the readings hold no time step")
    interval = rough
    for _ in range(3):  # a better step counts the gaps better: a 1.5-step gap is one step or two
        interval = _slope(arrays, interval) or interval
    return snap(interval)


def _typical_gap(a: np.ndarray) -> float:
    """An entity's usual gap between distinct readings: the median of its gaps, re-sends left out."""
    gaps = np.diff(a)
    return float(np.median(gaps[gaps >= 0.25 * np.quantile(gaps, 0.75)]))


def _slope(arrays: list[np.ndarray], step_ms: float) -> float | None:
    """The least-squares time per step over every entity's readings (one intercept per entity),
    each gap counting round(gap / step_ms) steps: a re-send shares its predecessor's step."""
    num = den = 0.0
    for a in arrays:
        if len(a) < 2:
            continue
        steps = np.concatenate([[0.0], np.cumsum(np.rint(np.diff(a) / step_ms))])
        t, k = (a - a[0]).astype(np.float64), steps - steps.mean()
        num += float(((t - t.mean()) * k).sum())
        den += float((k * k).sum())
    return num / den if den else None


def snap(interval_ms: float) -> int:
    """An interval within 1% of a common cadence (NICE_INTERVALS_MS) as that cadence, else rounded."""
    for nice in NICE_INTERVALS_MS:
        if abs(interval_ms - nice) <= 0.01 * nice:
            return nice
    return max(1, int(round(interval_ms)))


def infer_anchor(series: Iterable[Iterable[int]], interval_ms: int) -> int:
    """The phase of the readings within the interval: a circular mean, so phases either side of
    zero (a clock a minute early, another a minute late) average to zero, not to half an interval;
    rounded to a sixtieth of the interval."""
    angles = np.concatenate([_ints(s) % interval_ms for s in series] or [np.zeros(0)])
    if not angles.size:
        return 0
    theta = angles.astype(np.float64) * (2 * math.pi / interval_ms)
    mean = math.atan2(float(np.sin(theta).mean()), float(np.cos(theta).mean()))
    # on a round mark, a sixtieth of the interval (the minute of an hour): jittered clocks leave the
    # mean a few hundred ms off, and a forecast for 09:59:59.549 helps nobody
    unit = interval_ms // 60 if interval_ms % 60 == 0 else 1
    return int(round(mean / (2 * math.pi) * interval_ms / unit)) * unit % interval_ms


def infer_grid(series: Iterable[Iterable[int]], tolerance: float = 0.5) -> Grid:
    """The grid of readings in several series (epoch ms, one series per entity)."""
    series = [_ints(s) for s in series]
    interval = infer_interval(series)
    return Grid(interval, infer_anchor(series, interval), tolerance)


def phase_near(seen: list[int], interval_ms: int, preferred_ms: int | None) -> int:
    """An entity's phase on a given interval: the preferred one (the model's) when its readings fall
    within a quarter interval of it (jittered clocks keep the grid the model was trained on), else
    the circular mean of its first readings (a device reporting at :35 on a model trained at :00).

    >>> hour = 3_600_000
    >>> phase_near([10 * 60_000, hour - 5 * 60_000], hour, 0), phase_near([35 * 60_000], hour, 0) // 60_000
    (0, 35)
    """
    own = infer_anchor([seen], interval_ms)
    if preferred_ms is None:
        return own
    off = (own - preferred_ms) % interval_ms
    return preferred_ms % interval_ms if min(off, interval_ms - off) <= interval_ms // 4 else own


def learned_interval(times: list[int]) -> int | None:
    """The cadence an entity's first readings show, on the safe side: the smallest step that is not a
    re-send (gaps an order of magnitude below the rest). Too small a cadence fills slots forward
    between readings; too large would put distinct readings in one slot and refuse them."""
    steps = np.sort(np.diff(np.unique(np.asarray(times, dtype=np.int64))))
    if len(steps) >= 2:
        jumps = steps[1:] / np.maximum(steps[:-1], 1)
        if jumps.max() >= 10:  # two kinds of gap an order of magnitude apart: the small ones are re-sends
            steps = steps[int(jumps.argmax()) + 1 :]
    if len(steps) < 2:  # too few steps yet (or re-sends among them): wait for more
        return None
    return snap(int(steps.min()))
