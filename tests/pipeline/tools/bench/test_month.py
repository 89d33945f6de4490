"""The month's coverage, scored from the forecasts and the readings they forecast (pure)."""

from __future__ import annotations

from pipeline.tools.bench.month import HOUR_MS, LEVEL, coverage, weeks


def forecast(entity: str, at_h: int, lower: list[float], upper: list[float]) -> dict:
    band = {"lower": {"temp": lower}, "upper": {"temp": upper}}
    return {"entity": entity, "ts": at_h * HOUR_MS + 60_000, "step_ms": HOUR_MS, "intervals": {LEVEL: band}}


def test_coverage_counts_each_step_inside_its_band_on_the_hour_and_in_its_span_only() -> None:
    truth = {("a", h * HOUR_MS): {"temp": float(h)} for h in range(10)}  # the reading at hour h is h
    docs = [
        forecast("a", 1, [1.5, 0.0], [2.5, 2.0]),  # hour 2 inside, hour 3 outside
        forecast("a", 2, [2.0, 3.0], [4.0, 5.0]),  # hours 3 and 4 inside (its bounds count)
        forecast("a", 9, [0.0], [99.0]),  # its outcome (hour 10) never arrived: not scored
        {"entity": "a", "ts": 3 * HOUR_MS, "forecast": {"temp": [1.0]}},  # no intervals: not scored
    ]
    assert coverage(docs, truth, 0, 10 * HOUR_MS) == 3 / 4
    assert coverage(docs, truth, 2 * HOUR_MS, 10 * HOUR_MS) == 1.0  # the forecasts made from hour 2 on
    assert coverage(docs, truth, 0, 10 * HOUR_MS, channel="dewp") is None


def test_the_last_week_is_the_last_seven_days_or_all_of_a_shorter_month() -> None:
    day = 24 * HOUR_MS
    assert weeks(0, 10 * day) == {
        "week 1": (0, 7 * day),
        "week 2": (7 * day, 10 * day),
        "last week": (3 * day, 10 * day),
    }
    assert weeks(0, 4 * day)["last week"] == (0, 4 * day)
