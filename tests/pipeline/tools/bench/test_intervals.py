"""`sensorcast bench intervals` end to end on ETTh1: three methods on one replayed stream with a shift."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_three_methods_are_measured_on_one_stream_with_a_plot(tmp_path, shared_data) -> None:
    out, png = tmp_path / "intervals.json", tmp_path / "coverage.png"
    res = subprocess.run(
        [sys.executable, "-m", "pipeline.tools.cli", "bench", "intervals", "--epochs", "1", "--shared-data",
         str(shared_data), "--plot", str(png), "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"static", "rolling", "adaptive"} and doc["windows"] > 2000
    for by_level in doc["results"].values():
        assert set(by_level) == {"0.8", "0.9"}
        for r in by_level.values():
            assert 0 < r["coverage"] <= 1 and r["mean_half_width"] > 0
    assert abs(doc["results"]["adaptive"]["0.9"]["coverage"] - 0.9) < 0.02  # its long-run guarantee, on real data
    assert set(doc["scores"]) == {"scaled_error", "over_sqrt_window_std", "over_window_std"}
    for by_level in doc["scores"].values():  # the three scores side by side, each a split-conformal interval
        for r in by_level.values():
            assert 0 < r["coverage"] <= 1 and r["interval_score"] >= 2 * r["mean_half_width"] > 0
            assert len(r["coverage_calm_middle_volatile"]) == 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and doc["machine"]["cpu_model"]


def test_the_adaptation_state_is_measured_shared_and_per_airport_on_the_weather(tmp_path) -> None:
    out = tmp_path / "entity.json"
    res = subprocess.run(
        [sys.executable, "-m", "pipeline.tools.cli", "bench", "intervals", "--per-entity", "--epochs", "1",
         "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["entities"] == ["EWR", "JFK", "LGA"] and doc["shifted"] == "EWR" and doc["windows_per_entity"] > 1000
    shared, per = doc["shared"], doc["per_entity"]
    assert per["state_floats"] == 3 * shared["state_floats"] == 3 * 24 * 7
    for r in (shared, per):  # ACI's long-run guarantee holds either way, over all airports
        assert abs(r["coverage"] - 0.9) < 0.03 and set(r["coverage_by_entity"]) == set(doc["entities"])
    assert all(abs(c - 0.9) < 0.03 for c in per["coverage_by_entity"].values())  # and per airport with its own
