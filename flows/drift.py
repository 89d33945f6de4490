"""Drift, pure: join each forecast with the readings that later arrive, keep a rolling error per entity
and channel beside persistence's and seasonal naive's (an online skill score), and say when a retrain
is due.

A forecast made after the reading in slot s of the time grid holds H steps; the k-th step is scored
by the reading that lands in slot s + k, however its clock jitters (the grid: pipeline/timegrid.py,
the forecast's own `ts` and `step_ms`; without them, one inferred from the entity's readings).
Persistence is scored on the same steps: it would have said "the reading at s" for all of them. With a
`seasonal_period` P (the champion's, as its gate scored it), seasonal naive is too: step k would have
been the reading in slot s + 1 + (k mod P) − P, the last cycle repeated. The two
topics are read apart, so either may come first: a step whose reading arrived before the forecast (the
service working through a backlog, a replay, an accelerated stream) is scored when the forecast comes,
against the last `recent_slots` readings of its entity kept for the purpose.

Drift fires when the model's rolling MAE, in units of the champion's holdout MAE, stays above
`threshold` for `patience` consecutive scored readings of one entity, and at most once per `cooldown_s`
for that entity (another entity that drifts meanwhile still fires). An entity silent for longer than a
TTL is forgotten (`forget_idle`), so the state follows the entities that are alive.

>>> d = DriftTracker(["temp"], reference_mae=1.0, window=4, threshold=2.0, patience=2, cooldown_s=60)
>>> for h in range(3):  # forecasts of 10 for the next two steps after each reading; the truth follows
...     _ = d.on_reading("a", h, {"temp": 10.0}, now_s=h)
...     d.on_forecast("a", h, {"temp": [10.0, 10.0]})
>>> round(d.mae("a", "temp"), 2), d.drifting("a")
(0.0, False)
>>> for h in range(3, 8):  # the level moves by 5: the forecasts of 10 are off by 5
...     fired = d.on_reading("a", h, {"temp": 15.0}, now_s=h)
...     d.on_forecast("a", h, {"temp": [10.0, 10.0]})
>>> d.fired_at is not None, d.mae("a", "temp") > 2.0
(True, True)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from flows.coverage import CoverageTracker
from pipeline.timegrid import Grid, GridError, infer_grid

DRIFT_EVENT = "sensorcast.drift"  # the Prefect event the monitor emits and the retrain deployment's trigger expects


def drift_resource(model_name: str) -> str:
    """The Prefect resource id a drift event is about: one model, so one trigger per registered name."""
    return f"sensorcast.model.{model_name}"


@dataclass
class _Entity:
    grid: Grid | None = None
    times_ms: list[int] = field(default_factory=list)  # the first readings' times, until the grid is known
    # due slot → (channel, prediction, last reading, horizon step, published bounds or None, seasonal naive's)
    pending: dict[int, list[tuple[str, float, float, int, tuple | None]]] = field(default_factory=dict)
    # slot → the reading there, for the last `recent_slots` slots: a forecast that arrives after its steps'
    # readings (the service working through a backlog, a replay) is scored at once, against its own slot's
    recent: dict[int, dict[str, float]] = field(default_factory=dict)
    errors: dict[str, deque] = field(default_factory=dict)  # channel → recent |error| of the model
    naive: dict[str, deque] = field(default_factory=dict)  # channel → recent |error| of persistence
    seasonal: dict[str, deque] = field(default_factory=dict)  # channel → recent |error| of seasonal naive
    above: int = 0  # consecutive scored readings over the threshold
    fired_at: float | None = None  # when drift last fired for this entity (the cool-down is per entity)
    seen_s: float | None = None  # when its last reading or forecast arrived (the TTL's clock)


class DriftTracker:
    def __init__(
        self,
        channels: list[str],
        reference_mae: float | dict[str, float],
        window: int = 200,
        threshold: float = 2.0,
        patience: int = 20,
        cooldown_s: float = 3600.0,
        recent_slots: int = 48,
        seasonal_period: int | None = None,
    ):
        self.channels, self.seasonal_period = list(channels), seasonal_period
        self.recent_slots = max(recent_slots, seasonal_period or 0)  # seasonal naive's cycle stays at hand
        # the champion's holdout MAE, one for all channels or per channel (raw units)
        ref = reference_mae if isinstance(reference_mae, dict) else dict.fromkeys(channels, reference_mae)
        self.reference_mae = {c: max(float(ref.get(c, 1.0)), 1e-12) for c in channels}
        self.window, self.threshold, self.patience, self.cooldown_s = window, threshold, patience, cooldown_s
        self.entities: dict[str, _Entity] = {}
        self._last_values: dict[str, dict[str, float]] = {}  # entity → its latest reading: persistence's forecast
        self.fired_at: float | None = None
        self.fired_entity: str | None = None
        self.coverage: CoverageTracker | None = None  # set by the monitor: published intervals are scored too

    def _entity(self, entity: str, now_s: float | None) -> _Entity:
        e = self.entities.get(entity)
        if e is None:
            e = self.entities[entity] = _Entity()
            for c in self.channels:
                e.errors[c], e.naive[c], e.seasonal[c] = (deque(maxlen=self.window) for _ in range(3))
        if now_s is not None:
            e.seen_s = now_s
        return e

    def on_forecast(
        self,
        entity: str,
        ts: float,
        forecast: dict[str, list[float]],
        step_s: float | None = None,
        now_s: float | None = None,
        intervals: dict | None = None,
    ) -> None:
        """A forecast made after the reading at `ts` (seconds; the forecast's slot on the grid), whose
        steps are `step_s` apart: its steps wait for the readings that land in their slots. Its
        `intervals` (the wire's {level: {"lower": {ch: [H]}, "upper": ...}}) are scored by
        `self.coverage` when it is set and measures these levels and this horizon."""
        e = self._entity(entity, now_s)
        ts_ms = round(ts * 1000)
        if step_s:
            step_ms = round(step_s * 1000)
            if e.grid is None or e.grid.interval_ms != step_ms:
                e.grid = Grid(step_ms, ts_ms % step_ms)
        if e.grid is None:
            return
        base = e.grid.slot(ts_ms)
        last = e.recent.get(base) or self._last_values.get(entity, {})  # persistence: the forecast slot's reading
        horizon = len(next(iter(forecast.values()), []))
        bounds = self._bounds(intervals, forecast, horizon)
        period = self.seasonal_period
        for k in range(horizon):
            cycle = e.recent.get(base + 1 + k % period - period, {}) if period else {}
            steps = [
                (c, forecast[c][k], last.get(c, float("nan")), k, bounds[c][k] if bounds else None, cycle.get(c))
                for c in forecast
            ]
            seen = e.recent.get(base + k + 1)
            if seen is None:  # its reading is still to come
                e.pending.setdefault(base + k + 1, []).extend(steps)
            else:  # its reading came first: scored now
                self._score(e, steps, seen, e.grid.ts_of(base + k + 1))

    def _bounds(self, intervals: dict | None, forecast: dict, horizon: int) -> dict[str, list[tuple]] | None:
        """{channel: [each step's (lower, upper, lower, upper, ...) over the levels]}, or None when
        there is nothing to score (no tracker, no intervals, or levels and horizon it does not measure)."""
        cov = self.coverage
        if cov is None or not isinstance(intervals, dict) or not cov.fits(intervals, horizon):
            return None
        try:
            sides = [intervals[level][side] for level in cov.levels for side in ("lower", "upper")]
            per_channel = {c: np.array([side[c] for side in sides], dtype=np.float64) for c in forecast}
        except (KeyError, TypeError, ValueError):  # a malformed interval is not scored
            return None
        if any(a.shape != (len(sides), horizon) for a in per_channel.values()):
            return None
        return {c: [tuple(col) for col in a.T.tolist()] for c, a in per_channel.items()}

    def on_reading(self, entity: str, ts: float, values: dict[str, float], now_s: float) -> bool:
        """Score every pending step due in the slot of `ts`; returns True when this reading makes drift fire."""
        e = self._entity(entity, now_s)
        ts_ms = round(ts * 1000)
        if e.grid is None:
            e.times_ms.append(ts_ms)
            try:
                e.grid = infer_grid([e.times_ms[-16:]]) if len(e.times_ms) >= 3 else None
            except GridError:
                e.grid = None
            if e.grid is None:
                self._last_values[entity] = dict(values)
                return False
        slot = e.grid.slot(ts_ms)
        self._last_values[entity] = e.recent[slot] = dict(values)  # one copy: persistence's and the slot's
        while len(e.recent) > self.recent_slots:
            del e.recent[min(e.recent)]
        scored = self._score(e, e.pending.pop(slot, []), values, ts_ms)
        for due in [d for d in e.pending if d < slot]:  # steps whose reading never came (a gap): drop them
            del e.pending[due]
        if not scored:
            return False
        e.above = e.above + 1 if self.drifting(entity) else 0
        cooled = e.fired_at is None or now_s - e.fired_at >= self.cooldown_s
        if e.above >= self.patience and cooled:
            e.fired_at = self.fired_at = now_s
            self.fired_entity = entity
            e.above = 0
            return True
        return False

    def _score(self, e: _Entity, steps: list, values: dict[str, float], at_ms: int) -> bool:
        """The forecast `steps` due in one slot, against its reading `values` (stamped `at_ms`); True
        if any was scored. The intervals adapt once per grid step of stream time, by the outcomes' time."""
        if self.coverage is not None and steps:
            self.coverage.advance(at_ms, e.grid.interval_ms)
        scored = False
        for channel, pred, last, k, bounds, cycle in steps:
            if channel in values:
                e.errors[channel].append(abs(values[channel] - pred))
                e.naive[channel].append(abs(values[channel] - last))
                if cycle is not None:  # the slot a cycle back was read: seasonal naive is scored on this step
                    e.seasonal[channel].append(abs(values[channel] - cycle))
                scored = True
                if bounds is not None and self.coverage is not None:
                    self.coverage.observe(k, channel, values[channel], bounds)
        return scored

    def forget_idle(self, now_s: float, ttl_s: float) -> list[str]:
        """Forget the entities with no reading or forecast for `ttl_s` seconds; returns their names."""
        gone = [name for name, e in self.entities.items() if e.seen_s is not None and now_s - e.seen_s > ttl_s]
        for name in gone:
            del self.entities[name]
            self._last_values.pop(name, None)
        return gone

    def mae(self, entity: str, channel: str, naive: bool = False, of: str = "model") -> float:
        """Rolling MAE of the model, of persistence (`naive`, or `of="persistence"`) or of seasonal naive
        (`of="seasonal"`), in units of the champion's holdout MAE (0.0: nothing scored)."""
        e = self.entities.get(entity)
        of = "persistence" if naive else of
        kept = {"model": e.errors, "persistence": e.naive, "seasonal": e.seasonal}[of] if e else {}
        errs = kept.get(channel)
        return sum(errs) / len(errs) / self.reference_mae[channel] if errs else 0.0

    def skill(self, entity: str, channel: str) -> float | None:
        """1 − MAE / persistence's MAE on the same steps: above 0 the model is worth serving."""
        naive = self.mae(entity, channel, naive=True)
        return None if naive == 0 else 1 - self.mae(entity, channel) / naive

    def drifting(self, entity: str) -> bool:
        return any(self.mae(entity, c) > self.threshold for c in self.channels)

    def summary(self) -> dict[str, float]:
        """Per channel, over the entities scored so far: the rolling MAE of the model, of persistence and
        (with a period) of seasonal naive, in champion-holdout units, and the model's skill over
        persistence; metric names as MLflow logs them."""
        out: dict[str, float] = {}
        for c in self.channels:
            scored = [name for name, e in self.entities.items() if e.errors[c]]
            if not scored:
                continue
            out[f"mae_ratio_{c}"] = sum(self.mae(n, c) for n in scored) / len(scored)
            out[f"persistence_mae_ratio_{c}"] = sum(self.mae(n, c, naive=True) for n in scored) / len(scored)
            if out[f"persistence_mae_ratio_{c}"] > 0:
                out[f"skill_{c}"] = 1 - out[f"mae_ratio_{c}"] / out[f"persistence_mae_ratio_{c}"]
            seasonal = [n for n in scored if self.entities[n].seasonal[c]]
            if seasonal:
                out[f"seasonal_mae_ratio_{c}"] = sum(self.mae(n, c, of="seasonal") for n in seasonal) / len(seasonal)
        if out:
            out["entities_scored"] = float(sum(1 for e in self.entities.values() if any(e.errors.values())))
        return out
