"""fit_checkpoint: a CSV in, a servable checkpoint out, scored beside the naive baselines."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from models.fit import fit_checkpoint
from models.forecaster import Forecaster
from models.train import TrainConfig


def test_fit_checkpoint_on_a_csv_with_an_entity_column(tmp_path, multi_sine) -> None:
    times = [dt.datetime(2026, 1, 1) + dt.timedelta(hours=i) for i in range(len(multi_sine))]
    frames = [
        pl.DataFrame({"time": times, "site": site, **{f"c{j}": multi_sine[:, j] + k for j in range(4)}})
        for k, site in enumerate(["north", "south"])
    ]
    csv = tmp_path / "sites.csv"
    pl.concat(frames).write_csv(csv)
    out = tmp_path / "ckpt"
    result = fit_checkpoint(
        csv,
        out,
        24,
        6,
        entity_column="site",
        model_cfg={"d_model": 32, "n_heads": 4, "d_ff": 32},
        cfg=TrainConfig(epochs=2, lr=1e-3, progress=False),
        log=lambda _m: None,
    )
    assert set(result.metrics) == {"itransformer", "persistence", "mean"}
    mse = {name: m["mse"] for name, m in result.metrics.items()}
    assert mse["itransformer"] < min(mse["persistence"], mse["mean"]), mse  # a cycle: worth more than the naive
    f = Forecaster.from_checkpoint(out, device="cpu")
    assert f.channels == ["c0", "c1", "c2", "c3"] and f.lookback == 24 and f.horizon == 6
    assert f.predict(np.asarray(multi_sine[None, :24], dtype=np.float32)).shape == (1, 6, 4)
