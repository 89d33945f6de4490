"""The tools a user would pick instead, run in their own environment (`make peers-env`: `.venv-peers`).

statsforecast and mlforecast require pandas < 3 and the product runs pandas 3, so the peers cannot
share the product's lock. `pipeline.tools.bench.peers` writes the splits to an .npz, runs this file
with the peers' Python, and scores what comes back with the same code that scores our models. This
file therefore imports nothing of sensorcast, and each peer library only inside its function.

Input (.npz): `train` (T, N) scaled training rows, `inputs` (W, L, N) the test windows' lookbacks,
`horizon`, `period` (0: no cycle), `peers` (names), `seed`. Output: `<name>` (W, H, N) forecasts per
peer in an .npz, and beside it a JSON of each peer's configuration and wall times.

    python pipeline/tools/bench/peers_runner.py IN.npz OUT.npz
"""

from __future__ import annotations

import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

PEERS = ("statsforecast", "mlforecast", "neuralforecast")  # also what `bench accuracy --peers` accepts


def _long(windows: np.ndarray):
    """(W, L, N) → one series per (window, channel), ids "w:c", integer time steps, as statsforecast and
    mlforecast take them: every window is forecast from its own lookback alone."""
    import pandas as pd

    w, length, n = windows.shape
    ids = np.repeat([f"{i}:{c}" for i in range(w) for c in range(n)], length)
    return pd.DataFrame(
        {"unique_id": ids, "ds": np.tile(np.arange(length), w * n), "y": windows.transpose(0, 2, 1).reshape(-1)}
    )


def _wide(frame, column: str, w: int, h: int, n: int) -> np.ndarray:
    """A forecast frame (one row per id and step) back to (W, H, N)."""
    frame = frame.reset_index() if "unique_id" not in frame.columns else frame
    order = {f"{i}:{c}": (i, c) for i in range(w) for c in range(n)}
    out = np.full((w, h, n), np.nan, dtype=np.float32)
    for uid, group in frame.groupby("unique_id", sort=False):
        i, c = order[str(uid)]
        out[i, :, c] = group.sort_values("ds")[column].to_numpy()[:h]
    return out


def run_statsforecast(train: np.ndarray, inputs: np.ndarray, horizon: int, period: int, seed: int):
    """AutoETS per channel and window, fitted on the window's own lookback (what the networks see), with
    the data's cycle as its season; statsforecast's SeasonalNaive beside it as a check on ours."""
    from statsforecast import StatsForecast
    from statsforecast.models import AutoETS, SeasonalNaive

    season = period if period and 2 * period <= inputs.shape[1] else 1
    models = [AutoETS(season_length=season)] + ([SeasonalNaive(season_length=period)] if period else [])
    sf = StatsForecast(models=models, freq=1, n_jobs=1)
    started = time.perf_counter()
    frame = sf.forecast(df=_long(inputs), h=horizon)
    seconds = time.perf_counter() - started
    w, _, n = inputs.shape
    out = {"statsforecast": _wide(frame, "AutoETS", w, horizon, n)}
    if period:
        out["statsforecast-seasonal"] = _wide(frame, "SeasonalNaive", w, horizon, n)
    config = {"model": "AutoETS", "season_length": season, "fitted_on": "each window's lookback, per channel"}
    return out, {"statsforecast": {"config": config, "train_seconds": 0.0, "predict_seconds": seconds}}


def mlforecast_lags(lookback: int, period: int) -> list[int]:
    """The last day of steps (24) and, with a cycle, its first three multiples: what fits the lookback."""
    lags = set(range(1, 25)) | ({period * k for k in (1, 2, 3)} if period else set())
    return sorted(lag for lag in lags if lag < lookback)  # one step goes to the differencing


def run_mlforecast(train: np.ndarray, inputs: np.ndarray, horizon: int, period: int, seed: int):
    """One LightGBM for all channels (a global model) on lags of the first differences, trained on the
    training split and rolled forward recursively from each test window's lookback."""
    import lightgbm as lgb
    from mlforecast import MLForecast
    from mlforecast.target_transforms import Differences

    lags = mlforecast_lags(inputs.shape[1], period)
    params = {"n_estimators": 200, "learning_rate": 0.05, "num_leaves": 31, "random_state": seed, "verbosity": -1}
    model = {"lgbm": lgb.LGBMRegressor(**params)}
    fc = MLForecast(models=model, freq=1, lags=lags, target_transforms=[Differences([1])])
    started = time.perf_counter()
    fc.fit(_long(train[None]))
    trained = time.perf_counter()
    frame = fc.predict(horizon, new_df=_long(inputs))
    predicted = time.perf_counter()
    w, _, n = inputs.shape
    config = {"model": "LightGBM", **params, "lags": lags, "target_transforms": "Differences([1])"}
    return {"mlforecast": _wide(frame, "lgbm", w, horizon, n)}, {
        "mlforecast": {"config": config, "train_seconds": trained - started, "predict_seconds": predicted - trained}
    }


def run_neuralforecast(train: np.ndarray, inputs: np.ndarray, horizon: int, period: int, seed: int):
    """neuralforecast's iTransformer at its documented defaults (hidden 512, 2 layers, d_ff 2048, MAE loss,
    1,000 steps, lr 1e-3), trained on the training split's channels as one multivariate series set, then
    asked for each test window from its lookback."""
    import logging

    import pandas as pd
    from neuralforecast import NeuralForecast
    from neuralforecast.models import iTransformer

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning_fabric").setLevel(logging.ERROR)
    w, lookback, n = inputs.shape
    steps = int(os.environ.get("SENSORCAST_PEERS_MAX_STEPS", "1000"))  # tests shorten it
    model = iTransformer(
        h=horizon, input_size=lookback, n_series=n, max_steps=steps, random_seed=seed, accelerator="cpu",
        enable_progress_bar=False, logger=False, enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    nf = NeuralForecast(models=[model], freq=1)

    def frame(rows: np.ndarray):
        t = rows.shape[0]
        ids = np.repeat([str(c) for c in range(n)], t)
        return pd.DataFrame({"unique_id": ids, "ds": np.tile(np.arange(t), n), "y": rows.T.reshape(-1)})

    started = time.perf_counter()
    nf.fit(df=frame(train))
    trained = time.perf_counter()
    out = np.empty((w, horizon, n), dtype=np.float32)
    for i in range(w):
        pred = nf.predict(df=frame(inputs[i]))
        for c in range(n):
            out[i, :, c] = pred[pred["unique_id"] == str(c)].sort_values("ds")["iTransformer"].to_numpy()
    predicted = time.perf_counter()
    config = {"model": "iTransformer", "documented_defaults": True, "max_steps": steps, "loss": "MAE"}
    return {"neuralforecast": out}, {
        "neuralforecast": {"config": config, "train_seconds": trained - started, "predict_seconds": predicted - trained}
    }


RUNNERS = {"statsforecast": run_statsforecast, "mlforecast": run_mlforecast, "neuralforecast": run_neuralforecast}


def main(argv: list[str]) -> int:
    src, dst = Path(argv[0]), Path(argv[1])
    given = np.load(src)
    train, inputs = given["train"].astype(np.float64), given["inputs"].astype(np.float64)
    horizon, period, seed = int(given["horizon"]), int(given["period"]), int(given["seed"])
    forecasts: dict[str, np.ndarray] = {}
    about: dict[str, dict] = {}
    for name in [str(p) for p in given["peers"]]:
        w, lookback, n = inputs.shape
        print(f"peer {name}: {w} windows of {lookback} steps, {n} channels", flush=True)
        out, info = RUNNERS[name](train, inputs, horizon, period, seed)
        took = info[name]
        print(
            f"peer {name}: done (train {took['train_seconds']:.0f} s, predict {took['predict_seconds']:.0f} s)",
            flush=True,
        )
        forecasts.update(out)
        about.update(info)
    np.savez(dst, **forecasts)
    versions = {}
    for lib in ("statsforecast", "mlforecast", "lightgbm", "neuralforecast", "pandas"):
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:  # not installed: the caller asked for no peer that needs it
            pass
    dst.with_suffix(".json").write_text(json.dumps({"peers": about, "versions": versions}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
