"""`sensorcast plot`: an entity's forecasts against what arrived, from the topics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from pipeline.messages import encode_forecast, encode_reading, format_ts
from pipeline.tools.plot import history_from_docs, one_step, plot

HOUR = 3_600_000


def docs(steps: int, bias: float = 0.0, jitter: float = 0.0) -> tuple[list[dict], list[dict]]:
    """A ramp read hourly (each clock off by up to ± `jitter` of the hour); each forecast, stamped with
    its slot on the grid, says the next value is this one + 1 (+ bias)."""
    off = [int(jitter * HOUR * ((t * 7) % 5 - 2) / 2) for t in range(steps)]  # -jitter .. +jitter
    readings = [
        orjson.loads(encode_reading("a", t * HOUR + off[t] + HOUR, {"temp": float(t), "rh": 50.0}))
        for t in range(steps)
    ]
    forecasts = [
        orjson.loads(
            encode_forecast("a", t * HOUR + HOUR, ["temp", "rh"], np.array([[t + 1.0 + bias] * 3, [50.0] * 3]), "m",
                            "2", format_ts(t * HOUR), HOUR)
        )
        for t in range(5, steps)
    ]  # fmt: skip
    return readings, forecasts


def test_one_step_forecasts_meet_the_readings_they_forecast_and_score_against_persistence(tmp_path: Path) -> None:
    readings, forecasts = docs(30, bias=0.5)
    history = history_from_docs("a", readings + [{"entity": "b", "ts": 0, "values": {"temp": 9}}], forecasts)
    times, pred, actual = one_step(history)
    assert len(times) == 30 - 5 - 1  # the last forecast's step has not arrived
    assert np.allclose(pred[:, 0] - actual[:, 0], 0.5)
    scores = plot(history, tmp_path / "a.png")
    assert scores["temp"] == {"model_mae": pytest.approx(0.5), "persistence_mae": pytest.approx(1.0), "steps": 24}
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_latest_forecasts_intervals_are_drawn_as_bands(tmp_path: Path) -> None:
    readings, forecasts = docs(30)
    point = np.array([[30.0] * 3, [50.0] * 3])
    bands = {lv: (point - w, point + w) for lv, w in (("0.8", 1.0), ("0.95", 2.5))}
    latest = encode_forecast("a", 30 * HOUR, ["temp", "rh"], point, "m", "2", format_ts(0), HOUR, 0, bands)
    history = history_from_docs("a", readings, forecasts + [orjson.loads(latest)])
    plot(history, tmp_path / "bands.png")
    assert (tmp_path / "bands.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_jittered_readings_still_meet_their_forecasts() -> None:
    """Before, forecasts met readings by exact ts: with a jittered clock none did."""
    times, pred, actual = one_step(history_from_docs("a", *docs(30, bias=0.5, jitter=0.25)))
    assert len(times) == 30 - 5 - 1 and np.allclose(pred[:, 0] - actual[:, 0], 0.5)


def test_an_entity_never_seen_is_a_clear_error() -> None:
    readings, forecasts = docs(10)
    with pytest.raises(ValueError, match="no readings of 'zz'"):
        history_from_docs("zz", readings, forecasts)


@pytest.mark.integration
def test_plot_reads_both_topics(kafka_settings, produce, tmp_path: Path) -> None:
    from pipeline.kafka import ensure_topics
    from pipeline.tools.plot import read_history

    ensure_topics(kafka_settings)
    readings, forecasts = docs(20)
    produce(kafka_settings, [(b"a", orjson.dumps(d)) for d in readings])
    produce(kafka_settings, [(b"a", orjson.dumps(d)) for d in forecasts], topic=kafka_settings.forecasts_topic)
    history = read_history(kafka_settings, "a", hours=1)
    assert len(history.ts_ms) == 20 and len(history.forecasts) == 15 and history.channels == ["temp", "rh"]
    assert plot(history, tmp_path / "p.png")["temp"]["steps"] == 14
