"""Interval coverage and its online adaptation, pure: streams whose correct interval is known."""

from __future__ import annotations

import numpy as np

from flows.coverage import CoverageTracker
from flows.drift import DriftTracker

Z90 = 1.6449  # N(0, 1): 90% of the errors lie within ±1.6449


def run(static: float, ticks: int = 1500, entities: int = 20, sigma: float = 1.0, seed: int = 0) -> CoverageTracker:
    """Each tick every entity's reading meets the interval the service published: the forecast (the
    true mean) ± the static half-width times the multiplier the monitor last sent."""
    rng = np.random.default_rng(seed)
    cov = CoverageTracker(["temp"], ["0.9"], horizon=1, window=2000, gamma=0.05)
    for _ in range(ticks):
        half = static * cov.multipliers()["0.9"][0, 0]
        for error in rng.normal(0, sigma, entities):
            cov.observe(0, "temp", float(error), (-half, half))
        cov.adapt()
    return cov


def test_too_narrow_static_intervals_are_widened_to_the_known_correct_width() -> None:
    cov = run(static=0.5)  # the training holdout said ±0.5; the noise needs ±1.645
    assert abs(cov.coverage()["0.9"][0, 0] - 0.9) < 0.02  # over the whole run
    assert abs(cov.coverage(rolling=True)["0.9"][0, 0] - 0.9) < 0.03  # and lately
    assert abs(0.5 * cov.multipliers()["0.9"][0, 0] - Z90) < 0.25 * Z90


def test_correct_static_intervals_stay_put_and_too_wide_ones_narrow() -> None:
    right, wide = run(static=Z90), run(static=6.0, seed=1)
    assert abs(right.coverage()["0.9"][0, 0] - 0.9) < 0.02
    assert 0.75 < right.multipliers()["0.9"][0, 0] < 1.33
    assert abs(wide.coverage()["0.9"][0, 0] - 0.9) < 0.03 and wide.width(rolling=True)["0.9"][0, 0] < 2 * 2.5


def test_a_level_shift_is_missed_then_covered_again_within_a_declared_number_of_ticks() -> None:
    rng = np.random.default_rng(2)
    cov = CoverageTracker(["temp"], ["0.9"], horizon=1, window=500, gamma=0.05)  # 50 ticks of outcomes
    rolling = []
    for tick in range(800):
        shift = 2.0 if tick >= 400 else 0.0  # the readings move by 2σ; the forecasts do not
        half = Z90 * cov.multipliers()["0.9"][0, 0]
        for error in rng.normal(shift, 1.0, 10):
            cov.observe(0, "temp", float(error), (-half, half))
        cov.adapt()
        rolling.append(cov.coverage(rolling=True)["0.9"][0, 0])
    assert all(abs(r - 0.9) < 0.05 for r in rolling[100:400])  # before the shift
    assert min(rolling[400:460]) < 0.8  # the shift is missed at first
    assert all(abs(r - 0.9) < 0.05 for r in rolling[400 + 100 :]), min(rolling[500:])  # declared: 100 ticks
    assert abs(cov.coverage()["0.9"][0, 0] - 0.9) < 0.02  # and over the whole run


def test_a_tripled_noise_scale_is_where_static_intervals_stay_wrong_and_adapted_ones_keep_their_bound() -> None:
    """Errors whose scale triples halfway, one outcome a tick: the static 90% width (calibrated before)
    covers far less after; the adapted one's miss rate stays within ACI's bound of 10% over the run."""
    rng = np.random.default_rng(3)
    static = float(np.quantile(np.abs(rng.normal(size=2000)), 0.9))
    cov = CoverageTracker(["temp"], ["0.9"], horizon=1, gamma=0.05)
    scale = np.r_[np.ones(5000), 3 * np.ones(5000)]
    misses_static = 0
    for s in scale:
        error = float(rng.normal() * s)
        half = static * cov.multipliers()["0.9"][0, 0]
        cov.observe(0, "temp", error, (-half, half))
        cov.adapt()
        misses_static += abs(error) > static
    missed = 1 - cov.coverage()["0.9"][0, 0]
    assert abs(missed - 0.1) < 0.01  # the level held through the change of noise
    assert 2.4 < cov.multipliers()["0.9"][0, 0] < 3.6  # by widening the interval about threefold, as the noise grew
    assert misses_static / len(scale) > 0.3  # half the run at three times the noise


def test_the_drift_tracker_scores_each_published_interval_at_its_own_step() -> None:
    drift = DriftTracker(["temp"], reference_mae=1.0)
    drift.coverage = CoverageTracker(["temp"], ["0.8", "0.95"], horizon=2)
    hour = 3600.0
    intervals = {  # step 1 is ±1 at 80% and ±2 at 95%; step 2 is ±3 and ±4
        "0.8": {"lower": {"temp": [9.0, 7.0]}, "upper": {"temp": [11.0, 13.0]}},
        "0.95": {"lower": {"temp": [8.0, 6.0]}, "upper": {"temp": [12.0, 14.0]}},
    }
    for t in range(3):  # learn the grid from three readings
        drift.on_reading("a", t * hour, {"temp": 10.0}, now_s=t)
    drift.on_forecast("a", 2 * hour, {"temp": [10.0, 10.0]}, step_s=hour, intervals=intervals)
    drift.on_forecast("a", 2 * hour, {"temp": [10.0, 10.0]}, step_s=hour, intervals={"0.5": {}})  # not ours
    drift.on_reading("a", 3 * hour, {"temp": 11.5}, now_s=3)  # step 1: outside ±1, inside ±2
    drift.on_reading("a", 4 * hour + 60, {"temp": 14.5}, now_s=4)  # step 2 (a jittered clock): outside both
    cov = drift.coverage
    assert cov.seen.tolist() == [[1.0], [1.0]]
    assert cov.coverage()["0.8"].tolist() == [[0.0], [0.0]] and cov.coverage()["0.95"].tolist() == [[1.0], [0.0]]
    assert cov.width()["0.95"].tolist() == [[4.0], [8.0]]
    assert cov.summary() == {
        "coverage_80_temp": 0.0, "coverage_rolling_80_temp": 0.0, "width_80_temp": 4.0,
        "coverage_95_temp": 0.5, "coverage_rolling_95_temp": 0.5, "width_95_temp": 6.0,
    }  # fmt: skip


def drifted_day(phases_min: tuple[int, ...], hours: int = 48) -> CoverageTracker:
    """Hourly readings of entities reporting at their own minute, every forecast ±0.5 around the truth
    minus 2 (each one a miss), all handed over at one wall-clock instant: a backlog, a replay, the
    lifecycle's accelerated days."""
    drift = DriftTracker(["temp"], reference_mae=1.0)
    drift.coverage = CoverageTracker(["temp"], ["0.9"], horizon=1, gamma=0.05)
    for h in range(hours):
        for n, minute in enumerate(phases_min):
            ts = h * 3600.0 + minute * 60
            drift.on_reading(f"e{n}", ts, {"temp": 10.0}, now_s=0)
            band = {"0.9": {"lower": {"temp": [7.5]}, "upper": {"temp": [8.5]}}}
            drift.on_forecast(f"e{n}", ts, {"temp": [8.0]}, step_s=3600.0, now_s=0, intervals=band)
    return drift.coverage


def test_the_intervals_adapt_once_per_hour_of_readings_however_fast_they_arrive_and_whatever_the_phases() -> None:
    one, fleet = drifted_day((0,)), drifted_day((5, 35, 58))
    # 48 hours streamed in no time: a tick per hour of stream time (the first three learn the grid, the
    # next brings the first outcomes), not one per wall-clock period, nor one per reading of the fleet
    assert one.ticks == fleet.ticks and 40 <= one.ticks <= 47, (one.ticks, fleet.ticks)
    assert one.seen.sum() * 3 == fleet.seen.sum() > 100  # every outcome was scored
    # each tick of misses widened the interval by exp(0.05 · 0.9)
    expected = float(np.exp(0.05 * 0.9 * one.ticks))
    assert abs(one.multipliers()["0.9"][0, 0] - expected) < 1e-6 * expected
    assert abs(fleet.multipliers()["0.9"][0, 0] - expected) < 1e-6 * expected
