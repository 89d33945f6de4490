"""The drift tracker, pure: quiet on a clean stream, fires on a level shift, once per cool-down."""

from __future__ import annotations

import math

import pytest

from flows.drift import DriftTracker

H = 4


def truth(t: int, shift_at: int | None = None) -> float:
    return 20 + 5 * math.sin(2 * math.pi * t / 24) + (8.0 if shift_at is not None and t >= shift_at else 0.0)


def run(tracker: DriftTracker, steps: int | range, shift_at: int | None = None, entity: str = "site") -> list[int]:
    """A model that knows the daily cycle but not the shift; returns the steps at which drift fired."""
    fired = []
    for t in steps if isinstance(steps, range) else range(steps):
        if tracker.on_reading(entity, t, {"temp": truth(t, shift_at)}, now_s=t):
            fired.append(t)
        tracker.on_forecast(entity, t, {"temp": [truth(t + k) + 0.1 for k in range(1, H + 1)]}, now_s=t)
    return fired


def test_quiet_on_a_clean_stream_and_the_model_beats_persistence() -> None:
    tracker = DriftTracker(["temp"], reference_mae=0.5, window=48, threshold=2.0, patience=6)
    assert run(tracker, 24 * 10) == []
    assert tracker.mae("site", "temp") < 0.5 and tracker.skill("site", "temp") > 0.5


def test_a_level_shift_fires_once_per_cool_down() -> None:
    tracker = DriftTracker(["temp"], reference_mae=0.5, window=24, threshold=2.0, patience=6, cooldown_s=100)
    fired = run(tracker, 24 * 10, shift_at=100)
    assert fired and 100 < fired[0] <= 112, fired  # within half a day of the shift
    assert len(fired) == 2 and fired[1] - fired[0] >= 100, fired  # drift persists: again, after the cool-down
    assert tracker.fired_entity == "site"


def test_the_cool_down_is_per_entity_another_drifting_entity_still_fires() -> None:
    tracker = DriftTracker(["temp"], reference_mae=0.5, window=24, threshold=2.0, patience=6, cooldown_s=1000)
    first = run(tracker, range(0, 150), shift_at=100, entity="a")
    second = run(tracker, range(0, 150), shift_at=100, entity="b")  # within a's cool-down
    again = run(tracker, range(150, 200), shift_at=100, entity="a")  # a still drifts, still cooling down
    assert len(first) == 1 and len(second) == 1 and again == [], (first, second, again)
    assert tracker.fired_entity == "b"


def test_an_entity_silent_past_the_ttl_is_forgotten_and_one_alive_is_kept() -> None:
    tracker = DriftTracker(["temp"], reference_mae=0.5, window=24)
    run(tracker, range(0, 48), entity="gone")
    run(tracker, range(0, 100), entity="alive")
    assert tracker.forget_idle(now_s=100, ttl_s=24) == ["gone"]
    assert set(tracker.entities) == {"alive"} and tracker.summary()["entities_scored"] == 1


def test_steps_whose_reading_never_comes_are_dropped() -> None:
    tracker = DriftTracker(["temp"], reference_mae=1.0, window=10)
    for t in (0, 1):
        tracker.on_reading("a", t, {"temp": 1.0}, now_s=t)
        tracker.on_forecast("a", t, {"temp": [1.0, 1.0, 1.0]})
    tracker.on_reading("a", 10, {"temp": 1.0}, now_s=10)  # a gap: steps 2 to 4 never arrived
    assert tracker.entities["a"].pending == {}


def test_the_summary_averages_entities_and_names_metrics_per_channel() -> None:
    tracker = DriftTracker(["temp"], reference_mae=0.5, window=48)
    assert tracker.summary() == {}  # nothing scored yet: nothing to log
    run(tracker, 48)
    summary = tracker.summary()
    assert set(summary) == {"mae_ratio_temp", "persistence_mae_ratio_temp", "skill_temp", "entities_scored"}
    assert summary["mae_ratio_temp"] == tracker.mae("site", "temp") and summary["entities_scored"] == 1
    assert summary["skill_temp"] == tracker.skill("site", "temp")


def test_jittered_readings_are_scored_and_a_level_shift_still_fires() -> None:
    """±25% of an hour of jitter: before, forecasts were joined by exact ts and nothing was scored."""
    import numpy as np

    rng = np.random.default_rng(5)
    tracker = DriftTracker(["temp"], reference_mae=0.5, window=24, threshold=2.0, patience=6, cooldown_s=1e9)
    fired = []
    for t in range(24 * 10):
        clock = t * 3600 + rng.uniform(-0.25, 0.25) * 3600  # seconds, jittered
        if tracker.on_reading("site", clock, {"temp": truth(t, 100)}, now_s=t):
            fired.append(t)
        tracker.on_forecast("site", t * 3600, {"temp": [truth(t + k) + 0.1 for k in range(1, H + 1)]}, step_s=3600)
    assert len(tracker.entities["site"].errors["temp"]) == 24  # scored: the rolling window is full
    assert fired and 100 < fired[0] <= 112, fired


def test_a_forecast_that_arrives_after_its_readings_is_scored_at_once_against_its_own_slot() -> None:
    """A backlog: a day's readings first (the level climbs by 1 an hour), then the service's forecasts
    of them, each exact. Every step is scored when its forecast arrives; persistence says the forecast
    slot's reading (1 and 2 off), not the day's last; the intervals adapt once per hour of outcomes."""
    from flows.coverage import CoverageTracker

    d = DriftTracker(["temp"], reference_mae=1.0)
    d.coverage = CoverageTracker(["temp"], ["0.9"], horizon=2)
    for h in range(24):
        d.on_reading("a", h * 3600.0, {"temp": float(h)}, now_s=0)
    band = {"0.9": {"lower": {"temp": [-1e9, -1e9]}, "upper": {"temp": [1e9, 1e9]}}}
    for h in range(3, 21):
        d.on_forecast("a", h * 3600.0, {"temp": [h + 1.0, h + 2.0]}, step_s=3600.0, now_s=0, intervals=band)
    assert len(d.entities["a"].errors["temp"]) == 18 * 2 and d.mae("a", "temp") == 0.0
    assert d.mae("a", "temp", naive=True) == 1.5
    assert d.coverage.seen.sum() == 36 and d.coverage.coverage()["0.9"].min() == 1.0
    assert 15 <= d.coverage.ticks <= 18, d.coverage.ticks


def test_seasonal_naive_repeats_the_last_cycle_and_is_scored_only_where_the_cycle_was_read() -> None:
    """A daily cycle with a level that climbs 0.5 a day: seasonal naive is off by exactly that, while
    persistence misses the cycle; the first day, with no cycle read yet, scores no seasonal naive."""
    tracker = DriftTracker(["temp"], reference_mae=1.0, window=24, seasonal_period=24)

    def level(t: int) -> float:
        return truth(t) + 0.5 * t / 24

    for t in range(24 * 5):
        tracker.on_reading("site", t * 3600.0, {"temp": level(t)}, now_s=t)
        tracker.on_forecast("site", t * 3600.0, {"temp": [level(t + k) for k in range(1, H + 1)]}, step_s=3600.0)
        if t == 22:  # the first day's forecasts reach back before the stream: nothing to repeat
            assert not tracker.entities["site"].seasonal["temp"]
    assert tracker.mae("site", "temp", of="seasonal") == pytest.approx(0.5)
    assert tracker.mae("site", "temp", naive=True) > 2 * tracker.mae("site", "temp", of="seasonal")
    summary = tracker.summary()
    assert summary["seasonal_mae_ratio_temp"] == pytest.approx(0.5) and summary["mae_ratio_temp"] == 0.0
    assert "seasonal_mae_ratio_temp" not in DriftTracker(["temp"], 1.0).summary()  # no period: no seasonal naive
