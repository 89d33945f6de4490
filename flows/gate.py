"""The promotion gate, pure: split a window in time, once for every entity, score every contender on
the same holdout, and decide.

The split is one pair of cut times for every series: train < t1 <= validation < t2 <= holdout, by
each row's time on the grid. No site's holdout comes before another site's training rows, and a
series broken by a gap is never given a "holdout" of its own in the middle of the range.

A candidate is promoted only when it beats the best naive forecast (persistence, the window mean, and
seasonal naive where the data has a cycle: `best_naive`) and beats the serving champion by at least
`margin` (relative MSE). Scores are on a scale the holdout fixes, not any contender: each
channel's MSE in units of that channel's variance over the holdout's targets, averaged over the
channels (`holdout_scores`). Two runs' figures then read alike, and no channel counts for more
because one candidate's short training window saw it barely vary. Raw-unit MAE per channel is
reported beside it.

>>> decide({"candidate": 0.40, "champion": 0.50, "persistence": 0.90, "mean": 0.70}, margin=0.05).promote
True
>>> decide({"candidate": 0.49, "champion": 0.50, "persistence": 0.90, "mean": 0.70}, margin=0.05).reason
'candidate MSE 0.49 is not 5% better than the champion 0.5'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from models.data import DataError, Scaler, Windows, wants_cycle


@dataclass(frozen=True)
class Splits:
    """Raw-unit series cut in time: train (fit), validation (early stopping), holdout (the gate)."""

    train: list[np.ndarray]
    val: list[np.ndarray]
    holdout: list[np.ndarray]
    cuts: tuple[int, int] | None = None  # (t1, t2), epoch ms: train < t1 <= validation < t2 <= holdout
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)  # part → (first, last) target time, ms
    first_ts: dict[str, list[int]] = field(default_factory=dict)  # part → time of each series' first row, ms


Timed = tuple[np.ndarray, np.ndarray]  # (ts (T,) epoch ms, values (T, N)) of one contiguous series
VAL_SHARE, HOLDOUT_SHARE = 0.1, 0.2  # of all rows, after the two cuts


def time_split(series: list[Timed], lookback: int, val: float = VAL_SHARE, holdout: float = HOLDOUT_SHARE) -> Splits:
    """Cut every series at the same two times, t1 and t2, chosen so that about `val` and `holdout` of
    all rows fall after them. Validation and holdout rows are preceded by up to `lookback` rows of the
    same series as history (inputs only: no target of one part lies in another)."""
    stamps = np.concatenate([ts for ts, _ in series]) if series else np.zeros(0, dtype=np.int64)
    if not stamps.size:
        return Splits([], [], [])
    t1 = int(np.quantile(stamps, 1 - val - holdout, method="higher"))
    t2 = int(np.quantile(stamps, 1 - holdout, method="higher"))
    t2 = max(t2, t1 + 1)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "holdout": []}
    first_ts: dict[str, list[int]] = {"train": [], "val": [], "holdout": []}
    ranges: dict[str, list[int]] = {}
    for ts, values in series:
        a, b = int(np.searchsorted(ts, t1)), int(np.searchsorted(ts, t2))
        for name, start, end in (("train", 0, a), ("val", a, b), ("holdout", b, len(ts))):
            if end <= start:
                continue
            history = 0 if name == "train" else lookback
            parts[name].append(values[max(start - history, 0) : end])
            first_ts[name].append(int(ts[max(start - history, 0)]))
            first, last = ranges.get(name, [int(ts[start]), int(ts[end - 1])])
            ranges[name] = [min(first, int(ts[start])), max(last, int(ts[end - 1]))]
    return Splits(**parts, cuts=(t1, t2), ranges={k: (v[0], v[1]) for k, v in ranges.items()}, first_ts=first_ts)


def after(series: list[Timed], since_ms: int, lookback: int) -> list[Timed]:
    """The rows of each series after `since_ms`, each with up to `lookback` rows of history before:
    a holdout that holds none of a model's training targets."""
    out = []
    for ts, values in series:
        start = int(np.searchsorted(ts, since_ms, side="right"))
        if start < len(ts):
            out.append((ts[max(start - lookback, 0) :], values[max(start - lookback, 0) :]))
    return out


def windows(
    series: list[np.ndarray],
    lookback: int,
    horizon: int,
    what: str,
    first_ts: list[int] | None = None,
    grid: dict | None = None,
) -> Windows:
    """Windows of the series; with `first_ts` and the `grid`, each knows its phase (its first step's slot)."""
    starts = None
    if first_ts is not None and grid:
        starts = [(t - grid["anchor_ms"]) // grid["interval_ms"] for t in first_ts]
    try:
        return Windows([s.astype(np.float32) for s in series], lookback, horizon, starts=starts)
    except DataError:
        need = lookback + horizon
        raise DataError(
            f"too little data: no series has the {need} rows a {what} window needs (lookback {lookback} + horizon "
            f"{horizon}); stream more readings or shorten the window"
        ) from None


def windows_after(
    series: list[Timed], since_ms: int, lookback: int, horizon: int, grid: dict | None, what: str = "holdout"
) -> Windows:
    """The windows of `series` whose targets all lie after `since_ms`, each with its phase on the grid:
    what a champion (or weights inherited from it) never trained on. DataError when none is left."""
    kept = after(series, since_ms, lookback)
    return windows([v for _, v in kept], lookback, horizon, what, [int(ts[0]) for ts, _ in kept], grid)


Forecast = Callable[..., torch.Tensor]  # raw (B, L, N) → raw (B, H, N); with a cycle, (x, phase) → ...


def holdout_after_champion(
    series: list[Timed], grid: dict | None, holdout: Windows, until_ms: int, margin: float, champion: str
) -> tuple[Windows, GateDecision | None]:
    """The holdout windows whose targets all come after `until_ms`, the champion's last training
    reading: every contender is scored on those, so none is judged on targets it trained on. When too
    few are left, the decision is made already: not promoted, and why."""
    from pipeline.messages import format_ts

    try:
        return windows_after(series, until_ms, holdout.lookback, holdout.horizon, grid), None
    except DataError:
        why = (
            f"too few holdout readings after the champion v{champion}'s training data, which ends "
            f"{format_ts(until_ms)}: not promoted (retrain on a window that reaches further)"
        )
        return holdout, GateDecision(False, why, {}, margin)


def forecast_windows(forecast: Forecast, holdout: Windows, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(forecast, actual) of the holdout windows at `index`; a network with a cycle gets their phases."""
    x, y = holdout.batch(index)
    if wants_cycle(getattr(forecast, "model", forecast)):  # the serving wrapper (Scaled) or the bare network
        return forecast(x, holdout.cycle_index(index)), y
    return forecast(x), y


@torch.no_grad()
def scaled_mse(forecast: Forecast, holdout: Windows, scaler: Scaler, batch_size: int = 512) -> float:
    """MSE over the holdout windows, each channel's error in units of the candidate's training σ."""
    std = torch.as_tensor(np.asarray(scaler.std, dtype=np.float32))
    total, count = 0.0, 0
    for start in range(0, len(holdout), batch_size):
        pred, y = forecast_windows(forecast, holdout, torch.arange(start, min(start + batch_size, len(holdout))))
        err = (pred.float() - y) / std
        total += float((err**2).sum())
        count += err.numel()
    return total / max(count, 1)


@torch.no_grad()
def channel_errors(forecast: Forecast, holdout: Windows, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(MSE, MAE) per channel over the holdout windows, raw units, each (N,)."""
    sq = ab = None
    count = 0
    for start in range(0, len(holdout), batch_size):
        pred, y = forecast_windows(forecast, holdout, torch.arange(start, min(start + batch_size, len(holdout))))
        err = (pred.float() - y).double()
        sq = err.square().sum(dim=(0, 1)) if sq is None else sq + err.square().sum(dim=(0, 1))
        ab = err.abs().sum(dim=(0, 1)) if ab is None else ab + err.abs().sum(dim=(0, 1))
        count += y.shape[0] * y.shape[1]
    return (sq / max(count, 1)).numpy(), (ab / max(count, 1)).numpy()


def target_variance(holdout: Windows, batch_size: int = 4096) -> np.ndarray:
    """Each channel's variance over the holdout windows' targets (N,): the scale every contender's
    error is measured in, the same whichever model is scored."""
    total = square = None
    count = 0
    for start in range(0, len(holdout), batch_size):
        _, y = holdout.batch(torch.arange(start, min(start + batch_size, len(holdout))))
        y = y.double()
        total = y.sum(dim=(0, 1)) if total is None else total + y.sum(dim=(0, 1))
        square = y.square().sum(dim=(0, 1)) if square is None else square + y.square().sum(dim=(0, 1))
        count += y.shape[0] * y.shape[1]
    mean = total / max(count, 1)
    return (square / max(count, 1) - mean.square()).clamp(min=0).numpy()


def holdout_scores(
    contenders: dict[str, Forecast], holdout: Windows, channels: list[str]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """({contender: mean over channels of its MSE / the channel's variance on the holdout},
    {contender: {channel: raw MAE}}). The scale is the holdout's own: the same for every contender and
    every candidate, so two runs' figures read alike, and a channel that barely varied in one
    candidate's training window no longer weighs a thousand times more in its run. A channel flat on
    the holdout is divided by a floor (a millionth of the largest channel's variance), never by zero.

    >>> from models.nets import Persistence, WindowMean
    >>> series = np.stack([np.arange(40.0), np.zeros(40)], axis=1).astype(np.float32)
    >>> w = Windows([series], lookback=4, horizon=1)
    >>> scores, mae = holdout_scores({"persistence": Persistence(1), "mean": WindowMean(1)}, w, ["up", "flat"])
    >>> round(scores["persistence"], 4), mae["mean"]["up"]
    (0.0046, 2.5)
    """
    var = target_variance(holdout)
    scale = np.maximum(var, 1e-6 * float(var.max()) + 1e-30)
    errors = {name: channel_errors(net, holdout) for name, net in contenders.items()}
    scores = {name: float(np.mean(mse / scale)) for name, (mse, _) in errors.items()}
    mae = {name: {c: float(v) for c, v in zip(channels, a, strict=True)} for name, (_, a) in errors.items()}
    return scores, mae


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    scores: dict[str, float]  # contender → holdout MSE in units of each channel's holdout variance
    margin: float
    candidate_mae: dict[str, float] = field(default_factory=dict)  # per channel, raw units
    raw_mae: dict[str, dict[str, float]] = field(default_factory=dict)  # contender → channel → MAE, raw units
    seasonal_period: int | None = None  # seasonal naive's period, when it was a contender


NAIVE_NAMES = {"persistence": "persistence", "mean": "the window mean", "seasonal": "seasonal naive"}


def best_naive(scores: dict[str, float]) -> tuple[str, float]:
    """The naive contender with the lowest score: persistence, the window mean or, when the data has a
    cycle that fits the lookback, seasonal naive.

    >>> best_naive({"candidate": 0.3, "persistence": 0.9, "mean": 0.7, "seasonal": 0.4})
    ('seasonal', 0.4)
    """
    return min(((k, scores[k]) for k in NAIVE_NAMES if k in scores), key=lambda kv: kv[1])


def decide(scores: dict[str, float], margin: float) -> GateDecision:
    cand = scores["candidate"]
    champ = scores.get("champion")
    naive, bar = best_naive(scores)
    if not np.isfinite(cand):
        return GateDecision(False, f"candidate MSE is {cand}", scores, margin)
    if cand >= bar:
        reason = f"candidate MSE {cand:.4g} does not beat {NAIVE_NAMES[naive]} {bar:.4g}, the best naive"
        return GateDecision(False, reason, scores, margin)
    if champ is not None and cand > champ * (1 - margin):
        reason = f"candidate MSE {cand:.4g} is not {margin:.0%} better than the champion {champ:.4g}"
        return GateDecision(False, reason, scores, margin)
    versus = f"the champion {champ:.4g} by more than {margin:.0%}" if champ is not None else "no champion yet"
    beats = f"beats {NAIVE_NAMES[naive]} {bar:.4g}, the best naive, and {versus}"
    return GateDecision(True, f"candidate MSE {cand:.4g} {beats}", scores, margin)
