"""The service core: a micro-batch of raw records in, forecast and dead-letter messages out.

It knows nothing of Kafka: `prepare` (parse, validate, window, stage) → `forecast` (the forward
pass, safe on another thread) → `finish` (encode). pipeline/loop.py drives it from any Source/Sink.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Protocol

import numpy as np

from pipeline.messages import (
    DEAD_LETTER_PAYLOAD_BYTES,
    BadReading,
    BatchDecoder,
    Calibration,
    ForecastEncoder,
    TimePolicy,
    check_key,
    encode_dead_letter,
    format_ts,
)
from pipeline.records import Outgoing, Record
from pipeline.state import EntityState
from pipeline.timegrid import Grid
from pipeline.windows import EntityWindows

SMALL_BATCH = 8  # a batch this small is windowed one reading at a time (ForecastCore._window_each)


@dataclass(frozen=True)
class ServiceConfig:
    forecasts_topic: str = "sensors.forecasts"
    dlq_topic: str = "sensors.dlq"
    max_batch: int = 256
    max_wait_ms: float = 50.0  # the idle poll: a poll returns at the first reading, so not a delay
    max_payload_bytes: int = 64 * 1024
    max_fill_steps: int = 3
    interval_ms: int | None = None  # overrides the model's grid interval (None: the model's, else learned)
    commit_interval_ms: float = 250.0
    entity_ttl_s: float | None = None  # forget entities silent this long (None: keep every window)
    duplicates: str = "refuse"  # a second reading for a filled slot: refuse (dead letter) or replace
    max_missing_fill: int = 3  # readings running a channel may be missing (filled); 0: refuse at once
    grid_tolerance: float = 0.5  # a reading further than this many intervals from its slot is off_grid
    time: TimePolicy = field(default_factory=TimePolicy)  # ts unit, how far ahead of the record a ts may be
    dlq_payload_bytes: int = DEAD_LETTER_PAYLOAD_BYTES  # the most of a refused payload a dead letter carries
    key_policy: str = "refuse"  # a record whose key is not its entity: refuse (bad_key) or accept (counted)

    @classmethod
    def from_settings(cls, s) -> ServiceConfig:
        return cls(
            forecasts_topic=s.forecasts_topic,
            dlq_topic=s.dlq_topic,
            max_batch=s.max_batch,
            max_wait_ms=s.max_wait_ms,
            max_payload_bytes=s.max_payload_bytes,
            max_fill_steps=s.max_fill_steps,
            interval_ms=int(s.reading_interval_s * 1000) if s.reading_interval_s else None,
            commit_interval_ms=s.commit_interval_ms,
            entity_ttl_s=s.entity_ttl_s,
            duplicates=s.duplicate_policy,
            max_missing_fill=s.max_missing_fill,
            grid_tolerance=s.grid_tolerance,
            time=TimePolicy.of(s),
            dlq_payload_bytes=s.dlq_payload_bytes,
            key_policy=s.key_policy,
        )


class Model(Protocol):
    """What the core needs of a model: `models.forecaster.Forecaster` is one."""

    channels: list[str]
    lookback: int
    horizon: int
    name: str
    version: str
    input_bounds: tuple[np.ndarray, np.ndarray] | None  # (low, high) per channel, or None: any float32
    grid: dict | None  # {"interval_ms", "anchor_ms"} of its training data, or None: unknown
    # a model may also have `cycle` (> 0: its forecasts depend on each window's phase on that grid),
    # and then takes predict(x, slot_ts)

    def predict(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class BatchStats:
    readings: int = 0
    forecasts: int = 0
    buffered: int = 0  # valid readings still warming an entity's window
    dead: dict[str, int] = field(default_factory=dict)
    filled: int = 0
    resets: int = 0
    inference_s: float = 0.0
    batch_rows: int = 0
    evicted: int = 0  # idle entities forgotten (their windows freed)
    replaced: int = 0  # readings that replaced a filled slot's values (duplicates="replace")
    channels_filled: int = 0  # missing channel values filled from the last reading
    rekeyed: int = 0  # records whose key was null or not their entity (forecasts are keyed by entity)
    forecast_record_ts: list[int] = field(default_factory=list)  # Kafka timestamps of the readings forecast


class ModelSlot:
    """Holds the serving model; a swap is one reference assignment, so a batch in flight keeps the
    model it started with and the next batch gets the new one.

    It also holds the monitor's calibrations (`pipeline.messages.Calibration`), per version: a
    version's intervals are its split-conformal half-widths times the latest multipliers for that
    version, or the static half-widths until one arrives. A swap so starts from the new version's own."""

    KEPT_VERSIONS = 8  # calibrations of this many versions are kept (a rollback finds its own)

    def __init__(self, model: Model):
        self._model = model
        self.check: Callable[[Model], None] | None = None  # raises if a model cannot be served here (the core's)
        self._scales: dict[str, dict[str, np.ndarray]] = {}  # version → level → (N, H) multipliers
        self._generation = 0  # counts calibrations applied: the cache below is for one model and generation
        self._widths: tuple[Model | None, int, dict[str, np.ndarray]] = (None, 0, {})

    @property
    def model(self) -> Model:
        return self._model

    def swap(self, new: Model) -> Model:
        old = self._model
        if new.channels != old.channels or new.lookback != old.lookback:
            raise ValueError(
                f"new model {new.name} v{new.version} expects channels {new.channels} and lookback {new.lookback}; "
                f"the serving windows hold {old.channels} with lookback {old.lookback}: "
                "restart the service to change them"
            )
        new_step, old_step = (getattr(m, "grid", None) or {} for m in (new, old))
        if new_step.get("interval_ms") != old_step.get("interval_ms") and new_step and old_step:
            raise ValueError(
                f"new model {new.name} v{new.version} was trained every {new_step['interval_ms']} ms; the serving "
                f"windows hold slots of {old_step['interval_ms']} ms: restart the service to change them"
            )
        if self.check is not None:
            self.check(new)
        self._model = new
        return old

    def calibrate(self, cal: Calibration) -> bool:
        """Keep `cal` for its version if it is for this model's name; True if it changes what the
        serving version publishes from the next batch on."""
        model = self._model
        if cal.name != model.name:
            return False
        self._scales.pop(cal.version, None)
        self._scales[cal.version] = cal.scales(model.channels, model.horizon)
        while len(self._scales) > self.KEPT_VERSIONS:
            del self._scales[next(iter(self._scales))]
        self._generation += 1
        return cal.version == str(model.version)

    def interval_widths(self, model: Model) -> dict[str, np.ndarray]:
        """{level: (N, H)} half-widths, raw units, that `model` publishes now (empty: no intervals)."""
        generation = self._generation
        cached_for, cached_generation, widths = self._widths
        if cached_for is model and cached_generation == generation:
            return widths
        static = getattr(model, "interval_widths", None) or {}
        scales = self._scales.get(str(model.version), {})
        widths = {level: w * scales[level] if level in scales else w for level, w in static.items()}
        self._widths = (model, generation, widths)
        return widths


@dataclass
class StagedBatch:
    """A batch between prepare and finish: its dead letters, and the staged windows to forecast, as
    columns (row j of `x` is the window of records[rows[j]])."""

    records: list[Record]
    model: Model
    x: np.ndarray  # (len(rows), L, N), a view of a staging buffer
    rows: np.ndarray  # the record index of each row of x, in record order
    entities: list[str]  # the entity of each row
    slot_ts: np.ndarray  # the slot on the grid each row forecasts from
    inputs_filled: np.ndarray  # values of each row's window filled rather than measured
    step_ms: np.ndarray  # the interval of each row's grid (0: still being learned)
    out: list[Outgoing]
    stats: BatchStats

    @property
    def ready(self) -> list[int]:
        """The record indices staged to forecast (empty: nothing to forecast)."""
        return self.rows.tolist()


class ForecastCore:
    """Pure logic of one micro-batch: every record becomes a forecast, a buffered reading, or a dead letter.

    Per batch, not per reading: the batch is decoded into columns (`BatchDecoder`), pushed into the
    windows as arrays (`EntityWindows.push_many`) and its forecasts encoded from one template
    (`ForecastEncoder`); only a reading off the steady path (a refusal, a gap, a re-send) takes the
    one-at-a-time path, which gives the same answers."""

    def __init__(self, slot: ModelSlot, cfg: ServiceConfig):
        self.slot = slot
        self.cfg = cfg
        m = slot.model
        self.channels = list(m.channels)
        self.grid = None if cfg.interval_ms else Grid.from_dict(getattr(m, "grid", None), cfg.grid_tolerance)
        self.servable(m)
        slot.check = self.servable  # a hot swap is held to the same rule
        self.windows = EntityWindows(  # the model's cadence; each entity at its own phase on it
            len(self.channels),
            m.lookback,
            max_fill_steps=cfg.max_fill_steps,
            interval_ms=cfg.interval_ms or (self.grid.interval_ms if self.grid is not None else None),
            duplicates=cfg.duplicates,
            max_missing_fill=cfg.max_missing_fill,
            tolerance=cfg.grid_tolerance,
            anchor_ms=self.grid.anchor_ms if self.grid is not None else None,
        )
        self.decoder = BatchDecoder(
            self.channels, cfg.max_payload_bytes, policy=cfg.time, allow_missing=cfg.max_missing_fill > 0
        )
        self.encoder = ForecastEncoder(self.channels)
        # two staging buffers: the loop prepares the next batch while the previous one is forecast
        self._staging = [np.zeros((cfg.max_batch, m.lookback, len(self.channels)), dtype=np.float32) for _ in range(2)]
        self._flip = 0
        self._next_eviction = 0.0
        # for the window changelog (pipeline/changelog.py sets `track`): the entities whose windows a
        # batch changed since the last capture, each one's input partition, and those forgotten
        self.track = False
        self.touched: set[str] = set()
        self.home: dict[str, int] = {}
        self.forgotten: list[tuple[str, int]] = []

    def restore(self, restored: dict[str, tuple[EntityState, int]], now_s: float | None = None) -> None:
        """Load the windows read back from the changelog (entity → (its state, its input partition)):
        each entity goes on from where its state left it."""
        now = time.monotonic() if now_s is None else now_s
        for entity, (state, partition) in restored.items():
            self.windows.load(entity, state, now)
            self.home[entity] = partition
            self.touched.discard(entity)

    def release(self, partitions: set[int]) -> None:
        """Partitions handed to another instance: the changelog stops speaking for their entities here
        (no capture, and no tombstone when their idle windows are forgotten), as the new owner writes
        them now."""
        for entity in [e for e, p in self.home.items() if p in partitions]:
            del self.home[entity]
            self.touched.discard(entity)
        self.forgotten = [(e, p) for e, p in self.forgotten if p not in partitions]

    def servable(self, m: Model) -> None:
        """ValueError if this service's windows cannot feed `m`: a model with a cycle needs readings
        slotted on the grid it was trained on, not on SENSORCAST_READING_INTERVAL_S's."""
        trained_every = (getattr(m, "grid", None) or {}).get("interval_ms")
        if getattr(m, "cycle", 0) and self.cfg.interval_ms and self.cfg.interval_ms != trained_every:
            raise ValueError(
                f"model {m.name} v{m.version} has a cycle on a grid of {trained_every} ms, and the service is set "
                f"to slot readings every {self.cfg.interval_ms} ms: unset SENSORCAST_READING_INTERVAL_S, or retrain"
            )

    def process(self, records: list[Record], now_ms: int | None = None) -> tuple[list[Outgoing], BatchStats]:
        """One batch start to end: prepare → forecast → finish."""
        batch = self.prepare(records)
        return self.finish(batch, *self.forecast(batch), now_ms=now_ms)

    def prepare(self, records: list[Record], now_s: float | None = None) -> StagedBatch:
        """Decode, validate and window every record; stage the windows of those ready to forecast.
        `now_s` (monotonic seconds; default now) dates the entities' last word for the idle TTL.
        A replayed record (`Record.replay`) passes the same checks as a live one (key, time policy)
        and only refills its entity's window: its forecast or dead letter was published before the restart."""
        now = time.monotonic() if now_s is None else now_s
        model = self.slot.model  # one model for the whole batch
        n = len(records)
        stats = BatchStats()
        self._flip ^= 1
        x = self._staging[self._flip]
        if n > x.shape[0]:
            x = self._staging[self._flip] = np.zeros((n, model.lookback, len(self.channels)), dtype=np.float32)
        window = self._window_each if n <= SMALL_BATCH else self._window_batch
        live = [not r.replay for r in records]  # a replay passes the same checks, and publishes nothing
        entities, refused, staged = window(records, model, x, live, now, stats)
        if self.track:  # a refused reading may change an entity's state too (a learned grid's trial)
            touched, home = self.touched, self.home
            for rec, entity in zip(records, entities, strict=True):
                if entity is not None:
                    touched.add(entity)
                    home[entity] = rec.partition
        out: list[Outgoing] = []
        for i in sorted(refused):
            if live[i]:
                self._dead_letter(refused[i], records[i], out, stats)
        stats.readings = sum(live)
        rows, slot_ts, inputs_filled, step_ms = staged
        batch = StagedBatch(
            records, model, x[: len(rows)], rows, [entities[i] for i in rows.tolist()], slot_ts, inputs_filled,
            step_ms, out, stats,
        )  # fmt: skip
        ttl = self.cfg.entity_ttl_s
        if ttl is not None and now >= self._next_eviction:  # a scan of every slot: not every batch
            gone = self.windows.evict_idle(now, ttl)
            stats.evicted = len(gone)
            if self.track:
                for entity in gone:
                    self.touched.discard(entity)
                    partition = self.home.pop(entity, None)  # None: its partition went to another instance
                    if partition is not None:
                        self.forgotten.append((entity, partition))
            self._next_eviction = now + min(ttl / 10, 60.0)
        return batch

    def _window_batch(self, records: list[Record], model: Model, x: np.ndarray, live: list[bool], now: float, stats):
        """Decode, check keys and window the batch as columns, once over the batch. Returns (each
        record's entity, the refused by record index, the staged rows' columns); counts in `stats`."""
        decoded = self.decoder.decode([r.value for r in records], [r.timestamp_ms for r in records], model.input_bounds)
        entities, refused = decoded.entity, decoded.refused
        for i, rec in enumerate(records):
            entity = entities[i]
            if entity is not None and rec.key != entity.encode():
                try:
                    rekeyed = check_key(rec.key, entity, self.cfg.key_policy)  # a replay too: the same checks
                except BadReading as bad:
                    refused[i], entities[i] = bad, None
                    continue
                stats.rekeyed += rekeyed if live[i] else 0
        publish = np.array(live, dtype=bool)
        pushes = self.windows.push_many(entities, decoded.ts_ms, decoded.values, decoded.lacking, now, x, publish)
        refused.update(pushes.refused)
        taken = publish & np.fromiter((e is not None for e in entities), dtype=bool, count=len(records))
        if refused:
            taken[list(refused)] = False
        stats.buffered = int((taken & ~pushes.ready).sum())
        stats.filled = int(pushes.filled[taken].sum())
        stats.resets = int(pushes.reset[taken].sum())
        stats.replaced = int(pushes.replaced[taken].sum())
        stats.channels_filled = int(pushes.channels_filled[taken].sum())
        rows = pushes.staged
        return entities, refused, (rows, pushes.slot_ts[rows], pushes.inputs_filled, pushes.step_ms)

    def _window_each(self, records: list[Record], model: Model, x: np.ndarray, live: list[bool], now: float, stats):
        """The same, one reading at a time, for a batch of a few (at low rates most batches hold one
        or two readings): the columns' fixed cost per batch would outweigh what they save. Its
        outcomes are the batch's (tests/pipeline/test_core_fuzz.py runs both)."""
        windows = self.windows
        entities: list[str | None] = [None] * len(records)
        refused: dict[int, BadReading] = {}
        staged: list[tuple[int, int, int, int]] = []  # (row, slot ts, inputs filled, grid interval)
        for i, rec in enumerate(records):
            try:
                reading = self.decoder.parse_one(rec.value, rec.timestamp_ms, model.input_bounds)
                rekeyed = check_key(rec.key, reading.entity, self.cfg.key_policy)
                entities[i] = entity = reading.entity  # a refusal by the windows keeps it, as in _window_batch
                pushed = windows.push(reading, now)
            except BadReading as bad:
                refused[i] = bad
                continue
            if not live[i]:  # a replay refills the window only
                continue
            stats.rekeyed += rekeyed
            stats.filled += pushed.filled
            stats.resets += pushed.reset
            stats.replaced += pushed.replaced
            stats.channels_filled += pushed.channels_filled
            if not pushed.ready:
                stats.buffered += 1
                continue
            x[len(staged)] = windows.window(entity)  # now: a later reading of the entity moves it on
            grid = windows.grid_of(entity)
            step = grid.interval_ms if grid is not None else 0
            staged.append((i, pushed.slot_ts, windows.filled_inputs(entity), step))
        columns = zip(*staged, strict=True) if staged else ((), (), (), ())
        return entities, refused, tuple(np.array(c, dtype=np.int64) for c in columns)

    @staticmethod
    def forecast(batch: StagedBatch) -> tuple[np.ndarray | None, float]:
        """The forward pass alone, safe to run on another thread than prepare and finish."""
        if not len(batch.rows):
            return None, 0.0
        started = time.perf_counter()
        if getattr(batch.model, "cycle", 0):  # its phase: each window's last slot on the model's grid
            pred = batch.model.predict(batch.x, batch.slot_ts)  # (B, H, N)
        else:
            pred = batch.model.predict(batch.x)
        return pred, time.perf_counter() - started

    def finish(
        self, batch: StagedBatch, pred: np.ndarray | None, inference_s: float, now_ms: int | None = None
    ) -> tuple[list[Outgoing], BatchStats]:
        """Encode the batch's forecasts after its dead letters. A row whose forecast holds NaN or inf
        becomes a dead letter (`non_finite_forecast`): a forecast never carries a non-finite number."""
        out, stats, model = batch.out, batch.stats, batch.model
        if not len(batch.rows):
            return out, stats
        stats.inference_s = inference_s
        stats.batch_rows = len(batch.rows)
        per_channel = pred.transpose(0, 2, 1)  # (B, N, H): rows go out as lists
        widths = self.slot.interval_widths(model)  # level → (N, H) half-width, raw units
        bounds = None
        if widths:  # each level's lower and upper around every forecast, (B, 2·levels, N, H)
            scale_of = getattr(model, "interval_scale", None)
            scale = scale_of(batch.x) if scale_of is not None else None  # (B, N): each window's own scale
            half = [w if scale is None else w * scale[:, :, None] for w in widths.values()]
            bounds = np.stack([b for h in half for b in (per_channel - h, per_channel + h)], axis=1)
        finite = np.isfinite(per_channel).all(axis=(1, 2))
        if bounds is not None:
            finite &= np.isfinite(bounds).all(axis=(1, 2, 3))
        rows, entities, slot_ts = batch.rows, batch.entities, batch.slot_ts
        if not finite.all():
            for j in np.flatnonzero(~finite).tolist():
                bad = BadReading(
                    "non_finite_forecast",
                    f"{model.name} v{model.version} forecast NaN or inf for {entities[j]} "
                    f"at {format_ts(int(slot_ts[j]))}",
                )
                self._dead_letter(bad, batch.records[rows[j]], out, stats)
            rows, slot_ts, per_channel = rows[finite], slot_ts[finite], per_channel[finite]
            bounds = bounds[finite] if bounds is not None else None
            entities = [e for e, ok in zip(entities, finite.tolist(), strict=True) if ok]
            inputs_filled, step_ms = batch.inputs_filled[finite], batch.step_ms[finite]
        else:
            inputs_filled, step_ms = batch.inputs_filled, batch.step_ms
        steps = [step or None for step in step_ms.tolist()]  # 0: the entity's grid is still being learned
        produced = format_ts(now_ms if now_ms is not None else int(time.time() * 1000))  # once a batch
        values = self.encoder.encode(
            entities,
            slot_ts.tolist(),
            per_channel,
            model.name,
            model.version,
            produced,
            steps,
            inputs_filled.tolist(),
            bounds,
            tuple(widths),
        )
        topic = self.cfg.forecasts_topic
        out.extend(map(Outgoing, repeat(topic), [e.encode() for e in entities], values))  # keyed by entity
        stats.forecasts += len(values)
        stats.forecast_record_ts = [batch.records[i].timestamp_ms for i in rows.tolist()]
        return out, stats

    def _dead_letter(self, bad: BadReading, rec: Record, out: list[Outgoing], stats: BatchStats) -> None:
        stats.dead[bad.reason] = stats.dead.get(bad.reason, 0) + 1
        letter = encode_dead_letter(bad, rec.topic, rec.partition, rec.offset, rec.value, self.cfg.dlq_payload_bytes)
        key = rec.key if rec.key is None or len(rec.key) <= 1024 else rec.key[:1024]  # bounded like the payload
        out.append(Outgoing(self.cfg.dlq_topic, key, letter))
