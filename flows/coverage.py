"""Interval coverage on the stream, pure: each published interval meets the reading that lands in its
slot (the drift tracker joins them), and per level, horizon step and channel this keeps whether the
reading fell inside (coverage, since start and over the last `window` outcomes) and how wide the
interval was; and it adapts the intervals from those outcomes.

Adaptive conformal inference (Gibbs and Candès, 2021), on the interval's scale: the service
publishes its version's split-conformal half-width times a multiplier exp(θ), one θ per level, step
and channel. Every `adapt()` (a tick), θ += γ·(miss rate − α) over the outcomes the tick brought,
α = 1 − level. A tick of misses widens the interval, a tick of hits narrows it; whatever the errors
do, the average miss rate over T ticks is within (|θ_T| + |θ_0|)/(γ·T) of α (while θ stays inside the
multipliers' range, 0.1–10). A tick, not an outcome, is the step: a thousand entities missing at once
move θ by γ, not by a thousand γ. A tick is one grid step of stream time (`advance`), not a period of
the wall clock: a replay, a backlog or an accelerated stream adapts as often per hour of readings as
a live one (the ticks of a publication period would starve it: one step for a day streamed in a
second). The misses are judged against the interval the service really published, so what it applied
is what is corrected.

>>> cov = CoverageTracker(["temp"], ["0.9"], horizon=1, gamma=0.5)
>>> cov.observe(0, "temp", 30.0, (19.0, 21.0))  # 30 is outside 19..21: a miss
>>> cov.adapt(); round(float(cov.multipliers()["0.9"][0, 0]), 3)  # θ = 0.5·(1 − 0.1): wider
True
1.568
>>> float(cov.coverage()["0.9"][0, 0]), float(cov.width()["0.9"][0, 0])
(0.0, 2.0)
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.messages import MULTIPLIER_RANGE  # a multiplier stays within it: one bad stretch never blows up


def well_formed_intervals(intervals: object, forecast: dict[str, list], levels: list[str]) -> bool:
    """Whether a forecast's `intervals` are ones a tracker may measure: only the `levels` this system
    calibrates (the settings' own: a level "0.5" or "abc" on the topic is junk), each with a lower and an
    upper row of finite numbers per forecast channel, every row as long as the forecast's, and at least
    one step. Anything else would lock a tracker to a shape no real forecast has, or raise inside it.

    >>> f = {"temp": [20.0, 21.0]}
    >>> well_formed_intervals({"0.9": {"lower": {"temp": [19, 20]}, "upper": {"temp": [21, 22]}}}, f, ["0.9"])
    True
    >>> well_formed_intervals({"abc": {"lower": {"temp": [19, 20]}, "upper": {"temp": [21, 22]}}}, f, ["0.9"])
    False
    """
    if not isinstance(intervals, dict) or not intervals or not forecast:
        return False
    horizon = len(next(iter(forecast.values())))
    if horizon < 1 or not set(intervals) <= set(levels):
        return False
    for bands in intervals.values():
        if not isinstance(bands, dict) or set(bands) != {"lower", "upper"}:
            return False
        for side in bands.values():
            if not isinstance(side, dict) or set(side) != set(forecast):
                return False
            for row in side.values():
                if not isinstance(row, list) or len(row) != horizon:
                    return False
                if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in row):
                    return False
    return True


class CoverageTracker:
    def __init__(
        self,
        channels: list[str],
        levels: list[str],
        horizon: int,
        window: int = 500,
        gamma: float = 0.05,
    ):
        self.channels, self.levels, self.horizon = list(channels), list(levels), horizon
        self.window, self.gamma = window, gamma
        self._col = {c: i for i, c in enumerate(self.channels)}
        self.alpha = np.array([1 - float(level) for level in self.levels])[:, None, None]  # (L, 1, 1)
        cells = (len(self.levels), horizon, len(self.channels))  # (L, H, N)
        self.hits, self.seen = np.zeros(cells), np.zeros(cells[1:])  # since start
        self.width_sum = np.zeros(cells)
        self._ring_miss = np.full((window, *cells), np.nan)  # the last `window` outcomes of each (step, channel)
        self._ring_width = np.full((window, *cells), np.nan)
        self._pos = np.zeros(cells[1:], dtype=np.int64)
        self._tick_miss, self._tick_seen = np.zeros(cells), np.zeros(cells[1:])
        self.theta = np.zeros(cells)  # log-multipliers; a restarted monitor sets its published ones
        self.ticks = 0
        self._tick_from_ms: int | None = None  # the stream time the open tick started at

    def advance(self, ts_ms: int, step_ms: int) -> bool:
        """Stream time is at `ts_ms` (a reading's, on a grid of `step_ms`): once that is a step or more
        past the open tick's start, the tick closes (one `adapt`, over the outcomes before this
        reading's) and the next starts here. True when it adapted. Earlier times (another entity's
        phase, a late reading) close nothing.

        >>> cov = CoverageTracker(["temp"], ["0.9"], horizon=1)
        >>> [cov.advance(t * 60_000, 3_600_000) for t in (0, 5, 35, 58)]  # three phases in one hour
        [False, False, False, False]
        >>> cov.observe(0, "temp", 30.0, (19.0, 21.0)); cov.advance(65 * 60_000, 3_600_000), cov.ticks
        (True, 1)
        """
        if self._tick_from_ms is None:
            self._tick_from_ms = ts_ms
        if ts_ms < self._tick_from_ms + step_ms:
            return False
        self._tick_from_ms = ts_ms
        return self.adapt()

    def fits(self, levels, horizon: int) -> bool:
        """Whether a forecast with these levels and horizon is one this tracker measures."""
        return list(levels) == self.levels and horizon == self.horizon

    def observe(self, step: int, channel: str, actual: float, bounds: tuple[float, ...]) -> None:
        """The reading `actual` for horizon step `step` (0-based) of `channel` met its forecast's
        `bounds`: each level's (lower, upper) in turn."""
        n = self._col.get(channel)
        if n is None or not 0 <= step < self.horizon or not math.isfinite(actual):
            return
        lower, upper = np.asarray(bounds[0::2], dtype=np.float64), np.asarray(bounds[1::2], dtype=np.float64)
        miss = ((actual < lower) | (actual > upper)).astype(np.float64)
        self._add(np.array([step]), np.array([n]), miss[:, None], (upper - lower)[:, None])

    def observe_cells(self, miss: np.ndarray, width: np.ndarray, seen: np.ndarray) -> None:
        """Many outcomes at once, at most one per (step, channel): `miss` and `width` (L, H, N), for
        the cells where `seen` (H, N) is True."""
        k, n = np.nonzero(seen)
        self._add(k, n, miss[:, k, n].astype(np.float64), width[:, k, n])

    def _add(self, k: np.ndarray, n: np.ndarray, miss: np.ndarray, width: np.ndarray) -> None:
        """Outcomes of the distinct cells (k[i], n[i]): `miss` and `width` (L, cells)."""
        self.hits[:, k, n] += 1 - miss
        self.width_sum[:, k, n] += width
        self.seen[k, n] += 1
        at = self._pos[k, n] % self.window
        self._ring_miss[at, :, k, n], self._ring_width[at, :, k, n] = miss.T, width.T
        self._pos[k, n] += 1
        self._tick_miss[:, k, n] += miss
        self._tick_seen[k, n] += 1

    def adapt(self) -> bool:
        """One ACI step from the outcomes since the last; False (and nothing moves) when there were none."""
        seen = self._tick_seen > 0
        if not seen.any():
            return False
        rate = np.divide(self._tick_miss, self._tick_seen, out=np.zeros_like(self._tick_miss), where=seen)
        self.theta += self.gamma * (rate - self.alpha) * seen
        self.theta = np.clip(self.theta, *np.log(MULTIPLIER_RANGE))
        self._tick_miss[:], self._tick_seen[:] = 0, 0
        self.ticks += 1
        return True

    def multipliers(self) -> dict[str, np.ndarray]:
        """{level: (H, N)} what the service multiplies its version's half-widths by."""
        return {level: np.exp(self.theta[i]) for i, level in enumerate(self.levels)}

    def coverage(self, rolling: bool = False) -> dict[str, np.ndarray]:
        """{level: (H, N)} the share of readings inside, since start or over the last `window`
        outcomes of each cell (NaN: none yet)."""
        if rolling:
            inside = 1 - self._ring_mean(self._ring_miss)
        else:
            inside = np.divide(self.hits, self.seen, out=self._nan(), where=self.seen > 0)
        return {level: inside[i] for i, level in enumerate(self.levels)}

    def width(self, rolling: bool = False) -> dict[str, np.ndarray]:
        """{level: (H, N)} the mean width (upper − lower, raw units) of the intervals scored."""
        if rolling:
            mean = self._ring_mean(self._ring_width)
        else:
            mean = np.divide(self.width_sum, self.seen, out=self._nan(), where=self.seen > 0)
        return {level: mean[i] for i, level in enumerate(self.levels)}

    def summary(self) -> dict[str, float]:
        """Per level and channel, over the steps: coverage since start and rolling, and the mean
        width; metric names as MLflow logs them ("coverage_90_temp", "coverage_rolling_90_temp",
        "width_90_temp")."""
        out: dict[str, float] = {}
        seen = self.seen.sum(axis=0)  # (N,)
        rolling_by_level = self.coverage(rolling=True)  # one pass over the rings for every level
        for i, level in enumerate(self.levels):
            pct = f"{float(level) * 100:g}".replace(".", "_")
            rolling = rolling_by_level[level]
            for n, c in enumerate(self.channels):
                if not seen[n]:
                    continue
                out[f"coverage_{pct}_{c}"] = float(self.hits[i, :, n].sum() / seen[n])
                out[f"coverage_rolling_{pct}_{c}"] = float(np.nanmean(rolling[self.seen[:, n] > 0, n]))
                out[f"width_{pct}_{c}"] = float(self.width_sum[i, :, n].sum() / seen[n])
        return out

    def _ring_mean(self, ring: np.ndarray) -> np.ndarray:
        held = ~np.isnan(ring)
        return np.divide(np.where(held, ring, 0).sum(axis=0), held.sum(axis=0), out=self._nan(), where=held.any(axis=0))

    def _nan(self) -> np.ndarray:
        return np.full(self.hits.shape, np.nan)
