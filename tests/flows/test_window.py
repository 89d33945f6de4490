"""The training window: the service's decoding and gap policy applied to what the topic holds."""

from __future__ import annotations

import time

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.window import Provenance, WindowError, align, pull_window
from pipeline.kafka import ensure_topics
from pipeline.messages import encode_reading
from pipeline.timegrid import Grid

HOUR = 3_600_000


def test_align_fills_short_gaps_cuts_long_ones_and_drops_repeats() -> None:
    stamps = [0, 1, 2, 2, 5, 6, 20, 21, 22]  # hours: a repeat, a 2-step gap (filled), a 13-step gap (cut)
    frame = pl.DataFrame({"entity": "a", "ts": [h * HOUR for h in stamps], "v": [float(h) for h in stamps]})
    prov = Provenance("t", {}, None)
    out = align(frame, ["v"], max_fill_steps=3, grid=None, prov=prov)
    first = out.filter(pl.col("series") == "a#0")
    assert (first["ts"] // HOUR).to_list() == [0, 1, 2, 3, 4, 5, 6]
    assert first["v"].to_list() == [0.0, 1.0, 2.0, 2.0, 2.0, 5.0, 6.0]  # filled with the last values
    assert out.filter(pl.col("series") == "a#1")["v"].to_list() == [20.0, 21.0, 22.0]
    assert prov.filled == 2 and prov.segments == 2 and prov.rows_per_entity == {"a": 10}
    assert prov.grid == {"interval_ms": HOUR, "anchor_ms": 0} and prov.duplicates == 1


def test_a_jittered_entity_with_resends_keeps_every_reading_and_one_grid() -> None:
    """Before, the smallest gap was the cadence: a jittered entity was cut into one-row series."""
    rng = np.random.default_rng(3)
    hours = np.arange(200)
    jittered = (hours * HOUR + rng.uniform(-0.25, 0.25, 200) * HOUR).astype(np.int64)
    resent = jittered[::10] + 1000  # a gateway re-sends every tenth reading a second later
    clean = hours * HOUR
    frame = pl.DataFrame(
        {
            "entity": ["jit"] * 220 + ["clean"] * 200,
            "ts": np.concatenate([jittered, resent, clean]),
            "v": np.concatenate([hours, hours[::10], hours]).astype(float),
        }
    )
    prov = Provenance("t", {}, None)
    out = align(frame, ["v"], max_fill_steps=3, grid=None, prov=prov)
    assert prov.grid == {"interval_ms": HOUR, "anchor_ms": 0}  # the phase the clocks show, on a round minute
    anchor = 0
    assert prov.rows_per_entity == {"jit": 200, "clean": 200} and prov.segments == 2 and prov.filled == 0
    assert prov.duplicates == 20
    jit = out.filter(pl.col("entity") == "jit")
    assert jit["v"].to_list() == hours.astype(float).tolist() and (jit["ts"] % HOUR == anchor).all()


@pytest.mark.integration
def test_pull_reads_the_window_decodes_like_the_service_and_counts_refusals(kafka_settings, produce) -> None:
    ensure_topics(kafka_settings, [kafka_settings.readings_topic], partitions=2)
    good = [
        (e.encode(), encode_reading(e, h * HOUR, {"temp": float(h), "rh": 50.0}))
        for h in range(30)
        for e in ("north", "south")
    ]
    bad = [(b"x", b"{broken"), (b"x", b'{"entity": "x", "ts": 1, "values": {"temp": NaN, "rh": 1}}')]
    produce(kafka_settings, good[:20] + bad + good[20:])
    window = pull_window(kafka_settings, hours=1.0)
    assert window.channels == ["rh", "temp"]  # inferred from the readings, sorted
    assert window.provenance.readings == 62 and window.provenance.refused == {"not_json": 1, "non_finite": 1}
    assert window.provenance.rows_per_entity == {"north": 30, "south": 30}
    assert sum(end - start for start, end in window.provenance.offsets.values()) == 62
    series = window.series()
    assert len(series) == 2 and all(s.shape == (30, 2) for s in series)
    assert np.allclose(sorted(series[0][:, 1]), np.arange(30))
    with pytest.raises(WindowError, match="no readings"):
        pull_window(kafka_settings, hours=1.0, now_ms=4_102_444_800_000)  # the hour before 2100 holds nothing


@pytest.mark.integration
def test_the_cap_keeps_the_most_recent_readings_and_shows_its_progress(kafka_settings, produce, capsys) -> None:
    ensure_topics(kafka_settings, [kafka_settings.readings_topic], partitions=2)
    readings = [
        (e.encode(), encode_reading(e, h * HOUR, {"temp": float(h)})) for h in range(100) for e in ("north", "south")
    ]
    produce(kafka_settings, readings + [(None, encode_reading("north", 100 * HOUR, {"temp": 1.0}))])
    capped = kafka_settings.model_copy(update={"retrain_max_readings": 81})
    window = pull_window(capped, hours=None, progress=True)
    prov = window.provenance
    assert prov.readings <= 81 and prov.readings + prov.left_out == 201, prov
    assert prov.refused == {"bad_key": 1}  # keyed by nobody: the service refuses it, so training does too
    kept = window.frame.group_by("entity").agg(pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last"))
    assert (kept["last"] == 99 * HOUR).all() and (kept["first"] >= 50 * HOUR).all(), kept  # the newest, of both
    assert "pull" in capsys.readouterr().err  # the progress bar, sized by the offsets to read


@pytest.mark.integration
def test_the_hours_count_by_record_time_or_also_by_the_readings_own_ts(kafka_settings, produce) -> None:
    """Readings sent now about 1970: in the last hour by record time, not by their own ts."""
    ensure_topics(kafka_settings, [kafka_settings.readings_topic])
    now = int(time.time() * 1000)
    old = [(b"a", encode_reading("a", m * 60_000, {"temp": float(m)})) for m in range(30)]
    new = [(b"a", encode_reading("a", now - (30 - m) * 60_000, {"temp": float(m)})) for m in range(30)]
    produce(kafka_settings, old + new)
    by_record = pull_window(kafka_settings, hours=1.0)
    by_reading = pull_window(kafka_settings.model_copy(update={"retrain_window_by": "reading"}), hours=1.0)
    assert by_record.provenance.window_by == "record" and by_record.provenance.rows_per_entity == {"a": 60}
    assert by_reading.provenance.refused == {"before_window": 30} and by_reading.frame.height == 30


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(0, 60), st.floats(-1e3, 1e3, allow_nan=False)),
        min_size=1,
        max_size=80,
    ),
    st.integers(0, 4),
)
def test_align_lays_every_entity_on_its_slots_whatever_the_order_repeats_and_gaps(readings, max_fill) -> None:
    """Each first reading of a slot sits in its slot; a row between readings repeats the one before;
    every series is unbroken and ends at readings; a gap longer than max_fill separates two series."""
    frame = pl.DataFrame(
        {
            "entity": [e for e, _, _ in readings],
            "ts": [h * HOUR for _, h, _ in readings],
            "v": [v for *_, v in readings],
        }
    )
    prov = Provenance("t", {}, None)
    out = align(frame, ["v"], max_fill, Grid(HOUR, 0), prov)
    firsts: dict[tuple[str, int], float] = {}
    for e, h, v in readings:
        firsts.setdefault((e, h), float(np.float32(v)))
    assert out.height == len(firsts) + prov.filled and prov.duplicates == len(readings) - len(firsts)
    rows = {(e, ts // HOUR): v for e, ts, v in out.select("entity", "ts", "v").iter_rows()}
    assert all(rows[k] == v for k, v in firsts.items())
    for (series,), g in out.group_by("series", maintain_order=True):
        hours, values = (g["ts"] // HOUR).to_list(), g["v"].to_list()
        entity = g["entity"][0]
        assert hours == list(range(hours[0], hours[-1] + 1)) and series.startswith(f"{entity}#")
        assert (entity, hours[0]) in firsts and (entity, hours[-1]) in firsts
        for i in range(1, len(hours)):
            if (entity, hours[i]) not in firsts:
                assert values[i] == values[i - 1]
    per_entity = {e: sorted({h for f, h in firsts if f == e}) for e, _ in firsts}
    cuts = sum(1 for hs in per_entity.values() for a, b in zip(hs, hs[1:], strict=False) if b - a - 1 > max_fill)
    assert prov.segments == len(per_entity) + cuts
