"""The training window: readings pulled from Kafka, decoded by the service's own code, put on one
time grid (pipeline/timegrid.py) with the service's slot and gap policy, as a polars frame with its
provenance. The grid is inferred from the readings (median gaps, refined over runs) and stored with
the model, so the service slots readings exactly as training did.

    topic ─ read_since(now − hours) ─▶ parse_reading (refusals counted by reason, never fatal)
          ─ infer_grid over every entity ─▶ per entity: each reading in its slot, the first of a slot
            kept (a re-send is a duplicate), ≤ max_fill_steps missing slots filled, cut at longer gaps
          ─▶ frame (series, entity, ts on the grid, channels…) + Provenance (with the grid)
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import orjson
import polars as pl

from pipeline.kafka.reader import read_since
from pipeline.messages import BadReading, TimePolicy, format_ts, parse_reading
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
    timeout_s: float = 300.0,
) -> TrainingWindow:
    """The last `hours` of the readings topic (None: all of it), measured from `now_ms` (default: the
    wall clock now, never a scheduled time)."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    since = None if hours is None else now_ms - int(hours * 3_600_000)
    piece = read_since(settings, settings.readings_topic, since, timeout_s=timeout_s)
    prov = Provenance(piece.topic, piece.offsets, None if since is None else format_ts(since), len(piece.records))
    if not piece.records:
        raise WindowError(f"{piece.topic} holds no readings since {prov.since or 'its start'}")
    channels = channels or infer_channels([r.value for r in piece.records])
    entities, stamps, rows = [], [], []
    refused: Counter[str] = Counter()
    policy = TimePolicy.of(settings)
    for rec in piece.records:
        try:
            reading = parse_reading(
                rec.value, channels, settings.max_payload_bytes, record_ts_ms=rec.timestamp_ms, policy=policy
            )
        except BadReading as bad:
            refused[bad.reason] += 1
            continue
        entities.append(reading.entity)
        stamps.append(reading.ts_ms)
        rows.append(reading.values)
    prov.refused = dict(refused)
    if not rows:
        raise WindowError(f"none of the {prov.readings} readings in the window was valid: {prov.refused}")
    frame = pl.DataFrame({"entity": entities, "ts": stamps}).with_columns(
        pl.DataFrame(np.stack(rows), schema=channels, orient="row")
    )
    interval = int(settings.reading_interval_s * 1000) if settings.reading_interval_s else None
    frame = align(frame, channels, settings.max_fill_steps, window_grid(frame, interval), prov)
    return TrainingWindow(frame, channels, prov)


def window_grid(frame: pl.DataFrame, interval_ms: int | None = None) -> Grid:
    """The grid of a frame's readings (entity, ts): the configured interval at the phase the readings
    show, or both inferred."""
    stamps = [g["ts"].to_list() for g in frame.partition_by("entity", maintain_order=True)]
    try:
        if interval_ms:
            return Grid(interval_ms, infer_anchor(stamps, interval_ms))
        return infer_grid(stamps)
    except GridError as e:
        raise WindowError(f"cannot tell the readings' cadence: {e}") from None


def align(
    frame: pl.DataFrame, channels: list[str], max_fill_steps: int, grid: Grid | None, prov: Provenance
) -> pl.DataFrame:
    """Every entity on one time grid, as the service windows it: each reading in its slot (the first
    reading of a slot is kept, as the service refuses the second); up to `max_fill_steps` missing slots
    are filled with the last values; a longer gap starts a new series. `grid` None: inferred here."""
    grid = grid or window_grid(frame)
    prov.grid = grid.to_dict()
    out = []
    for (entity,), g in frame.sort("entity", "ts", maintain_order=True).group_by("entity", maintain_order=True):
        slots = grid.slots(g["ts"].to_numpy().astype(np.int64))
        keep = np.concatenate([[True], np.diff(slots) > 0])  # sorted: a repeated slot is a duplicate
        prov.duplicates += int((~keep).sum())
        slots, vals = slots[keep], g.select(channels).to_numpy()[keep]
        segment, seg_slots, seg_vals = 0, [slots[0]], [vals[0]]
        for i in range(1, len(slots)):
            missing = int(slots[i] - slots[i - 1]) - 1
            if missing > max_fill_steps:
                out.append(_series(entity, segment, grid, seg_slots, seg_vals, channels))
                segment, seg_slots, seg_vals = segment + 1, [], []
            else:
                for k in range(1, missing + 1):
                    seg_slots.append(slots[i - 1] + k)
                    seg_vals.append(vals[i - 1])
                prov.filled += missing
            seg_slots.append(slots[i])
            seg_vals.append(vals[i])
        out.append(_series(entity, segment, grid, seg_slots, seg_vals, channels))
    aligned = pl.concat(out)
    prov.segments = len(out)
    prov.rows_per_entity = {e: int(n) for e, n in aligned.group_by("entity").len().iter_rows()}
    prov.time_range = (format_ts(int(aligned["ts"].min())), format_ts(int(aligned["ts"].max())))
    return aligned


def _series(entity: str, segment: int, grid: Grid, slots: list, vals: list, channels: list[str]) -> pl.DataFrame:
    data = np.asarray(vals, dtype=np.float32).reshape(len(vals), len(channels))
    ts = grid.anchor_ms + np.asarray(slots, dtype=np.int64) * grid.interval_ms
    return pl.DataFrame({"series": f"{entity}#{segment}", "entity": entity, "ts": ts}).with_columns(
        pl.DataFrame(data, schema=channels, orient="row")
    )
