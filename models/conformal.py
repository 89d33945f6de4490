"""Split-conformal intervals: from a model's errors on windows it never trained on, the half-width per
channel and horizon step that covers a new error with the promised probability.

The score of a window is its absolute error in the training scaler's units (each channel divided by
its training σ), per channel and step, divided by the window's own scale: the square root of each
channel's standard deviation over the input window (`window_scale`), so a calm stretch gets a
narrower interval and a volatile one a wider, with the same coverage. Measured against the plain
scaled error on ETTh1 and the weather (`sensorcast bench intervals`, docs/messages.md): a lower
interval score on both, and coverage as even across calm and volatile windows as any power tried.
For level 1 - α the half-width is the ⌈(n + 1)(1 - α)⌉-th smallest of n scores: for exchangeable
windows a new error falls within it with probability at least 1 - α (Vovk et al. 2005; Lei et al.
2018). A level the calibration set is too small for (that rank past n: the interval would be
infinite) is left out, never published.

>>> import numpy as np
>>> scores = np.arange(1.0, 11.0)[:, None, None]  # ten windows, one step, one channel
>>> {k: v.tolist() for k, v in split_conformal(scores, [0.8, 0.95]).items()}  # 0.95 needs 19 windows
{'0.8': [[9.0]]}
"""

from __future__ import annotations

import math

import numpy as np

WINDOW_SCORE = "abs_error_scaled_over_sqrt_window_std"  # the score a version's intervals stand on
WINDOW_POWER = 0.5  # the scale is std ** this: 0 is no scale, 1 over-corrects (calm windows under-covered)
STD_FLOOR = 0.05  # a window's std is at least this (training σ): a stuck sensor still gets an interval


def window_scale(std: np.ndarray, power: float = WINDOW_POWER) -> np.ndarray:
    """A window's scale from `std` (B, N), each channel's standard deviation over its input window in
    the training scaler's units: floored, to the `power`."""
    return np.maximum(np.asarray(std, dtype=np.float64), STD_FLOOR) ** power


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


def calibration(errors: np.ndarray, scale: np.ndarray, levels: list[float]) -> dict:
    """What a version stores of its intervals (checkpoint `extra["intervals"]`, read back by
    `models.forecaster.interval_widths`): per level, the half-widths of the scores `errors` (n, H, N),
    absolute errors in the training scaler's units, over `scale` (n, N), their windows' `window_scale`.
    A forecast's half-width is then this times its own window's scale."""
    widths = split_conformal(errors / scale[:, None, :], levels)
    return {
        "score": WINDOW_SCORE,
        "power": WINDOW_POWER,
        "windows": int(errors.shape[0]),
        "half_width": {k: v.tolist() for k, v in widths.items()},
    }


def coverage(actual: np.ndarray, forecast: np.ndarray, half_width: np.ndarray) -> float:
    """The share of values within forecast ± half_width (arrays that broadcast together)."""
    return float((np.abs(actual - forecast) <= half_width).mean())


Scored = tuple[np.ndarray, np.ndarray]  # (errors (n, H, N), window std (n, N)), training scaler units


def interval_report(val: Scored, test: Scored, levels, power: float) -> dict:
    """Split-conformal on validation, measured on test, for the score |error| / window_scale(std,
    `power`) (power 0: the plain scaled error). `val` and `test` are (errors (n, H, N), window std
    (n, N)) in the training scaler's units. Per level: coverage, mean half-width, the interval score
    (width + 2/α · the distance by which a value falls outside; lower is better) and the coverage in
    the calm, middle and volatile third of the test windows (by their std, per channel)."""
    (ev, sv), (et, st) = val, test
    scale_v, scale_t = window_scale(sv, power)[:, None, :], window_scale(st, power)[:, None, :]
    thirds = np.quantile(st, [1 / 3, 2 / 3], axis=0)
    band = np.broadcast_to(((st > thirds[0]).astype(int) + (st > thirds[1]))[:, None, :], et.shape)
    out = {}
    for level, width in split_conformal(ev / scale_v, list(levels)).items():
        half = width * scale_t
        miss = et > half
        alpha = 1 - float(level)
        out[level] = {
            "coverage": round(float(1 - miss.mean()), 4),
            "mean_half_width": round(float(half.mean()), 4),
            "interval_score": round(float((2 * half + 2 / alpha * np.maximum(et - half, 0)).mean()), 4),
            "coverage_calm_middle_volatile": [round(float(1 - miss[band == b].mean()), 4) for b in range(3)],
        }
    return out
