"""Split-conformal intervals: from a model's errors on windows it never trained on, the half-width per
channel and horizon step that covers a new error with the promised probability.

The score of a window is its absolute error in the training scaler's units (each channel divided by
its training σ), per channel and step. For level 1 - α the half-width is the ⌈(n + 1)(1 - α)⌉-th
smallest of n scores: for exchangeable windows a new error falls within it with probability at
least 1 - α (Vovk et al. 2005; Lei et al. 2018). A level the calibration set is too small for (that
rank past n: the interval would be infinite) is left out, never published.

>>> import numpy as np
>>> scores = np.arange(1.0, 11.0)[:, None, None]  # ten windows, one step, one channel
>>> {k: v.tolist() for k, v in split_conformal(scores, [0.8, 0.95]).items()}  # 0.95 needs 19 windows
{'0.8': [[9.0]]}
"""

from __future__ import annotations

import math

import numpy as np


def level_key(level: float) -> str:
    """A level as the wire and the checkpoint name it: 0.8 → "0.8", 0.95 → "0.95"."""
    return f"{level:g}"


def split_conformal(scores: np.ndarray, levels: list[float]) -> dict[str, np.ndarray]:
    """`scores` (n, H, N) non-conformity scores → {level: (H, N) half-widths} for every level the n
    windows can support."""
    n = scores.shape[0]
    ordered = np.sort(scores, axis=0)
    out = {}
    for level in levels:
        if not 0 < level < 1:
            raise ValueError(f"an interval level is a probability between 0 and 1, got {level}")
        rank = math.ceil((n + 1) * level)  # 1-based
        if rank <= n:
            out[level_key(level)] = ordered[rank - 1]
    return out


def calibration(scores: np.ndarray, levels: list[float]) -> dict:
    """What a version stores of its intervals (checkpoint `extra["intervals"]`, read back by
    `models.forecaster.interval_widths`): the half-widths of `scores` (n, H, N), absolute errors in
    the training scaler's units, per level."""
    widths = split_conformal(scores, levels)
    return {
        "score": "abs_error_scaled",
        "windows": int(scores.shape[0]),
        "half_width": {k: v.tolist() for k, v in widths.items()},
    }


def coverage(actual: np.ndarray, forecast: np.ndarray, half_width: np.ndarray) -> float:
    """The share of values within forecast ± half_width (arrays that broadcast together)."""
    return float((np.abs(actual - forecast) <= half_width).mean())
