"""The peers (statsforecast, mlforecast, neuralforecast) in their own environment, scored beside ours."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.tools.bench.peers import PeersUnavailable, peers_python, scores


def test_every_peer_is_scored_on_the_same_windows_as_our_models(tmp_path, shared_data) -> None:
    out = tmp_path / "acc.json"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.tools.cli", "bench", "accuracy",
         *("--dataset", "etth1", "--horizons", "24", "--rows", "400", "--split", "7/1/2"),
         *("--models", "persistence,seasonal", "--peers", "statsforecast,mlforecast,neuralforecast"),
         *("--peer-windows", "4", "--shared-data", str(shared_data), "--json", str(out))],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "SENSORCAST_PEERS_MAX_STEPS": "5"},  # neuralforecast's 1,000 steps: the bench's
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["model"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {
        "persistence", "seasonal", "peer:statsforecast", "peer:statsforecast-seasonal", "peer:mlforecast",
        "peer:neuralforecast",
    }  # fmt: skip
    for name, row in rows.items():
        assert row["subset"]["windows"] == 4 and np.isfinite(row["subset"]["mse"]) and row["subset"]["mse"] > 0
        if name.startswith("peer:"):
            assert row["windows"] == 4 and row["mse"] == pytest.approx(row["subset"]["mse"], rel=1e-5)
            assert row["config"]["versions"]["pandas"].split(".")[0] == "2"  # why the peers live apart
    # statsforecast's own SeasonalNaive, on the same windows, scored the same: same windows, same metric
    assert rows["peer:statsforecast-seasonal"]["mse"] == pytest.approx(rows["seasonal"]["subset"]["mse"], rel=1e-5)
    assert rows["peer:statsforecast"]["config"]["season_length"] == 24
    assert rows["peer:neuralforecast"]["config"]["max_steps"] == 5


def _refused(*args: str, env: dict | None = None) -> str:
    """What `bench accuracy ARGS` says on its way out with exit code 1 (in process: no second torch import)."""
    from typer.testing import CliRunner

    from pipeline.tools.cli import app

    done = CliRunner().invoke(app, ["bench", "accuracy", *args], env=env)
    assert done.exit_code == 1, done.output
    return " ".join(done.output.split())  # rich wraps lines


def test_a_missing_peers_environment_is_named_before_any_training(tmp_path) -> None:
    for missing in (tmp_path / "none", tmp_path):  # nothing there, and a folder that is not an interpreter
        said = _refused("--peers", "statsforecast", env={"SENSORCAST_PEERS_PYTHON": str(missing)})
        assert "no peers' Python at" in said and "make peers-env" in said
        with pytest.raises(PeersUnavailable, match="make peers-env"):
            peers_python(missing)


def test_an_unknown_peer_is_a_clear_error() -> None:
    said = _refused("--peers", "prophet")
    assert "prophet" in said and "statsforecast" in said


def test_a_peer_that_forecasts_nan_is_an_error_not_a_score() -> None:
    actual = np.zeros((2, 3, 1))
    with pytest.raises(PeersUnavailable, match="1 non-finite"):
        scores(np.where(np.arange(6).reshape(2, 3, 1) == 4, np.nan, 0.0), actual)
    with pytest.raises(PeersUnavailable, match="shape"):
        scores(np.zeros((2, 3, 2)), actual)
