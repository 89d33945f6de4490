"""`sensorcast bench intervals`: three ways to keep a forecast interval calibrated, side by side on one
stream with a level shift.

The iTransformer is trained on a real data set (ETTh1 by default; of the weather, one airport's hours)
and its test split is replayed in time order as a stream, with every channel shifted by `shift_sigma`
training σ from the test split's middle on (a recalibrated sensor, a moved site: what drift looks
like). Each forecast's interval is issued when it is made, and each horizon step's outcome is learned
only when its reading arrives, k steps later. The three methods, per level, horizon step and channel:
- static: split-conformal on the validation split, never changed (what a version carries);
- rolling: the conformal quantile of the last `window` outcomes (darts' ConformalNaiveModel way);
- adaptive: the static width times exp(θ), θ moved after every reading by the outcomes it brought:
  the monitor's own code (flows.coverage.CoverageTracker), one tick per reading.
Reported: coverage over the whole run, before the shift and after it; the trailing coverage over time
(a plot), its low after the shift and how many windows after the shift it is back within ±5 points;
mean width. The scores are the shipped one, |error| over the window's scale; under "scores", the
plain scaled error and two window scales are compared as static split-conformal on the unshifted
test split (coverage, width, interval score, coverage in calm and volatile windows).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from flows.coverage import CoverageTracker
from models.conformal import WINDOW_POWER, WINDOW_SCORE, interval_report, split_conformal, window_scale
from models.data import DataError, prepare, split_for
from models.metrics import abs_errors, window_std
from models.nets import ITransformer, ITransformerConfig
from models.sources import load_table
from models.train import TrainConfig, train

TRAILING = 168  # windows in the trailing coverage (a week of hourly readings)


def shifted(frame, channels: list[str], start_row: int | None, sigma: np.ndarray, where=None):
    """The frame with every channel moved by `sigma` from `start_row` on (or where `where`, a polars
    expression, holds)."""
    import polars as pl

    after = where if where is not None else pl.int_range(0, frame.height) >= start_row
    return frame.with_columns(
        [pl.when(after).then(pl.col(c) + float(s)).otherwise(pl.col(c)) for c, s in zip(channels, sigma, strict=True)]
    )


def window_scores(model, windows) -> np.ndarray:
    """The shipped conformal score of every window, (n, H, N): |error| over its window's scale."""
    return abs_errors(model, windows) / window_scale(window_std(windows))[:, None, :]


def trained(data, lookback: int, horizon: int, epochs: int) -> ITransformer:
    """The iTransformer at the paper's setting, trained on `data`'s splits."""
    model = ITransformer(ITransformerConfig(lookback, horizon, d_model=256, n_heads=8, e_layers=2, d_ff=256))
    train(model, data.train, data.val, TrainConfig(epochs=epochs, lr=1e-4, schedule="halve", patience=3))
    return model


def replay(scores: np.ndarray, static: dict[str, np.ndarray], calib: np.ndarray, window: int, gamma: float) -> dict:
    """Hits per method and level, (T, H, N), and the widths issued, for test `scores` (T, H, N) in time
    order; window t's step k is learned at time t + k."""
    T, H, N = scores.shape
    methods = {"static": {}, "rolling": {}, "adaptive": {}}
    levels = list(static)
    adaptive = CoverageTracker([str(n) for n in range(N)], levels, H, window=1, gamma=gamma)
    history = list(calib[-window:])  # the rolling method starts from the calibration set's last scores
    issued = {m: {lv: np.empty((T, H, N)) for lv in static} for m in methods}
    steps = np.arange(H)
    for t in range(T):
        # issue window t's intervals with what is known now
        multipliers = adaptive.multipliers()
        recent = np.sort(np.asarray(history[-window:]), axis=0)  # once for every level
        for level, w in static.items():
            issued["static"][level][t] = w
            issued["adaptive"][level][t] = w * multipliers[level]
            rank = math.ceil((len(recent) + 1) * float(level))
            issued["rolling"][level][t] = recent[min(rank, len(recent)) - 1]
        # learn the outcomes that arrive at t: window t - k's step k, for every k whose window exists
        arrived = steps <= t
        j = np.clip(t - steps, 0, None)
        latest = scores[j, steps]  # (H, N)
        width = np.stack([issued["adaptive"][lv][j, steps] for lv in levels])  # (L, H, N) half-widths
        seen = np.broadcast_to(arrived[:, None], (H, N))
        adaptive.observe_cells(latest[None] > width, 2 * width, seen)
        adaptive.adapt()
        if arrived.all():  # one full set of outcomes per step for the rolling window
            history.append(latest)
    return {m: {lv: scores <= issued[m][lv] for lv in static} for m in methods} | {"widths": issued}


def trailing_coverage(hits: np.ndarray) -> np.ndarray:
    """Coverage over the last TRAILING windows at each window from the TRAILING-th on."""
    return np.convolve(hits.mean(axis=(1, 2)), np.ones(TRAILING) / TRAILING, mode="valid")


def after_shift(hits: np.ndarray, level: float, onset: int, band: float = 0.05) -> dict:
    """In the two weeks after the shift: the trailing coverage's low, and how many windows after the
    onset it is back within ±band of the level (0: it never left)."""
    trailing = trailing_coverage(hits)  # entry i covers windows i .. i + TRAILING - 1
    soon = trailing[onset : onset + 2 * TRAILING]
    low = int(np.argmin(soon))
    if abs(soon[low] - level) <= band:
        return {"trailing_low": round(float(soon[low]), 4), "windows_to_within_5_points": 0}
    back = np.flatnonzero(np.abs(trailing[onset + low :] - level) <= band)
    return {
        "trailing_low": round(float(soon[low]), 4),
        "windows_to_within_5_points": int(low + back[0] + TRAILING) if len(back) else None,
    }


def run_intervals(
    path: Path,
    lookback: int = 96,
    horizon: int = 24,
    shift_sigma: float = 2.0,
    levels: tuple[float, ...] = (0.8, 0.9),
    gamma: float = 0.05,
    window: int = 500,
    epochs: int = 10,
    plot: Path | None = None,
    log: Callable[[str], None] = print,
    entity: str | None = None,
) -> dict:
    frame = load_table(path)
    if "origin" in frame.columns:  # the weather, one row per airport and hour: one airport is the stream
        import polars as pl

        entity = entity or str(frame["origin"][0])
        frame = frame.filter(pl.col("origin") == entity).drop("origin")
    split = split_for(path, frame.height, lookback)
    clean = prepare(frame, lookback, horizon, split, path_hint=path)
    test_rows = split.test[1] - (split.test[0] + lookback)
    onset_row = split.test[0] + lookback + test_rows // 2
    sigma = shift_sigma * np.asarray(clean.scaler.std)
    data = prepare(shifted(frame, clean.channels, onset_row, sigma), lookback, horizon, split, path_hint=path)
    log(f"training the iTransformer on {path.name} (L={lookback}, H={horizon}), then replaying its test split")
    model = trained(data, lookback, horizon, epochs)
    val = (abs_errors(model, data.val), window_std(data.val))
    # the score a version ships: |error| over its window's scale (models.conformal); which is measured below
    scale_val, scale_test = window_scale(val[1])[:, None, :], window_scale(window_std(data.test))[:, None, :]
    calib = val[0] / scale_val
    scores = abs_errors(model, data.test) / scale_test  # window t forecasts rows t + L .. t + L + H - 1
    static = split_conformal(calib, list(levels))
    onset = max(0, onset_row - split.test[0] - lookback - horizon + 1)  # the first window with a shifted target
    hits = replay(scores, static, calib, window, gamma)
    widths = {m: {lv: w * scale_test for lv, w in by_level.items()} for m, by_level in hits.pop("widths").items()}
    clean_test = (abs_errors(model, clean.test), window_std(clean.test))  # the same model, no shift
    score_powers = {"scaled_error": 0.0, "over_sqrt_window_std": WINDOW_POWER, "over_window_std": 1.0}
    results = {}
    for method, by_level in hits.items():
        for level, h in by_level.items():
            results.setdefault(method, {})[level] = {
                "coverage": round(float(h.mean()), 4),
                "coverage_before_shift": round(float(h[:onset].mean()), 4),
                "coverage_after_shift": round(float(h[onset:].mean()), 4),
                "coverage_first_week_after_shift": round(float(h[onset : onset + TRAILING].mean()), 4),
                **after_shift(h, float(level), onset),
                "mean_half_width": round(float(widths[method][level].mean()), 4),
            }
    doc = {
        "dataset": str(path),
        "entity": entity,
        "lookback": lookback,
        "horizon": horizon,
        "shift_sigma": shift_sigma,
        "windows": int(scores.shape[0]),
        "shift_onset_window": int(onset),
        "gamma": gamma,
        "rolling_window": window,
        "score": WINDOW_SCORE,
        "results": results,
        # which score calibrates best: static split-conformal on validation, on the test split unshifted
        "scores": {name: interval_report(val, clean_test, levels, p) for name, p in score_powers.items()},
    }
    if plot is not None:
        doc["plot"] = str(coverage_plot(hits, onset, plot, float(sorted(levels)[-1])))
    return doc


def coverage_plot(hits: dict, onset: int, path: Path, level: float) -> Path:
    """Trailing coverage of each method over the stream at one level, the shift marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = next(k for k in hits["static"] if float(k) == level)
    fig, ax = plt.subplots(figsize=(10, 4))
    for method, color in (("static", "tab:red"), ("rolling", "tab:green"), ("adaptive", "tab:blue")):
        trailing = trailing_coverage(hits[method][key])
        ax.plot(np.arange(TRAILING - 1, TRAILING - 1 + len(trailing)), trailing, color=color, label=method)
    ax.axhline(level, color="black", lw=1, ls="--", label=f"nominal {level:.0%}")
    ax.axhspan(level - 0.05, level + 0.05, color="0.9", zorder=0)
    ax.axvline(onset, color="0.4", lw=1, ls=":", label="level shift")
    ax.set_xlabel("forecast window (hours into the test split)")
    ax.set_ylabel(f"coverage, trailing {TRAILING} windows")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_entity_state(
    path: Path,
    lookback: int = 96,
    horizon: int = 24,
    shift_sigma: float = 2.0,
    level: float = 0.9,
    gamma: float = 0.05,
    epochs: int = 6,
    log: Callable[[str], None] = print,
) -> dict:
    """Is the adaptation's state worth keeping per entity? The weather's airports as one stream each,
    every channel of the first airport only shifted by `shift_sigma` training σ from the middle of its
    test split; the adaptive intervals replayed with one θ per level, step and channel shared by all
    airports (what the monitor keeps, per version) and with one per airport. Outcomes of one hour are
    one tick, as they would be in one of the monitor's periods."""
    import polars as pl

    frame = load_table(path)
    if "origin" not in frame.columns:
        raise DataError("--per-entity needs data with entities: the weather")
    kw = {"entity_column": "origin", "time_column": "time", "path_hint": path}
    clean = prepare(frame, lookback, horizon, **kw)
    entities = frame["origin"].unique(maintain_order=True).to_list()
    first = frame.filter(pl.col("origin") == entities[0]).sort("time")
    split = split_for(path, first.height, lookback)  # what prepare does per entity
    targets_from = split.test[0] + lookback  # the test split's first forecast target (its rows before: context)
    half = (split.test[1] - targets_from) // 2
    onset_time = first["time"][targets_from + half]
    moved = (pl.col("origin") == entities[0]) & (pl.col("time") >= onset_time)
    sigma = shift_sigma * np.asarray(clean.scaler.std)
    data = prepare(shifted(frame, clean.channels, None, sigma, where=moved), lookback, horizon, **kw)
    log(f"training the iTransformer on {path.name}'s {len(entities)} airports, then replaying each one's test split")
    model = trained(data, lookback, horizon, epochs)
    key = f"{level:g}"
    static = split_conformal(window_scores(model, data.val), [level])[key]
    scores = window_scores(model, data.test)
    per = [scores[data.test.offsets[i] : data.test.offsets[i + 1]] for i in range(len(entities))]
    T = min(len(p) for p in per)
    per = np.stack([p[:T] for p in per])  # (E, T, H, N): airport e's window t, in time order
    onset = max(0, half - horizon + 1)  # the first window of airport 0 with a shifted target
    out = {"dataset": str(path), "entities": entities, "shifted": entities[0], "windows_per_entity": int(T),
           "shift_onset_window": int(onset), "level": key, "gamma": gamma}  # fmt: skip
    for name, shared in (("shared", True), ("per_entity", False)):
        issued = _replay_entities(per, static, key, gamma, shared)
        hits, alpha = per <= issued, 1 - level
        out[name] = {
            "coverage": round(float(hits.mean()), 4),
            "coverage_by_entity": {e: round(float(h.mean()), 4) for e, h in zip(entities, hits, strict=True)},
            "first_week_after_shift_by_entity": {
                e: round(float(h[onset : onset + TRAILING].mean()), 4) for e, h in zip(entities, hits, strict=True)
            },
            "interval_score": round(float((2 * issued + 2 / alpha * np.maximum(per - issued, 0)).mean()), 4),
            "state_floats": int(static.size * (1 if shared else len(entities))),
        }
    return out


def _replay_entities(scores: np.ndarray, static: np.ndarray, level: str, gamma: float, shared: bool) -> np.ndarray:
    """The half-widths issued to each entity's windows (E, T, H, N), adapted by one CoverageTracker for
    all entities or one each; window t's step k is learned at t + k."""
    E, T, H, N = scores.shape
    trackers = [
        CoverageTracker([str(n) for n in range(N)], [level], H, window=1, gamma=gamma)
        for _ in range(1 if shared else E)
    ]
    issued, steps = np.empty((E, T, H, N)), np.arange(H)
    seen = lambda t: np.broadcast_to((steps <= t)[:, None], (H, N))  # noqa: E731
    for t in range(T):
        j = np.clip(t - steps, 0, None)
        for e in range(E):
            tracker = trackers[0 if shared else e]
            issued[e, t] = static * tracker.multipliers()[level]
            width = issued[e, j, steps]
            tracker.observe_cells((scores[e, j, steps] > width)[None], 2 * width[None], seen(t))
        for tracker in trackers:
            tracker.adapt()
    return issued
