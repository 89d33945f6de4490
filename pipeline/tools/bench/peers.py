"""What a user would install instead, scored on our splits (`sensorcast bench accuracy --peers ...`).

The peers live in an environment of their own (`peers_runner.py` says why). This side picks the test
windows, hands their lookbacks and the training rows to the runner in a subprocess, and scores the
forecasts that come back exactly as `models.metrics.evaluate` scores ours: MSE and MAE over every
window, step and channel, in the training split's standardized units.

A peer fitted per window (AutoETS) cannot score ETTh1's 2,785 test windows in reasonable time, so
every model, ours included, is also scored on the same evenly spaced subset (`subset_indices`).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.tools.bench.peers_runner import PEERS  # one list; the runner imports only numpy at its top

RUNNER = Path(__file__).with_name("peers_runner.py")
DEFAULT_PYTHON = Path(".venv-peers/bin/python")  # `make peers-env`


class PeersUnavailable(RuntimeError):
    """The peers' environment is missing or a peer failed; the message says which and what to run."""


@dataclass
class PeerResult:
    name: str
    forecasts: np.ndarray  # (W, H, N), standardized units
    config: dict
    train_seconds: float
    predict_seconds: float


def subset_indices(n_windows: int, count: int) -> np.ndarray:
    """`count` test windows evenly spaced from the first to the last (all of them when count ≥ n).

    >>> subset_indices(10, 4).tolist()
    [0, 3, 6, 9]
    >>> subset_indices(3, 8).tolist()
    [0, 1, 2]
    """
    if count >= n_windows:
        return np.arange(n_windows)
    return np.unique(np.linspace(0, n_windows - 1, count).round().astype(np.int64))


def scores(forecasts: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """MSE and MAE over windows, steps and channels; a non-finite forecast is an error, not a score.

    >>> scores(np.zeros((1, 2, 1)), np.array([[[1.0], [3.0]]]))
    (5.0, 2.0)
    """
    if forecasts.shape != actual.shape:
        raise PeersUnavailable(f"forecasts of shape {forecasts.shape} for actuals of shape {actual.shape}")
    if not np.isfinite(forecasts).all():
        raise PeersUnavailable(f"{int((~np.isfinite(forecasts)).sum())} non-finite forecasts")
    err = forecasts.astype(np.float64) - actual.astype(np.float64)
    return float((err**2).mean()), float(np.abs(err).mean())


def peers_python(given: Path | None = None) -> Path:
    """The peers' interpreter: `given`, else $SENSORCAST_PEERS_PYTHON, else .venv-peers of this checkout."""
    path = given or Path(os.environ.get("SENSORCAST_PEERS_PYTHON", DEFAULT_PYTHON))
    if not path.is_file():
        raise PeersUnavailable(f"no peers' Python at {path}: run `make peers-env` (statsforecast, mlforecast and "
                               "neuralforecast need pandas < 3, so they get an environment of their own)")  # fmt: skip
    return path


def run_peers(
    names: tuple[str, ...],
    train: np.ndarray,
    inputs: np.ndarray,
    horizon: int,
    period: int | None,
    *,
    python: Path | None = None,
    seed: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, PeerResult]:
    """Forecast `inputs` (W, L, N) with each peer in `names`, trained on `train` (T, N); the seasonal
    check (statsforecast's SeasonalNaive) comes back as "statsforecast-seasonal" when there is a period."""
    unknown = sorted(set(names) - set(PEERS))
    if unknown:
        raise PeersUnavailable(f"unknown peers {unknown}; choose from {', '.join(PEERS)}")
    exe = peers_python(python)
    with tempfile.TemporaryDirectory(prefix="sensorcast-peers-") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, train=train, inputs=inputs, horizon=horizon, period=period or 0, peers=np.array(names), seed=seed)
        started = time.perf_counter()
        with open(Path(tmp) / "stderr", "w+") as errors:
            command = [str(exe), str(RUNNER), str(src), str(dst)]
            runner = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
            for line in runner.stdout:  # each peer's start, as it starts: minutes apart on a full test split
                log(f"  {line.rstrip()} ({time.perf_counter() - started:.0f} s)")
            if runner.wait() != 0:
                errors.seek(0)
                raise PeersUnavailable(f"the peers' runner failed ({runner.returncode}):\n{errors.read()[-3000:]}")
        log(f"  peers done in {time.perf_counter() - started:.0f} s")
        about = json.loads(dst.with_suffix(".json").read_text())
        with np.load(dst) as out:
            forecasts = {k: out[k] for k in out.files}
    results = {}
    for key, values in forecasts.items():
        info = about["peers"].get(key, {"config": {"model": "SeasonalNaive", "library": "statsforecast"}})
        results[key] = PeerResult(
            key, values, {**info["config"], "versions": about["versions"]}, info.get("train_seconds", 0.0),
            info.get("predict_seconds", 0.0),
        )  # fmt: skip
    return results
