"""The promotion gate, pure: chronological splits, one scale for every contender, the decision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flows.gate import chronological_split, decide, scaled_mse, windows
from models.data import DataError, Scaler
from models.nets import Persistence


def test_split_is_chronological_and_later_splits_carry_lookback_history() -> None:
    s = np.arange(100, dtype=np.float64)[:, None]
    parts = chronological_split([s], lookback=5)
    assert parts.train[0][-1, 0] == 69 and parts.val[0][0, 0] == 65 and parts.val[0][-1, 0] == 79
    assert parts.holdout[0][0, 0] == 75 and parts.holdout[0][-1, 0] == 99


def test_scores_are_in_the_candidates_scaled_units() -> None:
    ramp = np.arange(50, dtype=np.float32)[:, None].repeat(2, axis=1) * np.array([1.0, 10.0], dtype=np.float32)
    w = windows([ramp], lookback=4, horizon=1, what="holdout")
    # persistence is off by one step: 1 and 10 raw units, i.e. 1 σ in both channels when σ = (1, 10)
    assert scaled_mse(Persistence(1), w, Scaler(np.zeros(2), np.array([1.0, 10.0]))) == pytest.approx(1.0)


def test_too_short_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="too little data"):
        windows([np.zeros((5, 2))], lookback=4, horizon=2, what="holdout")


@pytest.mark.parametrize(
    "scores, margin, promote, why",
    [
        ({"candidate": 0.4, "persistence": 0.9, "mean": 0.7}, 0.0, True, "no champion yet"),
        ({"candidate": 0.95, "persistence": 0.9, "mean": 0.7}, 0.0, False, "does not beat persistence"),
        ({"candidate": 0.4, "champion": 0.41, "persistence": 0.9, "mean": 0.7}, 0.05, False, "not 5% better"),
        ({"candidate": 0.4, "champion": 0.5, "persistence": 0.9, "mean": 0.7}, 0.05, True, "by more than 5%"),
        ({"candidate": float("nan"), "persistence": 0.9, "mean": 0.7}, 0.0, False, "nan"),
    ],
)
def test_decide(scores: dict, margin: float, promote: bool, why: str) -> None:
    decision = decide(scores, margin)
    assert decision.promote is promote and why in decision.reason


def test_windows_reject_what_has_no_full_window() -> None:
    with pytest.raises(DataError):
        windows([torch.zeros(3, 1).numpy()], lookback=4, horizon=1, what="training")
