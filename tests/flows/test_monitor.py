"""The drift monitor on real topics: quiet on a clean stream, fires once on an injected level shift."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import orjson
import pytest
from kafka.admin import ConfigResource, ConfigResourceType

from flows.monitor import DriftMonitor
from pipeline.kafka import ensure_topics, make_producer
from pipeline.messages import encode_reading, format_ts

pytestmark = pytest.mark.integration

HOUR = 3_600_000
H = 4


def truth(t: int, shift_at: int | None) -> float:
    return 20 + 5 * math.sin(2 * math.pi * t / 24) + (8.0 if shift_at is not None and t >= shift_at else 0.0)


def handled(monitor: DriftMonitor, topic: str, count: int, ceiling_s: float = 120) -> None:
    """Wait until the monitor has handled `count` messages of `topic` (a ceiling only against a hang)."""
    deadline = time.monotonic() + ceiling_s
    while monitor.handled[topic] < count:
        assert time.monotonic() < deadline, f"the monitor handled {monitor.handled[topic]} of {count} on {topic}"
        time.sleep(0.005)


def stream(settings, steps: range, shift_at: int | None, monitor: DriftMonitor) -> None:
    """Readings as they arrive, and after each the forecast a model that never saw the shift would make;
    each handed to the monitor before the next is sent (two topics, two consumers: nothing else orders them)."""
    producer = make_producer(settings, linger_ms=0)
    for t in steps:
        for topic, value in (
            (settings.readings_topic, encode_reading("site", t * HOUR, {"temp": truth(t, shift_at)})),
            (settings.forecasts_topic, orjson.dumps({
                "entity": "site", "ts": format_ts(t * HOUR),
                "forecast": {"temp": [truth(t + k, None) + 0.1 for k in range(1, H + 1)]},
            })),
        ):  # fmt: skip
            count = monitor.handled[topic] + 1
            producer.send(topic, key=b"site", value=value).get(30)
            handled(monitor, topic, count)
    producer.close()


def test_quiet_on_the_clean_stream_then_fires_once_on_a_level_shift(kafka_settings) -> None:
    ensure_topics(kafka_settings)
    fired: list[dict] = []
    monitor = DriftMonitor(kafka_settings, {"temp": 0.5}, fired.append, threshold=2.0, patience=6, window=24)
    stop = threading.Event()
    summaries: list[dict] = []
    runner = threading.Thread(target=monitor.run, args=(stop, time.monotonic, summaries.append, 0.5), daemon=True)
    runner.start()
    try:
        assert monitor.wait_ready(30)
        stream(kafka_settings, range(0, 96), shift_at=None, monitor=monitor)
        quiet = list(fired)
        stream(kafka_settings, range(96, 160), shift_at=100, monitor=monitor)
    finally:
        stop.set()
        runner.join(timeout=10)
    assert quiet == [], quiet
    assert len(fired) == 1 and fired[0]["entity"] == "site" and fired[0]["mae_ratio"]["temp"] > 2.0, fired
    assert monitor.tracker.skill("site", "temp") is not None
    assert summaries[-1]["mae_ratio_temp"] == monitor.tracker.mae("site", "temp")  # the last one, at the stop


def test_a_promotion_changes_the_yardstick_at_once_and_refused_readings_are_never_scored(kafka_settings) -> None:
    """An error of about 8 is 16× a holdout MAE of 0.5 (drift) but 1.6× the new champion's 5.0 (quiet);
    a reading of 1e9 keyed by another entity is refused by the service, so it is never scored."""
    ensure_topics(kafka_settings)
    fired: list[dict] = []
    champions: list[str] = []
    monitor = DriftMonitor(
        kafka_settings, {"temp": 0.5}, fired.append, threshold=2.0, patience=6, window=24,
        version="1", reference=lambda: ("2", {"temp": 5.0}, None), on_champion=champions.append,
    )  # fmt: skip
    stop = threading.Event()
    runner = threading.Thread(target=monitor.run, args=(stop, time.monotonic, None, 3600), daemon=True)
    runner.start()
    producer = make_producer(kafka_settings, linger_ms=0)
    try:
        assert monitor.wait_ready(30)
        announcement = {"name": kafka_settings.model_name, "alias": "champion", "version": "2", "run_id": "r"}
        producer.send(kafka_settings.models_topic, key=b"m", value=orjson.dumps(announcement)).get(30)
        handled(monitor, kafka_settings.models_topic, 1)
        stream(kafka_settings, range(0, 48), shift_at=0, monitor=monitor)
        junk = encode_reading("site", 48 * HOUR, {"temp": 1e9})
        count = monitor.handled[kafka_settings.readings_topic] + 1
        producer.send(kafka_settings.readings_topic, key=b"another-site", value=junk).get(30)
        handled(monitor, kafka_settings.readings_topic, count)
        stream(kafka_settings, range(48, 96), shift_at=0, monitor=monitor)
    finally:
        producer.close()
        stop.set()
        runner.join(timeout=10)
    assert champions == ["2"] and monitor.tracker.reference_mae == {"temp": 5.0}
    assert 1.2 < monitor.tracker.mae("site", "temp") < 2.0, monitor.tracker.mae("site", "temp")
    assert fired == [] and dict(monitor.refused) == {"bad_key": 1}, (fired, monitor.refused)


def test_an_entity_silent_past_the_ttl_is_forgotten_with_its_gauge_labels(kafka_settings) -> None:
    from prometheus_client import CollectorRegistry

    from flows.monitor_outputs import mae_ratio_gauge
    from pipeline.records import Record

    registry = CollectorRegistry()
    monitor = DriftMonitor(kafka_settings, {"temp": 0.5}, print, metrics=mae_ratio_gauge(registry), ttl_s=10)
    for entity, last in (("gone", 5), ("alive", 20)):
        for t in range(last + 1):
            reading = encode_reading(entity, t * HOUR, {"temp": truth(t, None)})
            monitor.handle(kafka_settings.readings_topic, Record(reading, entity.encode()), now_s=t)
            forecast = {"entity": entity, "ts": format_ts(t * HOUR), "forecast": {"temp": [truth(t + 1, None)]}}
            monitor.handle(kafka_settings.forecasts_topic, Record(orjson.dumps(forecast)), now_s=t)

    def gauge(entity: str) -> float | None:
        labels = {"entity": entity, "channel": "temp", "model": "model"}
        return registry.get_sample_value("sensorcast_rolling_mae_ratio", labels)

    assert gauge("gone") is not None and gauge("alive") is not None
    assert monitor.forget_idle(now_s=20) == ["gone"]
    assert gauge("gone") is None and gauge("alive") is not None and set(monitor.tracker.entities) == {"alive"}


def test_too_narrow_intervals_are_widened_through_the_compacted_topic_and_the_service_applies_them(
    kafka_settings,
) -> None:
    """Forecasts 0.1 off with intervals of ±0.05: every reading misses. The monitor widens them, publishes
    the multipliers keyed by version on the compacted topic, and a service's follower applies them to
    that version's intervals (and a restarted monitor resumes from them)."""
    from prometheus_client import CollectorRegistry

    from flows.calibration import CoverageGauges
    from pipeline.core import ModelSlot
    from pipeline.kafka import TopicFollower, make_admin, topic_reader
    from pipeline.messages import calibration_key, encode_forecast, format_ts
    from pipeline.records import Record
    from pipeline.serve import CalibrationFollower
    from tests.fixtures.fakes import LastValueModel

    s = kafka_settings.model_copy(update={"calibration_every_s": 0.2, "model_name": "fake", "interval_levels": "0.9"})
    ensure_topics(s)
    producer = make_producer(s, linger_ms=0)
    gauges = CoverageGauges(CollectorRegistry())

    def publish(key: bytes, value: bytes) -> None:
        producer.send(s.calibration_topic, key=key, value=value).get(30)

    monitor = DriftMonitor(s, {"temp": 0.5}, print, version="1", publish=publish, coverage_gauges=gauges)
    serving = LastValueModel(["temp"], horizon=H, version="1")
    serving.name, serving.interval_widths = "fake", {"0.9": np.full((1, H), 0.05)}
    slot = ModelSlot(serving)
    follower = TopicFollower(s, s.calibration_topic, CalibrationFollower(slot), since_ms=0)
    stop = threading.Event()
    runner = threading.Thread(target=monitor.run, args=(stop, time.monotonic, None, 3600), daemon=True)
    runner.start()
    follower.start()
    try:
        assert monitor.wait_ready(30) and follower.ready.wait(30)
        for t in range(60):
            count = monitor.handled[s.readings_topic] + 1
            producer.send(
                s.readings_topic, key=b"site", value=encode_reading("site", t * HOUR, {"temp": truth(t, None)})
            ).get(30)
            handled(monitor, s.readings_topic, count)
            point = np.array([[truth(t + k, None) + 0.1 for k in range(1, H + 1)]])
            bounds = {"0.9": (point - 0.05, point + 0.05)}
            doc = encode_forecast("site", t * HOUR, ["temp"], point, "fake", "1", format_ts(0), HOUR, 0, bounds)
            count = monitor.handled[s.forecasts_topic] + 1
            producer.send(s.forecasts_topic, key=b"site", value=doc).get(30)
            handled(monitor, s.forecasts_topic, count)
        deadline = time.monotonic() + 120  # a ceiling against a hang: the widths change on the next publication
        while slot.interval_widths(serving)["0.9"][0, 0] <= 0.05 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        runner.join(timeout=10)
        follower.close()
    cov = monitor.tracker.coverage
    assert cov is not None and cov.seen.sum() > 100 and cov.coverage()["0.9"].max() == 0.0  # every step missed
    assert np.all(slot.interval_widths(serving)["0.9"] > 0.05)  # the service's v1 intervals are wider now
    labels = {"level": "0.9", "channel": "temp", "step": "1", "window": "total"}
    assert gauges.coverage._metrics and gauges.coverage.labels(*labels.values())._value.get() == 0.0
    assert monitor.summary()["coverage_90_temp"] == 0.0
    admin = make_admin(s)
    try:
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, s.calibration_topic)])
    finally:
        admin.close()
    assert "compact" in str(configs) and "cleanup.policy" in str(configs), configs
    # a restarted monitor resumes v1's multipliers from the topic, not from its static widths
    restarted = DriftMonitor(s, {"temp": 0.5}, print, version="1")
    reader = topic_reader(s, s.calibration_topic, from_beginning=True)
    published: list = []
    for _ in range(100):  # until the topic's end
        got = [r for batch in reader.poll(timeout_ms=200).values() for r in batch]
        published += got
        if published and not got:
            break
    reader.close()
    assert published and {r.key for r in published} == {calibration_key("fake", "1")}
    for r in published:
        restarted.handle(s.calibration_topic, Record(r.value, r.key), now_s=0)
    restarted.tracker.coverage = restarted.intervals.start(["0.9"], H)
    np.testing.assert_allclose(restarted.tracker.coverage.multipliers()["0.9"], cov.multipliers()["0.9"], rtol=1e-5)
    producer.close()


def test_junk_on_the_forecasts_and_calibration_topics_never_stops_the_monitor(kafka_settings) -> None:
    """Anyone can write to a topic: a forecast that is not our service's is not scored, and the monitor
    keeps scoring the real ones."""
    from pipeline.records import Record

    monitor = DriftMonitor(kafka_settings, {"temp": 0.5}, print, version="1")
    junk = [
        {"entity": "site", "ts": 0, "forecast": {"temp": 5}},
        {"entity": "site", "ts": 0, "forecast": {"temp": ["a", "b"]}},
        {"entity": "site", "ts": 0, "forecast": {"temp": [1.0, 2.0], "other": [1.0]}},
        {"entity": "site", "ts": 0, "forecast": []},
        {"entity": "site", "ts": 0, "forecast": {"temp": [1.0]}, "intervals": {"0.9": {"lower": 3}}},
        {"entity": "site", "ts": 0, "forecast": {"temp": [1.0]}, "intervals": {"0.9": {"lower": {"temp": ["x"]},
                                                                              "upper": {"temp": [None]}}}},
    ]  # fmt: skip
    for t in range(4):
        reading = encode_reading("site", t * HOUR, {"temp": 20.0})
        monitor.handle(kafka_settings.readings_topic, Record(reading, b"site"), now_s=t)
        for doc in junk:
            monitor.handle(kafka_settings.forecasts_topic, Record(orjson.dumps(doc)), now_s=t)
        monitor.handle(kafka_settings.calibration_topic, Record(b"{not json"), now_s=t)
        good = {"entity": "site", "ts": format_ts(t * HOUR), "step_ms": HOUR, "forecast": {"temp": [21.0]}}
        monitor.handle(kafka_settings.forecasts_topic, Record(orjson.dumps(good)), now_s=t)
    assert monitor.tracker.mae("site", "temp") == 1.0 / 0.5  # the real forecasts, each 1 off, and only them
