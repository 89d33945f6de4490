from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
import torch

from models.data import DataError, Scaler, Windows, ett_hour_split, prepare, ratio_split, rolling_origins, split_for
from models.sources import EXCHANGE_COLUMNS, load_exchange, load_weather


def test_windows_are_strided_views_with_the_right_content() -> None:
    series = np.arange(40, dtype=np.float32).reshape(20, 2)
    w = Windows([series], lookback=5, horizon=3)
    assert len(w) == 20 - 8 + 1
    assert w.views[0].untyped_storage().data_ptr() == series.ctypes.data  # a view of the caller's array, no copy
    x, y = w[4]
    assert torch.equal(x, torch.as_tensor(series[4:9]))
    assert torch.equal(y, torch.as_tensor(series[9:12]))
    bx, by = w.batch(torch.tensor([0, 4]))
    assert torch.equal(bx[1], x) and torch.equal(by[1], y)


def test_windows_never_straddle_two_entities() -> None:
    a, b = np.zeros((10, 1)), np.ones((10, 1))
    w = Windows([a, b], lookback=4, horizon=2)
    assert len(w) == 2 * (10 - 6 + 1)
    for i in range(len(w)):
        x, y = w[i]
        assert len(torch.unique(torch.cat([x, y]))) == 1
    bx, _ = w.batch(torch.tensor([0, len(w) - 1]))
    assert bx[0].sum() == 0 and bx[1].sum() == 4


def test_too_short_a_series_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="long enough"):
        Windows([np.zeros((5, 2))], lookback=4, horizon=2)


def test_splits_follow_the_literature() -> None:
    s = ett_hour_split(17420, 96)
    assert s.train == (0, 8640) and s.val == (8544, 11520) and s.test == (11424, 14400)
    r = ratio_split(7588, 96)
    assert r.train == (0, 5311) and r.test == (7588 - 1517 - 96, 7588)
    assert r.val == (5311 - 96, 7588 - 1517)
    assert split_for("/x/ETTh1.csv", 17420, 96) == s
    assert split_for("/x/other.csv", 7588, 96) == r
    assert split_for("/x/ETTh1.csv", 7588, 96, "7/1/2") == r


def test_scaler_uses_training_statistics_only() -> None:
    frame = pl.DataFrame({"a": np.r_[np.zeros(70), np.full(30, 100.0)], "b": np.arange(100.0)})
    data = prepare(frame, 4, 2, ratio_split(100, 4))
    assert data.scaler.mean[0] == 0.0 and data.scaler.std[0] == 1.0  # constant train column: std guarded
    sc = Scaler.fit(np.arange(10.0)[:, None])
    assert np.allclose(sc.inverse(sc.transform(np.arange(10.0)[:, None])), np.arange(10.0)[:, None])


def test_missing_values_are_refused() -> None:
    frame = pl.DataFrame({"a": [1.0, None, 3.0] * 10})
    with pytest.raises(DataError, match="missing"):
        prepare(frame, 4, 2, ratio_split(30, 4))


def test_exchange_gets_names_and_daily_dates(shared_data) -> None:
    frame = load_exchange(shared_data / "exchange_rate.txt")
    assert frame.columns == ["date", *EXCHANGE_COLUMNS]
    assert frame.height == 7588
    assert frame["date"][0] == dt.date(1990, 1, 1) and frame["date"][1] == dt.date(1990, 1, 2)


def test_weather_table_has_three_airports_and_no_gaps_in_values() -> None:
    frame = load_weather()
    assert sorted(frame["origin"].unique().to_list()) == ["EWR", "JFK", "LGA"]
    assert frame.drop("origin", "time").null_count().sum_horizontal().item() == 0
    assert frame.group_by("origin").agg(pl.col("time").is_sorted()).get_column("time").all()


def test_time_features_are_tslib_timef_hourly_and_daily() -> None:
    import numpy as np

    from models.data import time_features

    hourly = np.array(["2016-07-01T00:00", "2016-07-01T23:00"], dtype="datetime64[ms]")  # a Friday
    f = time_features(hourly)
    assert f.shape == (2, 4) and f.dtype == np.float32
    assert np.allclose(f[:, 0], [-0.5, 0.5])  # hour of day
    assert np.allclose(f[0, 1:], [4 / 6 - 0.5, 0 / 30 - 0.5, 182 / 365 - 0.5])  # weekday, day of month, day of year
    daily = np.array(["1990-01-01", "1990-01-02"], dtype="datetime64[ms]")
    assert time_features(daily).shape == (2, 3)


def test_windows_carry_time_features_beside_the_values() -> None:
    import numpy as np
    import torch

    from models.data import Windows

    values = np.arange(20, dtype=np.float32)[:, None]
    marks = np.arange(20, dtype=np.float32)[:, None] * 10
    w = Windows([values, values + 100], lookback=4, horizon=2, marks=[marks, marks + 1000])
    (x, x_mark, y_mark), y = w.model_batch(torch.tensor([0, 15]), with_marks=True)
    assert x[1, 0, 0] == 100 and x_mark[1, 0, 0] == 1000  # the second series' first window, values and marks aligned
    assert y_mark.shape == (2, 2, 1) and y_mark[0, 0, 0] == 40


def test_a_windows_cycle_index_is_its_first_steps_slot_in_each_series() -> None:
    import numpy as np

    w = Windows([np.zeros((10, 1)), np.zeros((3, 1)), np.zeros((9, 1))], 4, 2, starts=[100, 7, 50])
    # the 3-row series has no window and is dropped with its start: 5 windows from 100, then 4 from 50
    assert w.cycle_index(torch.arange(len(w))).tolist() == [100, 101, 102, 103, 104, 50, 51, 52, 53]
    (x, no_marks, phase), _ = w.model_batch(torch.tensor([6]), with_cycle=True)
    assert no_marks is None and phase.tolist() == [51] and x.shape == (1, 4, 1)


def test_rolling_origins_validate_on_blocks_before_the_validation_split_each_after_its_training() -> None:
    rows = np.arange(100.0)[:, None]  # each value is its own row number
    folds = rolling_origins([rows], val_rows=20, lookback=10, horizon=5, folds=3, starts=[1000])
    assert len(folds) == 2  # the real split is the third
    for (fit, held), (first_held, end) in zip(folds, [(60, 80), (80, 100)], strict=True):  # oldest first
        _, fit_y = fit.batch(torch.arange(len(fit)))
        _, held_y = held.batch(torch.arange(len(held)))
        assert fit_y.max() == first_held - 1  # training ends where the block begins
        assert held_y.min() == first_held and held_y.max() == end - 1  # every row of the block is forecast once
        assert len(held) == 20 - 5 + 1
        assert held.cycle_index(torch.tensor([0])).item() == 1000 + first_held - 10  # its slot on the grid
        assert fit.cycle_index(torch.tensor([0])).item() == 1000


def test_too_many_rolling_origins_for_the_data_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="too short for 9 rolling origins"):
        rolling_origins([np.zeros((100, 2))], val_rows=20, lookback=10, horizon=5, folds=9)


def test_rolling_origins_cut_every_series_at_the_same_times() -> None:
    """Two sites: one with every slot 0..199, one that starts at slot 60 and has 90 rows. Each value is
    its row's slot. Before, each series was cut by its own row count, so one site's validation block
    began before the other's training rows ended (the one-cut rule the gate keeps was broken)."""
    a = np.arange(0, 200, dtype=np.float64)[:, None]
    b = np.arange(60, 150, dtype=np.float64)[:, None]
    folds = rolling_origins([a, b], val_rows=20, lookback=10, horizon=5, folds=3, starts=[0, 60])
    for (fit, held), low in zip(folds, [160, 180], strict=True):  # end = 200: blocks [160, 180), [180, 200)
        _, fit_y = fit.batch(torch.arange(len(fit)))
        _, held_y = held.batch(torch.arange(len(held)))
        assert fit_y.max() == low - 1 and held_y.min() == low and held_y.max() < low + 20
        assert (held.cycle_index(torch.arange(len(held))) + 10).min() == low  # each window's slot, as the grid says
