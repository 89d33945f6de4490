"""Internal topics are not trusted: junk on the forecasts, models or calibration topic is counted and
skipped by the drift monitor. It never raises out of `handle`, and never locks the coverage tracker
to a level or horizon that real forecasts do not have."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.calibration import IntervalCalibrator
from flows.monitor import DriftMonitor
from pipeline.records import Record
from pipeline.settings import Settings

HOUR = 3_600_000
H = 3
CONFIG = Settings()
TOPICS = (CONFIG.forecasts_topic, CONFIG.models_topic, CONFIG.calibration_topic)


def monitor() -> DriftMonitor:
    return DriftMonitor(CONFIG, {"temp": 1.0}, lambda _d: None, version="1")


def forecast(ts_ms: int, intervals: object = None, version: str = "1", **changes) -> bytes:
    doc = {"entity": "site", "ts": ts_ms, "step_ms": HOUR, "model": {"name": CONFIG.model_name, "version": version},
           "forecast": {"temp": [20.0] * H}}  # fmt: skip
    if intervals is not None:
        doc["intervals"] = intervals
    return orjson.dumps(doc | changes)


def bands(level: str = "0.8", steps: int = H) -> dict:
    return {level: {"lower": {"temp": [19.0] * steps}, "upper": {"temp": [21.0] * steps}}}


@pytest.mark.parametrize(
    ("why", "intervals"),
    [
        ("a level that is not a number", bands("abc")),
        ("a level this system does not calibrate", bands("0.5")),
        ("empty rows", bands("0.8", steps=0)),
        ("ragged rows", {"0.8": {"lower": {"temp": [19.0]}, "upper": {"temp": [21.0] * H}}}),
        ("a list", [1, 2, 3]),
        ("a non-finite bound", {"0.8": {"lower": {"temp": [None] * H}, "upper": {"temp": [21.0] * H}}}),
    ],
)
def test_malformed_intervals_are_counted_and_never_lock_the_coverage_tracker(why: str, intervals: object) -> None:
    m = monitor()
    m.handle(CONFIG.forecasts_topic, Record(forecast(0, intervals)), now_s=0)
    assert m.tracker.coverage is None and sum(m.junk.values()) == 1, why
    m.handle(CONFIG.forecasts_topic, Record(forecast(HOUR, bands("0.8") | bands("0.95"))), now_s=1)
    cov = m.tracker.coverage
    assert cov is not None and cov.levels == ["0.8", "0.95"] and cov.horizon == H, why


def test_a_tracker_locked_by_a_forged_shape_starts_again_on_the_champions_own() -> None:
    """A forged forecast with well-formed 0.8-only intervals of two steps came first: the champion's
    own (two levels, three steps) are measured after REBUILD_AFTER of them in a row."""
    m = monitor()
    m.handle(CONFIG.forecasts_topic, Record(forecast(0, bands("0.8", steps=2), forecast={"temp": [1.0, 2.0]})), 0)
    assert m.tracker.coverage.horizon == 2
    for t in range(1, IntervalCalibrator.REBUILD_AFTER + 1):
        m.handle(CONFIG.forecasts_topic, Record(forecast(t * HOUR, bands("0.8") | bands("0.95"))), now_s=t)
    assert m.tracker.coverage.levels == ["0.8", "0.95"] and m.tracker.coverage.horizon == H


def test_a_json_list_or_an_oversized_message_on_an_internal_topic_is_skipped() -> None:
    m = monitor()
    for topic in TOPICS:
        m.handle(topic, Record(b"[1, 2]"), now_s=0)
        m.handle(topic, Record(b"{" + b" " * (DriftMonitor.MAX_INTERNAL_BYTES + 1) + b"}"), now_s=0)
    assert sum(m.junk.values()) == 6 and any("oversized" in k for k in m.junk), m.junk


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
levels = st.sampled_from(["0.8", "0.95", "0.5", "abc", "", "1", "-0.1", "nan"])
rows = st.dictionaries(st.sampled_from(["temp", "rh"]), st.lists(json_values | st.floats(), max_size=5))
shaped = st.dictionaries(levels, st.fixed_dictionaries({"lower": rows, "upper": rows}), max_size=3)


@settings(max_examples=300, deadline=None)
@given(
    topic=st.sampled_from(TOPICS),
    doc=json_values | st.fixed_dictionaries({"entity": json_values, "ts": json_values, "forecast": json_values,
                                             "intervals": json_values | shaped, "step_ms": json_values,
                                             "name": json_values, "version": json_values}),
    raw=st.binary(max_size=64),
)  # fmt: skip
def test_no_internal_message_raises_out_of_the_monitor_or_locks_its_tracker(topic: str, doc, raw: bytes) -> None:
    m = monitor()
    for value in (orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS) if doc is not None else None, raw):
        m.handle(topic, Record(value), now_s=0)
    cov = m.tracker.coverage
    assert cov is None or (set(cov.levels) <= {"0.8", "0.95"} and cov.horizon >= 1)


def test_the_summary_says_whether_the_forecasts_came_from_the_champion(caplog: pytest.LogCaptureFixture) -> None:
    """v2 was promoted but a service could not swap to it: its forecasts still say v1."""
    m = monitor()
    m.version = "2"
    m.handle(CONFIG.forecasts_topic, Record(forecast(0, version="1")), now_s=0)
    assert m.summary()["served_is_champion"] == 0.0 and "came from v1 (1), not the champion v2" in caplog.text
    m.handle(CONFIG.forecasts_topic, Record(forecast(HOUR, version="2")), now_s=1)
    assert m.summary()["served_is_champion"] == 1.0
