"""The training window: readings pulled from Kafka, decoded by the service's own code, aligned on
each entity's time grid with the service's gap policy, as a polars frame with its provenance.

    topic ─ read_since(now − hours) ─▶ parse_reading (refusals counted by reason, never fatal)
          ─ per entity: sort, drop late/duplicate, fill ≤ max_fill_steps missing steps, cut at longer gaps
          ─▶ frame (series, entity, ts, channels…) + Provenance
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import orjson
import polars as pl

from pipeline.kafka.reader import read_since
from pipeline.messages import BadReading, format_ts, parse_reading
from pipeline.settings import Settings


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

    def to_dict(self) -> dict:
        return {**asdict(self), "offsets": {str(p): list(r) for p, r in self.offsets.items()}}


@dataclass
class TrainingWindow:
    frame: pl.DataFrame  # series, entity, ts (epoch ms), one float column per channel; time-ordered per series
    channels: list[str]
    provenance: Provenance

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
    for rec in piece.records:
        try:
            reading = parse_reading(rec.value, channels, settings.max_payload_bytes)
        except BadReading as bad:
            refused[bad.reason] += 1
            continue
        entities.append(reading.entity)
        stamps.append(reading.ts_ms)
        rows.append(reading.values)
    prov.refused = dict(refused)
    if not rows:
        raise WindowError(f"none of the {prov.readings} readings in the window was valid: {prov.refused}")
    frame = align(
        pl.DataFrame({"entity": entities, "ts": stamps}).with_columns(
            pl.DataFrame(np.stack(rows), schema=channels, orient="row")
        ),
        channels,
        settings.max_fill_steps,
        int(settings.reading_interval_s * 1000) if settings.reading_interval_s else None,
        prov,
    )
    return TrainingWindow(frame, channels, prov)


def align(
    frame: pl.DataFrame, channels: list[str], max_fill_steps: int, interval_ms: int | None, prov: Provenance
) -> pl.DataFrame:
    """Each entity on its own time grid, as the service windows it: its cadence is the smallest gap
    between its readings (or `interval_ms`); a duplicate or late reading is dropped; up to
    `max_fill_steps` missing steps are filled with the last values; a longer gap starts a new series."""
    out = []
    for (entity,), g in frame.sort("entity", "ts", maintain_order=True).group_by("entity", maintain_order=True):
        ts = g["ts"].to_numpy()
        keep = np.concatenate([[True], np.diff(ts) > 0])  # sorted: a non-increasing step is a duplicate
        ts, vals = ts[keep], g.select(channels).to_numpy()[keep]
        gaps = np.diff(ts)
        step = interval_ms or (int(gaps.min()) if len(gaps) else 0)
        segment, seg_ts, seg_vals = 0, [ts[0]], [vals[0]]
        for i in range(1, len(ts)):
            missing = int(round(gaps[i - 1] / step)) - 1 if step and gaps[i - 1] > step * 1.5 else 0
            if missing > max_fill_steps:
                out.append(_series(entity, segment, seg_ts, seg_vals, channels))
                segment, seg_ts, seg_vals = segment + 1, [], []
            else:
                for k in range(1, missing + 1):
                    seg_ts.append(ts[i - 1] + k * step)
                    seg_vals.append(vals[i - 1])
                prov.filled += missing
            seg_ts.append(ts[i])
            seg_vals.append(vals[i])
        out.append(_series(entity, segment, seg_ts, seg_vals, channels))
    aligned = pl.concat(out)
    prov.segments = len(out)
    prov.rows_per_entity = {e: int(n) for e, n in aligned.group_by("entity").len().iter_rows()}
    prov.time_range = (format_ts(int(aligned["ts"].min())), format_ts(int(aligned["ts"].max())))
    return aligned


def _series(entity: str, segment: int, ts: list, vals: list, channels: list[str]) -> pl.DataFrame:
    data = np.asarray(vals, dtype=np.float32).reshape(len(vals), len(channels))
    return pl.DataFrame(
        {"series": f"{entity}#{segment}", "entity": entity, "ts": np.asarray(ts, dtype=np.int64)}
    ).with_columns(pl.DataFrame(data, schema=channels, orient="row"))
