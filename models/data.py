"""From files to training windows: load a frame, split it chronologically, scale it with the
training split's statistics, and cut (lookback, horizon) windows as strided views, not copies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # polars only where frames are read: the service imports this module and never needs it
    import polars as pl

from models.sources import DataError, channel_columns, guess_time_column

# -- splitting and scaling ----------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Row borders [start, end) of train, val and test; val and test start `lookback` rows early so
    their first window's history comes from the split before (the Time-Series-Library convention)."""

    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]


def ratio_split(n: int, lookback: int, train: float = 0.7, test: float = 0.2) -> Split:
    n_train, n_test = int(n * train), int(n * test)
    n_val = n - n_train - n_test
    return Split((0, n_train), (n_train - lookback, n_train + n_val), (n - n_test - lookback, n))


def ett_hour_split(n: int, lookback: int) -> Split:
    """12/4/4 months of hourly rows, as in the Informer paper and everything since."""
    month = 30 * 24
    a, b, c = 12 * month, 16 * month, 20 * month
    if n < c:
        raise DataError(f"an ETTh split needs {c} rows, the file has {n}")
    return Split((0, a), (a - lookback, b), (b - lookback, c))


def split_for(path: Path, n: int, lookback: int, override: str | None = None) -> Split:
    """ETTh*.csv gets the literature's split, any other file 70/10/20; `override` is 'ett' or 'a/b/c'."""
    if override == "ett" or (override is None and Path(path).name.lower().startswith("etth")):
        return ett_hour_split(n, lookback)
    if override:
        a, b, c = (float(p) for p in override.split("/"))
        total = a + b + c
        return ratio_split(n, lookback, a / total, c / total)
    return ratio_split(n, lookback)


@dataclass(frozen=True)
class Scaler:
    mean: np.ndarray  # (N,)
    std: np.ndarray  # (N,)

    @classmethod
    def fit(cls, values: np.ndarray) -> Scaler:
        std = values.std(axis=0)
        return cls(values.mean(axis=0), np.where(std > 1e-8, std, 1.0))

    @classmethod
    def identity(cls, n: int) -> Scaler:
        return cls(np.zeros(n), np.ones(n))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def inverse(self, x: np.ndarray) -> np.ndarray:
        return x * self.std + self.mean

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Scaler:
        return cls(np.asarray(d["mean"], dtype=np.float64), np.asarray(d["std"], dtype=np.float64))


# -- time features ---------------------------------------------------------------------------------


def time_features(times: np.ndarray) -> np.ndarray:
    """The Time-Series-Library's `timeF` encoding: calendar position scaled to [-0.5, 0.5].
    Hourly (or finer) data gets hour of day, day of week, day of month, day of year; daily data
    drops the hour. (T,) datetime64 → (T, 4 or 3) float32."""
    import polars as pl

    t = pl.Series(np.asarray(times, dtype="datetime64[ms]"))
    columns = [
        (t.dt.weekday().to_numpy() - 1) / 6.0 - 0.5,
        (t.dt.day().to_numpy() - 1) / 30.0 - 0.5,
        (t.dt.ordinal_day().to_numpy() - 1) / 365.0 - 0.5,
    ]
    if len(t) > 1 and (np.diff(np.asarray(times, dtype="datetime64[ms]").astype(np.int64)) < 86_400_000).any():
        columns.insert(0, t.dt.hour().to_numpy() / 23.0 - 0.5)
    return np.stack(columns, axis=1).astype(np.float32)


def wants_time_features(model: torch.nn.Module) -> bool:
    """Whether a network's forward takes (x, x_mark, y_mark): the Transformer built with time features."""
    return getattr(getattr(model, "cfg", None), "n_time_features", 0) > 0


def wants_cycle(model: torch.nn.Module) -> bool:
    """Whether a network's forward takes each window's cycle index: the iTransformer with a cycle."""
    return getattr(getattr(model, "cfg", None), "cycle", 0) > 0


# -- windows -------------------------------------------------------------------------------------


class Windows(torch.utils.data.Dataset):
    """All (x, y) windows of one or more series, as views: `unfold` strides over the data, no copies.

    Several series (one per entity) are kept apart, so no window straddles two entities. `starts` is
    each series' first row as a slot on the data's time grid (default 0): a window's cycle index is
    the slot of its first step, so a cycle-aware network sees the same phase in training and serving.
    """

    def __init__(
        self,
        series: list[np.ndarray],
        lookback: int,
        horizon: int,
        marks: list[np.ndarray] | None = None,
        starts: list[int] | None = None,
    ):
        self.lookback, self.horizon = lookback, horizon
        kept_starts: list[int] = []
        size = lookback + horizon
        self.views: list[Tensor] = []
        self.mark_views: list[Tensor] = []  # time features of the same windows, when given
        for i, s in enumerate(series):
            t = torch.as_tensor(np.ascontiguousarray(s, dtype=np.float32))
            if t.shape[0] >= size:
                self.views.append(t.unfold(0, size, 1))  # (num, N, L + H), a view
                kept_starts.append(int(starts[i]) if starts is not None else 0)
                if marks is not None:
                    m = torch.as_tensor(np.ascontiguousarray(marks[i], dtype=np.float32))
                    self.mark_views.append(m.unfold(0, size, 1))
        if not self.views:
            raise DataError(f"no series is long enough for lookback {lookback} + horizon {horizon}")
        self.offsets = np.cumsum([0] + [v.shape[0] for v in self.views])
        self.starts = np.asarray(kept_starts, dtype=np.int64)  # slot of each kept series' first row

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        w = self.views[k][i - self.offsets[k]].T  # (L + H, N)
        return w[: self.lookback], w[self.lookback :]

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """A whole batch by fancy indexing, far cheaper than a DataLoader's per-item collate."""
        w = self._gather(self.views, index)
        return w[:, : self.lookback], w[:, self.lookback :]

    def inputs_for(self, model: torch.nn.Module, index: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        """(inputs, y) in the form this network's forward takes."""
        return self.model_batch(index, wants_time_features(model), wants_cycle(model))

    def cycle_index(self, index: Tensor) -> Tensor:
        """The slot of each window's first step on the data's grid (B,)."""
        i = index.numpy().astype(np.int64)
        k = np.searchsorted(self.offsets, i, side="right") - 1
        return torch.from_numpy(self.starts[k] + i - self.offsets[k])

    def model_batch(
        self, index: Tensor, with_marks: bool = False, with_cycle: bool = False
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        """(inputs, y): inputs are (x,), (x, x_mark, y_mark) for a network that takes time features, or
        (x, None, cycle_index) for one with a cycle."""
        x, y = self.batch(index)
        if with_cycle:
            return (x, None, self.cycle_index(index)), y
        if not with_marks:
            return (x,), y
        if not self.mark_views:
            raise DataError("this network needs time features, and these windows were built without them")
        m = self._gather(self.mark_views, index)
        return (x, m[:, : self.lookback], m[:, self.lookback :]), y

    def _gather(self, views: list[Tensor], index: Tensor) -> Tensor:
        if len(views) == 1:
            return views[0][index].transpose(1, 2)  # (B, L + H, N)
        parts = []
        for i in index:
            k = int(np.searchsorted(self.offsets, int(i), side="right") - 1)
            parts.append(views[k][int(i) - self.offsets[k]].T)
        return torch.stack(parts)


def rolling_origins(
    parts: list[np.ndarray],
    val_rows: int | list[int],
    lookback: int,
    horizon: int,
    folds: int,
    starts: list[int] | None = None,
) -> list[tuple[Windows, Windows]]:
    """Earlier (train, validation) folds cut from the training rows alone, for rolling-origin
    validation: fold k (1 ≤ k < folds) validates on the k-th block of `val_rows` rows counted back
    from the end of each training series and trains on what comes before it. One validation period
    is a weak judge of a configuration (ETTh1's four months, Exchange's two years); several, each
    scored on data its model never saw, are less so. `parts` are the scaled training series (T, N),
    one per entity; `starts` their first slot on the time grid. With `starts` and one `val_rows`, the
    folds are cut at common times: one cut for every series per fold, as the time split cuts
    (`_common_origins`). Oldest fold first."""
    if starts is not None and not isinstance(val_rows, list):
        return _common_origins(parts, val_rows, lookback, horizon, folds, starts)
    rows = val_rows if isinstance(val_rows, list) else [val_rows] * len(parts)
    starts = starts or [0] * len(parts)
    made: list[tuple[Windows, Windows]] = []
    for k in range(folds - 1, 0, -1):
        fit, held, fit_at, held_at = [], [], [], []
        for part, v, s in zip(parts, rows, starts, strict=True):
            cut = len(part) - k * v
            if cut - lookback - horizon < 1 or v < horizon:
                continue  # too short a series for this origin
            fit.append(part[:cut])
            held.append(part[cut - lookback : cut + v])
            fit_at.append(s)
            held_at.append(s + cut - lookback)
        if not fit:
            raise DataError(f"the training split is too short for {folds} rolling origins of {rows[0]} rows")
        made.append((Windows(fit, lookback, horizon, starts=fit_at), Windows(held, lookback, horizon, starts=held_at)))
    return made


def _common_origins(
    parts: list[np.ndarray], block: int, lookback: int, horizon: int, folds: int, starts: list[int]
) -> list[tuple[Windows, Windows]]:
    """Rolling origins cut at the same slots for every series: fold k validates on the slots
    [end - k·block, end - (k-1)·block), `end` the slot after the last training row of any series, and
    trains on every row before that block's start. No series' validation block lies before another's
    training rows (a row count per series would cut each at its own time: where rows are missing, or
    series start late, one entity's validation overlapped another's training)."""
    end = max(s + len(p) for p, s in zip(parts, starts, strict=True))
    made: list[tuple[Windows, Windows]] = []
    for k in range(folds - 1, 0, -1):
        low, high = end - k * block, end - (k - 1) * block  # the validation block's slots
        fit, held, fit_at, held_at = [], [], [], []
        for part, s in zip(parts, starts, strict=True):
            cut = low - s  # rows of this series before the block
            if min(cut, len(part)) - lookback - horizon >= 1:
                fit.append(part[: max(cut, 0)])
                fit_at.append(s)
            first, stop = max(cut - lookback, 0), min(high - s, len(part))
            if stop - first >= lookback + horizon and block >= horizon:
                held.append(part[first:stop])  # its first target is at slot s + first + lookback >= low
                held_at.append(s + first)
        if not fit or not held:
            raise DataError(f"the training split is too short for {folds} rolling origins of {block} rows")
        made.append((Windows(fit, lookback, horizon, starts=fit_at), Windows(held, lookback, horizon, starts=held_at)))
    return made


@dataclass
class Prepared:
    """Everything a training run needs from one file: scaled splits as windows, and how to undo it."""

    channels: list[str]
    scaler: Scaler
    train: Windows
    val: Windows
    test: Windows


def prepare(
    frame: pl.DataFrame,
    lookback: int,
    horizon: int,
    split: Split | None = None,
    *,
    entity_column: str | None = None,
    time_column: str | None = None,
    channels: list[str] | None = None,
    scale: bool = True,
    path_hint: Path | None = None,
    with_time_features: bool = False,
) -> Prepared:
    time_column = time_column or guess_time_column(frame)
    channels = channels or channel_columns(frame, time_column, entity_column)
    missing = [c for c in channels if c not in frame.columns]
    if missing:
        raise DataError(f"channels {missing} are not columns of the data ({frame.columns})")
    groups = frame.partition_by(entity_column, maintain_order=True) if entity_column else [frame]
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    marks: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    if with_time_features and not time_column:
        raise DataError("time features need a time column")
    starts: dict[str, list[int]] = {"train": [], "val": [], "test": []}  # rows are consecutive slots
    for g in groups:
        if time_column:
            g = g.sort(time_column)
        values = g.select(channels).to_numpy().astype(np.float64)
        if not np.isfinite(values).all():
            raise DataError("the data holds missing or non-finite values; fill them before training")
        sp = (
            split
            if split is not None and not entity_column
            else split_for(path_hint or Path("x.csv"), len(values), lookback)
        )
        for name in parts:
            a, b = getattr(sp, name)
            parts[name].append(values[max(a, 0) : b])
            starts[name].append(max(a, 0))
            if with_time_features:
                marks[name].append(time_features(g[time_column].to_numpy()[max(a, 0) : b]))
    scaler = Scaler.fit(np.concatenate(parts["train"])) if scale else Scaler.identity(len(channels))
    made = {
        k: Windows(
            [scaler.transform(v) for v in vs], lookback, horizon, marks[k] if with_time_features else None, starts[k]
        )
        for k, vs in parts.items()
    }
    return Prepared(channels, scaler, made["train"], made["val"], made["test"])
