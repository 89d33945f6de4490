"""The training window: readings pulled from Kafka, decoded by the service's own code, put on one
time grid (pipeline/timegrid.py) with the service's slot and gap policy, as a polars frame with its
provenance. The grid is inferred from the readings (median gaps, refined over runs) and stored with
the model, so the service slots readings exactly as training did.

    topic ─ topic_slice(now − hours, the most recent ≤ retrain_max_readings, a poll at a time)
          ─▶ parse_reading into preallocated columns (refusals counted by reason, never fatal)
          ─ infer_grid over every entity ─▶ per entity: each reading in its slot, the first of a slot
            kept (a re-send is a duplicate), ≤ max_fill_steps missing slots filled, cut at longer gaps
          ─▶ frame (series, entity, ts on the grid, channels…) + Provenance (with the grid)
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import chain

import numpy as np
import orjson
import polars as pl
from tqdm.auto import tqdm

from pipeline.kafka.reader import topic_slice
from pipeline.messages import BadReading, TimePolicy, check_key, format_ts, parse_reading
from pipeline.records import Record
from pipeline.settings import Settings
from pipeline.timegrid import Grid, GridError, infer_anchor, infer_grid


class WindowError(ValueError):
    """The topic holds nothing a model could be trained on (empty, or no readable channels)."""


@dataclass
class Provenance:
    """Where a training window came from, logged with the run that trained on it."""

    topic: str
    offsets: dict[int, tuple[int, int]]  # partition → [first, end) read
    since: str | None  # the window's start (broker time), ISO 8601
    readings: int = 0  # records read
    refused: dict[str, int] = field(default_factory=dict)  # reason → count
    rows_per_entity: dict[str, int] = field(default_factory=dict)  # after alignment
    filled: int = 0  # steps forward-filled
    segments: int = 0  # contiguous runs kept (a gap longer than max_fill_steps starts a new one)
    time_range: tuple[str, str] | None = None
    grid: dict | None = None  # {"interval_ms", "anchor_ms"}: the cadence and phase the model is trained at
    duplicates: int = 0  # readings dropped as a second reading for a slot already filled
    left_out: int = 0  # older readings in the hours asked for, left out by the cap (retrain_max_readings)
    window_by: str = "record"  # the hours count by the record timestamp, or also by the reading's ts

    def to_dict(self) -> dict:
        return {**asdict(self), "offsets": {str(p): list(r) for p, r in self.offsets.items()}}


@dataclass
class TrainingWindow:
    frame: pl.DataFrame  # series, entity, ts (epoch ms), one float column per channel; time-ordered per series
    channels: list[str]
    provenance: Provenance

    @property
    def grid(self) -> dict | None:
        return self.provenance.grid

    def timed_series(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """One (ts, values) pair per contiguous series: the times on the grid (epoch ms) and (T, N) values."""
        return [
            (g["ts"].to_numpy(), g.select(self.channels).to_numpy().astype(np.float64))
            for g in self.frame.partition_by("series", maintain_order=True)
        ]

    def series(self) -> list[np.ndarray]:
        """One (T, N) array per contiguous series, for models.data.Windows."""
        return [
            g.select(self.channels).to_numpy().astype(np.float64)
            for g in self.frame.partition_by("series", maintain_order=True)
        ]


def infer_channels(values: list[bytes | None], sample: int = 2000) -> list[str]:
    """The most common channel set among the first readings (sorted), when no model says which."""
    seen: Counter[tuple[str, ...]] = Counter()
    for raw in values[:sample]:
        try:
            doc = orjson.loads(raw or b"")
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("values"), dict) and doc["values"]:
            seen[tuple(sorted(doc["values"]))] += 1
    if not seen:
        raise WindowError("no reading in the window names any channel")
    return list(seen.most_common(1)[0][0])


def pull_window(
    settings: Settings,
    hours: float | None,
    channels: list[str] | None = None,
    now_ms: int | None = None,
    progress: bool = False,
) -> TrainingWindow:
    """The last `hours` of the readings topic (None: all of it), measured from `now_ms` (default: the
    wall clock now, never a scheduled time), at most `settings.retrain_max_readings` of them (the
    most recent). The hours count by the Kafka record's timestamp (Kafka seeks by it), and with
    `retrain_window_by="reading"` a reading whose own ts is older is left out as well.

    Read a poll at a time straight into preallocated columns (entity code, ts, values), sized by the
    offsets to read: no list of records, no row per reading."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    since = None if hours is None else now_ms - int(hours * 3_600_000)
    with topic_slice(settings, settings.readings_topic, since, settings.retrain_max_readings) as (plan, batches):
        prov = Provenance(plan.topic, plan.offsets, None if since is None else format_ts(since), plan.total)
        prov.left_out, prov.window_by = plan.left_out, settings.retrain_window_by
        if plan.total == 0:
            raise WindowError(f"{plan.topic} holds no readings since {prov.since or 'its start'}")
        head: list[Record] = []  # the first readings name the channels, when no model does
        batches = iter(batches)
        while not channels and len(head) < 2000:
            batch = next(batches, None)
            if batch is None:
                break
            head.extend(batch)
        channels = channels or infer_channels([r.value for r in head])
        columns = Columns(plan.total, channels, settings, since if settings.retrain_window_by == "reading" else None)
        with tqdm(total=plan.total, desc=f"pull {plan.topic}", unit=" readings", disable=not progress) as bar:
            for batch in chain([head], batches):
                columns.add(batch)
                bar.update(len(batch))
    prov.refused = dict(columns.refused)
    if not columns.n:
        raise WindowError(f"none of the {prov.readings} readings in the window was valid: {prov.refused}")
    names, codes, ts, vals = columns.arrays()
    interval = int(settings.reading_interval_s * 1000) if settings.reading_interval_s else None
    grid = window_grid(codes, ts, interval)
    frame = align_columns(names, codes, ts, vals, channels, settings.max_fill_steps, grid, prov)
    return TrainingWindow(frame, channels, prov)


class Columns:
    """Readings decoded by the service's own code into preallocated columns: entity codes, ts (epoch
    ms) and a float32 values matrix; refusals counted by reason (readings before `since_ms`, when
    given, as `before_window`)."""

    def __init__(self, capacity: int, channels: list[str], settings: Settings, since_ms: int | None = None):
        self.channels, self.settings, self.since_ms = channels, settings, since_ms
        self.codes = np.empty(capacity, dtype=np.int32)
        self.ts = np.empty(capacity, dtype=np.int64)
        self.values = np.empty((capacity, len(channels)), dtype=np.float32)
        self.entities: dict[str, int] = {}
        self.refused: Counter[str] = Counter()
        self.n = 0
        self.policy = TimePolicy.of(settings)

    def add(self, records: list[Record]) -> None:
        s = self.settings
        for rec in records:
            try:
                reading = parse_reading(
                    rec.value, self.channels, s.max_payload_bytes, record_ts_ms=rec.timestamp_ms, policy=self.policy
                )
                check_key(rec.key, reading.entity, s.key_policy)  # what the service refuses never trains
            except BadReading as bad:
                self.refused[bad.reason] += 1
                continue
            if self.since_ms is not None and reading.ts_ms < self.since_ms:
                self.refused["before_window"] += 1
                continue
            i = self.n
            self.codes[i] = self.entities.setdefault(reading.entity, len(self.entities))
            self.ts[i] = reading.ts_ms
            self.values[i] = reading.values
            self.n = i + 1

    def arrays(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """(entity names, each reading's code into them, ts, values), in the order read."""
        n = self.n
        return list(self.entities), self.codes[:n], self.ts[:n], self.values[:n]


def window_grid(codes: np.ndarray, ts: np.ndarray, interval_ms: int | None = None) -> Grid:
    """The grid of readings (entity code, ts): the configured interval at the phase the readings
    show, or both inferred."""
    order = np.argsort(codes, kind="stable")
    stamps = np.split(ts[order], np.flatnonzero(np.diff(codes[order])) + 1)  # one array per entity
    try:
        if interval_ms:
            return Grid(interval_ms, infer_anchor(stamps, interval_ms))
        return infer_grid(stamps)
    except GridError as e:
        raise WindowError(f"cannot tell the readings' cadence: {e}") from None


def align(
    frame: pl.DataFrame, channels: list[str], max_fill_steps: int, grid: Grid | None, prov: Provenance
) -> pl.DataFrame:
    """`align_columns` for a frame (entity, ts, one column per channel)."""
    names = frame["entity"].unique().sort().to_list()
    codes = (frame["entity"].rank("dense").to_numpy() - 1).astype(np.int32)  # index into the sorted names
    ts, vals = frame["ts"].to_numpy().astype(np.int64), frame.select(channels).to_numpy().astype(np.float32)
    return align_columns(names, codes, ts, vals, channels, max_fill_steps, grid, prov)


def align_columns(
    names: list[str],
    codes: np.ndarray,
    ts: np.ndarray,
    vals: np.ndarray,
    channels: list[str],
    max_fill_steps: int,
    grid: Grid | None,
    prov: Provenance,
) -> pl.DataFrame:
    """Every entity on one time grid, as the service windows it: each reading in its slot (the first
    reading of a slot is kept, as the service refuses the second); up to `max_fill_steps` missing slots
    are filled with the last values; a longer gap starts a new series. `grid` None: inferred here.
    Readings are (entity code into `names`, ts, values row); the frame comes out sorted by entity
    name, then time.

    In whole-array steps (no Python per reading): sort by (entity, ts), drop repeated slots, mark
    where a series starts, lay each series over every slot it spans, and fill a missing slot with
    the reading before it (a running maximum of the reading index)."""
    grid = grid or window_grid(codes, ts)
    prov.grid = grid.to_dict()
    by_name = np.argsort(np.argsort(names, kind="stable")).astype(np.int32)  # code → rank of its name
    names = sorted(names)
    codes = by_name[codes]
    order = np.lexsort((ts, codes))  # stable: of two readings in one slot, the first read stays first
    codes, slots, vals = codes[order], grid.slots(ts[order]), vals[order]
    new_entity = np.r_[True, codes[1:] != codes[:-1]]
    keep = new_entity | np.r_[True, np.diff(slots) > 0]  # sorted: a repeated slot is a duplicate
    prov.duplicates += int((~keep).sum())
    codes, slots, vals, new_entity = codes[keep], slots[keep], vals[keep], new_entity[keep]
    starts = new_entity | np.r_[True, np.diff(slots) - 1 > max_fill_steps]  # a new entity, or a gap too long
    series = np.cumsum(starts) - 1  # each reading's series
    first, last = slots[starts], slots[np.r_[starts[1:], True]]  # each series' first and last slot
    offset = np.r_[0, np.cumsum(last - first + 1)]  # where each series begins in the output
    at = offset[series] + (slots - first[series])  # each reading's row in the output
    src = np.zeros(offset[-1], dtype=np.int64)
    src[at] = np.arange(len(slots))
    src = np.maximum.accumulate(src)  # every row: the reading at or before it (a series starts with one)
    row_slots = slots[src] + (np.arange(offset[-1]) - at[src])
    prov.filled += int(offset[-1] - len(slots))
    series_codes = codes[starts]
    nth = np.arange(len(first)) - np.flatnonzero(new_entity[starts])[np.cumsum(new_entity[starts]) - 1]
    series_names = [f"{names[c]}#{k}" for c, k in zip(series_codes.tolist(), nth.tolist(), strict=True)]
    aligned = pl.DataFrame(
        [
            pl.Series("series", series_names, dtype=pl.String).gather(series[src]),
            pl.Series("entity", names, dtype=pl.String).gather(codes[src]),
            pl.Series("ts", grid.anchor_ms + row_slots * grid.interval_ms),
        ]
    ).with_columns(pl.DataFrame(vals[src], schema=channels, orient="row"))
    prov.segments = len(first)
    prov.rows_per_entity = {e: int(n) for e, n in aligned.group_by("entity", maintain_order=True).len().iter_rows()}
    prov.time_range = (format_ts(int(aligned["ts"].min())), format_ts(int(aligned["ts"].max())))
    return aligned
