"""`sensorcast bench accuracy` end to end on slices of the real benchmark data."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest


def _bench(tmp_path, *args: str) -> dict:
    out = tmp_path / "acc.json"
    res = subprocess.run(
        [sys.executable, "-m", "pipeline.tools.cli", "bench", "accuracy", *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text())


def test_bench_accuracy_standard_runs_end_to_end_on_a_slice(tmp_path, shared_data) -> None:
    doc = _bench(
        tmp_path,
        "--protocol",
        "standard",
        "--dataset",
        "etth1",
        "--horizons",
        "24",
        "--rows",
        "400",
        "--split",
        "7/1/2",
        "--epochs",
        "1",
        "--models",
        "itransformer,transformer,persistence,mean",
        "--shared-data",
        str(shared_data),
    )
    assert doc["protocol"] == "standard"
    models = {r["model"] for r in doc["results"]}
    assert models == {"itransformer", "transformer", "persistence", "mean"}
    for r in doc["results"]:
        assert r["horizon"] == 24 and r["mse"] > 0 and r["mae"] > 0 and np.isfinite(r["mse"])
        assert set(r) == {
            "model",
            "horizon",
            "mse",
            "mae",
            "train_seconds",
            "epochs",
            "stopped_by",
            "time_cap_s",
            "config",
            "search",
            "intervals",
            "windows",
            "subset",
        }
    transformer = next(r for r in doc["results"] if r["model"] == "transformer")
    assert transformer["config"]["d_model"] == 512 and transformer["config"]["d_ff"] == 2048
    assert transformer["config"]["n_time_features"] == 4  # hourly ETTh1: hour, weekday, day of month, day of year
    assert transformer["stopped_by"] == "epochs" and transformer["time_cap_s"] is None
    for r in doc["results"]:  # calibrated on validation, measured on test: a share, and a width that grows
        if r["model"] in ("itransformer", "transformer"):
            bands = r["intervals"]
            # 17 validation windows on this slice: 0.95 would need 19, so it is left out
            assert set(bands) == {"0.8", "0.9"} and all(0 <= b["coverage"] <= 1 for b in bands.values())
            assert 0 < bands["0.8"]["mean_half_width"] <= bands["0.9"]["mean_half_width"]


def test_a_two_trial_search_chooses_on_validation_and_scores_the_choice_once(tmp_path, shared_data) -> None:
    doc = _bench(
        tmp_path,
        *("--dataset", "etth1", "--horizons", "24", "--rows", "400", "--split", "7/1/2", "--epochs", "1"),
        *("--trials", "2", "--seeds", "2", "--shared-data", str(shared_data)),
    )
    from models.search import TrialRecord, one_se

    assert doc["models"] == ["itransformer", "persistence", "mean", "seasonal"]  # no GPU: no Transformer unless named
    (row,) = [r for r in doc["results"] if r["model"] == "itransformer"]
    search = row["search"]
    trials = search["trial_log"]
    assert search["trials"] == len(trials) == 2 and search["wall_seconds"] > 0
    assert trials[0]["params"]["d_model"] == 256 and trials[0]["params"]["lr"] == 1e-4  # the paper's setting first
    done = [t for t in trials if t["state"] == "complete"]
    lowest = min(done, key=lambda t: t["val_loss"])
    assert search["lowest_trial"] == lowest["number"] and search["select"] == "one-se"  # the rule by default
    clearly = lowest is trials[0] or one_se(TrialRecord(**trials[0]), TrialRecord(**lowest))[0]
    chosen = lowest if clearly else trials[0]  # the paper's setting unless beaten by more than one SE
    assert search["chosen_trial"] == chosen["number"] and search["chosen_val_loss"] == chosen["val_loss"]
    assert search["folds"] == 3 and all(len(t["fold_val_losses"]) == 3 for t in done)  # rolling origins by default
    assert row["config"]["d_model"] == chosen["params"]["d_model"] and np.isfinite(row["mse"])
    repeats = search["seed_repeats"]  # both rules' candidates, each from two fresh seeds, on test
    assert repeats["seeds"] == [2025, 2026] and repeats["one_se_keeps"] == ("lowest" if clearly else "default")
    for label, trial in (("lowest", lowest), ("default", trials[0])):
        assert repeats[label]["trial"] == trial["number"] and len(repeats[label]["mse"]) == 2
        assert repeats[label]["mean"] == pytest.approx(np.mean(repeats[label]["mse"]))
    (seasonal,) = [r for r in doc["results"] if r["model"] == "seasonal"]  # hourly ETTh1: yesterday's hour
    assert seasonal["config"] == {"period": 24} and np.isfinite(seasonal["mse"]) and seasonal["mse"] > 0


def test_bench_accuracy_seed_protocol_says_persistence_is_hard_to_beat(tmp_path, shared_data) -> None:
    doc = _bench(
        tmp_path,
        "--protocol",
        "seed",
        "--dataset",
        "exchange",
        "--rows",
        "1500",
        "--epochs",
        "1",
        "--shared-data",
        str(shared_data),
    )
    assert {r["horizon"] for r in doc["results"]} == {1}
    assert any("persistence" in n for n in doc["notes"])


def _refused(*args: str) -> str:
    """stderr of `bench accuracy ARGS`, which must exit 1."""
    cmd = [sys.executable, "-m", "pipeline.tools.cli", "bench", "accuracy", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res.stderr[-2000:]
    return res.stderr


def test_an_unknown_model_is_a_clear_error() -> None:
    stderr = _refused("--models", "itransformer,prophet")
    assert "prophet" in stderr and "persistence" in stderr


def test_unknown_protocol_is_a_clear_error() -> None:
    assert "unknown protocol" in _refused("--protocol", "nope")
