"""Split-conformal intervals where the right answer is known: a perfect point forecast and Gaussian
noise of known σ, so the level-q interval is the noise's central q-quantile."""

from __future__ import annotations

import numpy as np
import pytest

from models.conformal import coverage, split_conformal

Z = {"0.8": 1.2816, "0.9": 1.6449, "0.95": 1.9600}  # the standard normal's central quantiles


def test_intervals_from_a_calibration_set_cover_new_errors_at_their_level() -> None:
    rng = np.random.default_rng(7)
    sigma = np.array([0.5, 2.0])[None, None, :]  # two channels, each its own noise level
    calibration = np.abs(rng.normal(size=(4000, 3, 2)) * sigma)  # |error| of a perfect forecast, (n, H, N)
    widths = split_conformal(calibration, [0.8, 0.9, 0.95])
    fresh = rng.normal(size=(50_000, 3, 2)) * sigma
    for level, w in widths.items():
        assert w.shape == (3, 2)
        np.testing.assert_allclose(w, Z[level] * np.broadcast_to(sigma[0], (3, 2)), rtol=0.06)
        assert coverage(fresh, 0.0, w) == pytest.approx(float(level), abs=0.01), level


def test_a_level_the_calibration_set_cannot_support_is_left_out() -> None:
    assert set(split_conformal(np.ones((18, 1, 1)), [0.8, 0.95])) == {"0.8"}  # 0.95 needs 19 windows
    assert set(split_conformal(np.ones((19, 1, 1)), [0.8, 0.95])) == {"0.8", "0.95"}
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_conformal(np.ones((5, 1, 1)), [95])


def test_a_score_over_the_windows_own_scale_covers_calm_and_volatile_windows_alike() -> None:
    """Errors whose spread is the window's σ: the plain score over-covers calm windows and under-covers
    volatile ones; the score over the window's scale covers each third at the level."""
    from models.conformal import interval_report

    rng = np.random.default_rng(0)

    def scored(n: int) -> tuple[np.ndarray, np.ndarray]:
        std = rng.uniform(0.2, 2.0, size=(n, 1))
        return np.abs(rng.normal(size=(n, 1, 1))) * std[:, None, :], std

    val, test = scored(4000), scored(4000)
    plain, scaled = (interval_report(val, test, [0.9], power)["0.9"] for power in (0.0, 1.0))
    calm, _, volatile = plain["coverage_calm_middle_volatile"]
    assert calm > 0.97 and volatile < 0.8  # one width for all: right on average only
    assert all(abs(c - 0.9) < 0.03 for c in scaled["coverage_calm_middle_volatile"])
    assert scaled["interval_score"] < plain["interval_score"] and abs(scaled["coverage"] - 0.9) < 0.02
