"""The one time grid: slots, and a cadence read off messy clocks."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.timegrid import Grid, infer_grid

HOUR = 3_600_000


def jittered(n: int, interval: int, jitter: float, seed: int, anchor: int = 0, start: int = 1_795_514_400_000):
    rng = np.random.default_rng(seed)
    base = start - start % interval + anchor + interval * np.arange(n)
    return (base + rng.uniform(-jitter, jitter, n) * interval).astype(np.int64)


@settings(max_examples=60, deadline=None)
@given(
    interval=st.sampled_from([1000, 15_000, 60_000, 3_600_000, 7_777]),
    # up to ±0.24 of the interval: at ±0.25 two readings can lie 1.5 intervals apart, which is one step
    # or two (a missed reading); no estimator can tell, and Hypothesis found such a case (seed 1556)
    jitter=st.floats(0, 0.24),
    anchor_frac=st.floats(0, 0.999),
    seed=st.integers(0, 10_000),
)
def test_a_jittered_clock_keeps_its_cadence_and_every_reading_its_slot(interval, jitter, anchor_frac, seed) -> None:
    anchor = int(anchor_frac * interval)
    entities = [jittered(200, interval, jitter, seed + e, anchor) for e in range(3)]
    grid = infer_grid(entities)
    assert abs(grid.interval_ms - interval) <= max(1, 0.002 * interval)
    for ts in entities:
        slots = [grid.slot(int(t)) for t in ts]
        assert np.all(np.diff(slots) == 1), "each reading in its own slot, one after another"


def test_resends_and_gaps_do_not_move_the_cadence() -> None:
    ts = list(range(0, 48 * HOUR, HOUR))
    messy = sorted(ts + [t + 1000 for t in ts[::5]])  # a re-send every fifth reading, 1 s later
    del messy[20:26]  # and a gap
    assert infer_grid([messy]).interval_ms == HOUR


def test_slot_rounds_half_an_interval_away_and_the_grid_round_trips() -> None:
    g = Grid(HOUR, 30 * 60_000)  # readings at half past
    assert g.slot(g.ts_of(5)) == 5 and g.slot(g.ts_of(5) + HOUR // 2 - 1) == 5 and g.slot(g.ts_of(5) - HOUR // 2) == 5
    assert Grid.from_dict(g.to_dict()) == g and Grid.from_dict(None) is None
    assert Grid(HOUR, 0, tolerance=0.1).off_grid(HOUR // 5) and not g.off_grid(HOUR // 5)


@settings(max_examples=60, deadline=None)
@given(
    interval=st.sampled_from([15_000, 60_000, 3_600_000, 7_777]),
    jitter=st.floats(0, 0.2),
    resend_after=st.floats(0.0005, 0.1),  # of the interval: a second after an hourly reading, and more
    resending=st.integers(1, 3),  # of three entities; the others clean
    seed=st.integers(0, 10_000),
)
def test_streams_of_resends_and_mixes_with_clean_entities_keep_their_cadence(
    interval, jitter, resend_after, resending, seed
) -> None:
    """Before, a stream where every reading was re-sent 1 s later inferred a 1 s grid ("too little
    data"), and one re-sending entity beside a clean one inferred half the interval."""
    entities = [jittered(100, interval, jitter, seed + e) for e in range(3)]
    for e in range(resending):
        ts = entities[e]
        entities[e] = np.sort(np.concatenate([ts, ts + max(1, int(resend_after * interval))]))
    grid = infer_grid(entities)
    assert abs(grid.interval_ms - interval) <= max(1, 0.002 * interval), grid
    for ts in entities:
        steps = np.diff([grid.slot(int(t)) for t in np.unique(ts)])
        assert set(steps.tolist()) <= {0, 1}, "a re-send shares its reading's slot; no slot is skipped"
