"""The monitor's intervals across promotions, pure (no broker): a new champion of the same shape starts
from the outgoing one's multipliers, published at once; one of another horizon from them step by step."""

from __future__ import annotations

import numpy as np
import orjson

from flows.monitor import DriftMonitor
from pipeline.messages import encode_reading, parse_calibration
from pipeline.records import Record
from pipeline.settings import Settings

HOUR = 3_600_000
CONFIG = Settings()


def forecast(t: int, version: str, steps: int = 3) -> Record:
    """A forecast of 25 ± 1 for every step, made after the reading at hour `t`."""
    band = {"0.8": {"lower": {"temp": [24.0] * steps}, "upper": {"temp": [26.0] * steps}}}
    doc = {"entity": "site", "ts": t * HOUR, "step_ms": HOUR, "model": {"name": CONFIG.model_name, "version": version},
           "forecast": {"temp": [25.0] * steps}, "intervals": band}  # fmt: skip
    return Record(orjson.dumps(doc), b"site")


def test_a_promotion_starts_from_the_outgoing_champions_multipliers_and_another_horizon_step_by_step() -> None:
    champion, sent = ["1"], []
    monitor = DriftMonitor(CONFIG, {"temp": 1.0}, lambda _d: None, version="1",
                           reference=lambda: (champion[0], {"temp": 1.0}, None),
                           publish=lambda key, value: sent.append(parse_calibration(value)))  # fmt: skip
    for t in range(30):  # the readings stay at 20: every step of every forecast misses
        monitor.handle(CONFIG.readings_topic, Record(encode_reading("site", t * HOUR, {"temp": 20.0}), b"site"), t)
        monitor.handle(CONFIG.forecasts_topic, forecast(t, "1"), t)
    assert monitor.calibrate() and sent[-1].version == "1"
    widened = monitor.tracker.coverage.multipliers()["0.8"]
    assert widened.min() > 1.5, widened
    champion[0] = "2"  # the same levels, horizon and channels: it starts where v1's adaptation got to
    assert monitor.follow_champion()
    monitor.handle(CONFIG.forecasts_topic, forecast(30, "2"), 30)
    np.testing.assert_allclose(monitor.tracker.coverage.multipliers()["0.8"], widened)
    assert sent[-1].version == "2"  # published at once: the service applies them from its next batch
    np.testing.assert_allclose(sent[-1].scales(["temp"], 3)["0.8"].T, widened, rtol=1e-5)
    champion[0] = "3"  # another horizon: step by step, its two later steps as the last (the same misses made them)
    assert monitor.follow_champion()
    monitor.handle(CONFIG.forecasts_topic, forecast(31, "3", steps=5), 31)
    carried = monitor.tracker.coverage.multipliers()["0.8"]
    np.testing.assert_allclose(carried, np.vstack([widened, widened[-1:], widened[-1:]]))
    assert sent[-1].version == "3"  # published at once, as for the same shape
