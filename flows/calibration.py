"""The champion's published intervals, kept calibrated on the stream: the monitor's part that scores
them (a `flows.coverage.CoverageTracker` per champion, fed by the drift tracker as readings arrive),
starts each champion where the last adaptation left off, and publishes the multipliers to the
compacted calibration topic, keyed by version, where the service picks them up.

Where a champion's adaptation starts: its own last publication (a restarted monitor); else the
outgoing champion's multipliers, when its intervals had the same levels and channels (what one
version's holdout under- or over-covers is as true of the next retrain's, and a daily promotion that
started from the static widths would undo the adaptation daily); after a horizon change, step by
step, the steps past the old horizon taking its last step's; else its static widths.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from flows.coverage import CoverageTracker
from pipeline.messages import Calibration, calibration_key, encode_calibration, format_ts
from pipeline.settings import Settings

log = logging.getLogger("sensorcast.monitor")


class CoverageGauges:
    """The monitor's interval gauges: coverage and mean width per level, channel and horizon step,
    over the rolling window and since start, and the multiplier the service is told to apply."""

    def __init__(self, registry=None):
        from prometheus_client import REGISTRY, Gauge

        labels, registry = ["level", "channel", "step", "window"], registry or REGISTRY
        self.coverage = Gauge(
            "sensorcast_interval_coverage", "share of readings inside the published interval", labels, registry=registry
        )
        self.width = Gauge(
            "sensorcast_interval_width", "mean width of the published interval (raw units)", labels, registry=registry
        )
        self.multiplier = Gauge(
            "sensorcast_interval_multiplier",
            "the adapted multiplier of the version's split-conformal half-width",
            labels[:3],
            registry=registry,
        )

    def export(self, cov: CoverageTracker) -> None:
        for window, rolling in (("rolling", True), ("total", False)):
            for gauge, values in ((self.coverage, cov.coverage(rolling)), (self.width, cov.width(rolling))):
                for level, grid in values.items():
                    for (k, n), v in np.ndenumerate(grid):
                        if np.isfinite(v):
                            gauge.labels(level, cov.channels[n], str(k + 1), window).set(float(v))
        for level, grid in cov.multipliers().items():
            for (k, n), v in np.ndenumerate(grid):
                self.multiplier.labels(level, cov.channels[n], str(k + 1)).set(float(v))

    def clear(self) -> None:
        for gauge in (self.coverage, self.width, self.multiplier):
            gauge.clear()


class IntervalCalibrator:
    """One champion's intervals at a time: `track` at each of its forecasts with intervals (the tracker
    to score them with), `published` for each calibration on the topic, `calibrate` every period, and
    `new_champion` at a promotion."""

    REBUILD_AFTER = 20  # champion forecasts in a row of another shape than the tracker's: it was locked wrongly

    def __init__(
        self,
        settings: Settings,
        channels: list[str],
        publish: Callable[[bytes, bytes], None] | None = None,
        gauges: CoverageGauges | None = None,
        window: int = 1000,
        version: str | None = None,
    ):
        self.settings, self.channels, self.publish, self.gauges, self.window = (
            settings,
            channels,
            publish,
            gauges,
            window,
        )
        self.version = version
        self.coverage: CoverageTracker | None = None  # the champion's, once its first forecast with intervals came
        self.calibrations: dict[str, Calibration] = {}  # version → its latest calibration on the topic
        self._outgoing: CoverageTracker | None = None  # the previous champion's, as adapted
        self._published_tick: tuple = (None, 0)  # (tracker, its ticks) at the last publication
        self._misfits = 0  # champion forecasts in a row that the tracker does not measure

    def new_champion(self, version: str, channels: list[str]) -> None:
        """Measure `version` from its next forecast with intervals on, from where this one got to."""
        if self.coverage is not None and self.coverage.theta.any():  # one that carries an adaptation
            self._outgoing = self.coverage
        self.version, self.channels, self.coverage = version, channels, None
        if self.gauges is not None:
            self.gauges.clear()

    def track(self, levels: list[str], horizon: int) -> CoverageTracker | None:
        """The tracker that scores a champion forecast with these intervals (None: one it does not
        measure). A tracker that has measured none of the last REBUILD_AFTER champion forecasts was
        started on a shape they do not have, and starts again."""
        cov = self.coverage
        if cov is None:
            return self.start(levels, horizon)
        if cov.fits(levels, horizon):
            self._misfits = 0
            return cov
        self._misfits += 1
        if self._misfits < self.REBUILD_AFTER:
            return cov
        log.warning("the champion's intervals are %s over %d steps: coverage restarts on them", levels, horizon)
        self._misfits = 0
        return self.start(levels, horizon)

    def start(self, levels: list[str], horizon: int) -> CoverageTracker:
        """Score the champion's intervals from now on, starting where the last adaptation left off."""
        cov = CoverageTracker(self.channels, levels, horizon, self.window, self.settings.calibration_gamma)
        self.coverage = cov
        self._resume(cov)
        return cov

    def published(self, cal: Calibration) -> None:
        """A calibration on the topic (this monitor's own, or a predecessor's)."""
        if cal.name != self.settings.model_name:
            return
        self.calibrations[cal.version] = cal
        if cal.version == self.version and self.coverage is not None:
            self._resume(self.coverage)

    def _resume(self, cov: CoverageTracker) -> None:
        if cov.ticks:
            return
        cal = self.calibrations.get(str(self.version))
        if cal is not None:
            scales = cal.scales(cov.channels, cov.horizon)  # (N, H) per level
            for i, level in enumerate(cov.levels):
                if level in scales:
                    cov.theta[i] = np.log(scales[level].T)
            log.info("v%s's intervals resume from the multipliers published %s", self.version, cal.updated_at)
            return
        old = self._outgoing
        if old is not None and old.theta.any() and (old.levels, old.channels) == (cov.levels, cov.channels):
            common = min(old.horizon, cov.horizon)  # another horizon: step by step, the later steps as its last
            cov.theta[:, :common] = old.theta[:, :common]
            cov.theta[:, common:] = old.theta[:, common - 1 : common]
            said = "" if old.horizon == cov.horizon else f" (its {old.horizon} steps carried to {cov.horizon})"
            log.info("v%s's intervals start from the outgoing champion's multipliers%s", self.version, said)
            self._publish(cov)  # at once: the service applies them from its next batch

    def calibrate(self, now_ms: int | None = None) -> bool:
        """The multipliers as adapted since the last publication (`CoverageTracker.advance`: once per
        grid step of stream time) go to the calibration topic and the gauges. False when they did not
        move: nothing is sent."""
        cov = self.coverage
        if cov is None or (cov, cov.ticks) == self._published_tick or not cov.ticks:
            return False
        self._publish(cov, now_ms)
        return True

    def _publish(self, cov: CoverageTracker, now_ms: int | None = None) -> None:
        self._published_tick = (cov, cov.ticks)
        if self.gauges is not None:
            self.gauges.export(cov)
        if self.publish is None or self.version is None:  # multipliers are for one version
            return
        name, version = self.settings.model_name, str(self.version)
        multipliers = {
            level: {c: m[:, n].round(6).tolist() for n, c in enumerate(cov.channels)}
            for level, m in cov.multipliers().items()
        }
        updated = format_ts(now_ms if now_ms is not None else int(time.time() * 1000))
        try:
            self.publish(calibration_key(name, version), encode_calibration(name, version, multipliers, updated))
        except Exception as e:  # the service keeps what it has; the next period tries again
            log.error("could not publish v%s's calibration (%s)", version, e)
