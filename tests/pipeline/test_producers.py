from __future__ import annotations

import datetime as dt
import itertools

import polars as pl

from pipeline.producers import paced, replay_rows, simulate


def test_replay_interleaves_entities_in_time_order_and_makes_offset_copies(tmp_path) -> None:
    t0 = dt.datetime(2026, 1, 1)
    frame = pl.DataFrame({
        "time": [t0 + dt.timedelta(hours=h) for h in range(5)] * 2,
        "site": ["a"] * 5 + ["b"] * 5,
        "v": [float(i) for i in range(10)],
    })
    path = tmp_path / "x.csv"
    frame.write_csv(path)
    rows = list(replay_rows(path, entity_column="site"))
    assert [r[0] for r in rows[:4]] == ["a", "b", "a", "b"]
    assert [r[2]["v"] for r in rows if r[0] == "b"] == [5.0, 6.0, 7.0, 8.0, 9.0]
    copies = list(replay_rows(path, entity_column="site", copies=2, offset_rows=2))
    a1 = [r for r in copies if r[0] == "a-1"]
    assert len(a1) == 3 and a1[0][2]["v"] == 2.0 and a1[0][1] == rows[0][1]  # shifted values, same clock


def test_weather_replay_is_three_airports() -> None:
    first = list(itertools.islice(replay_rows(), 6))
    assert sorted({r[0] for r in first}) == ["EWR", "JFK", "LGA"]
    assert set(first[0][2]) == {"temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib"}


def test_simulator_ticks_every_entity_with_increasing_time() -> None:
    rows = list(itertools.islice(simulate(entities=3, channels=2, start_ms=0, interval_ms=1000), 9))
    assert [r[0] for r in rows[:3]] == ["sensor-0000", "sensor-0001", "sensor-0002"]
    assert [r[1] for r in rows[::3]] == [0, 1000, 2000]
    assert len(list(paced(iter(rows), rate=0, limit=4))) == 4
