"""The training window: the service's decoding and gap policy applied to what the topic holds."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from flows.window import Provenance, WindowError, align, pull_window
from pipeline.kafka import ensure_topics
from pipeline.messages import encode_reading

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
