"""`push_many` is `push` over a batch: fuzzed with messy streams (re-sends, late and jittered
readings, gaps, lacking channels, a clock that changes its cadence), a batch at a time against one
reading at a time, every outcome, staged window and the final windows must agree."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.messages import BadReading, Reading
from pipeline.timegrid import Grid
from pipeline.windows import EntityWindows

H = 3_600_000
N, L = 2, 4

reading = st.tuples(
    st.sampled_from("abcdefgh"),  # a batch holds some entities once (the steady state), some twice
    st.one_of(st.just(1), st.just(1), st.just(1), st.sampled_from([0, -1, 2, 3, 7])),  # mostly the next step
    st.one_of(st.just(0), st.just(0), st.sampled_from([1000, -600_000, 1_790_000])),  # jitter, re-sends
    st.floats(-100, 100, width=32),
    st.one_of(*[st.just(False)] * 7, st.just(True)),  # the second channel missing
)
configs = st.fixed_dictionaries(
    {
        "grid": st.sampled_from([None, Grid(H), Grid(H, 0, 0.25)]),
        "interval_ms": st.sampled_from([None, H]),
        "duplicates": st.sampled_from(["refuse", "replace"]),
        "max_missing_fill": st.sampled_from([0, 1, 3]),
        "max_fill_steps": st.sampled_from([0, 2]),
    }
)


def outcome(pushed_or_bad) -> tuple:
    if isinstance(pushed_or_bad, BadReading):
        return ("refused", str(pushed_or_bad))
    p = pushed_or_bad
    return (p.ready, p.slot_ts, p.filled, p.reset, p.replaced, p.channels_filled)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.lists(reading, min_size=30, max_size=160), cuts=st.lists(st.integers(1, 16), min_size=1), cfg=configs)
def test_push_many_agrees_with_push_one_at_a_time(stream, cuts, cfg) -> None:
    one, many = EntityWindows(N, L, capacity=2, **cfg), EntityWindows(N, L, capacity=2, **cfg)
    clock: dict[str, int] = {}  # each entity's own step count: steady, with re-sends, late ones, gaps
    rows = []
    for e, step, jitter, v, short in stream:
        clock[e] = max(0, clock.get(e, 0) + step)
        rows.append((e, clock[e] * H + jitter, np.array([v, np.nan if short else -v], np.float32)))
    start, k = 0, 0
    while start < len(rows):
        batch = rows[start : start + cuts[k % len(cuts)]]
        start, k = start + len(batch), k + 1
        expected, windows = [], []
        for e, ts, v in batch:
            try:
                pushed = one.push(Reading(e, ts, v, int(np.isnan(v).sum())), seen_s=float(k))
            except BadReading as bad:
                pushed = bad
            expected.append(outcome(pushed))
            if not isinstance(pushed, BadReading) and pushed.ready:
                grid = one.grid_of(e)
                windows.append((one.window(e).copy(), one.filled_inputs(e), grid.interval_ms if grid else 0))
        stage = np.full((len(batch), L, N), np.nan, np.float32)
        values = np.stack([v for _, _, v in batch])
        got = many.push_many(
            [e for e, _, _ in batch],
            np.array([ts for _, ts, _ in batch], np.int64),
            values,
            np.isnan(values).sum(axis=1),
            float(k),
            stage,
        )
        for i in range(len(batch)):
            if i in got.refused:
                assert expected[i] == ("refused", str(got.refused[i]))
            else:
                assert expected[i] == (
                    got.ready[i],
                    got.slot_ts[i],
                    got.filled[i],
                    got.reset[i],
                    got.replaced[i],
                    got.channels_filled[i],
                )
        assert len(got.staged) == len(windows)
        for j, (window, filled, step) in enumerate(windows):
            np.testing.assert_array_equal(stage[j], window)
            assert got.inputs_filled[j] == filled and got.step_ms[j] == step
    assert one.slots.keys() == many.slots.keys()
    for e in one.slots:
        np.testing.assert_array_equal(one.window(e), many.window(e))
        assert one.filled_inputs(e) == many.filled_inputs(e) and one.grid_of(e) == many.grid_of(e)


def test_the_steady_state_is_written_in_one_pass_and_staged_in_row_order() -> None:
    w = EntityWindows(1, 2, grid=Grid(H))
    stage = np.zeros((4, 2, 1), np.float32)
    for step in (0, 1):
        w.push_many(
            ["a", "b"], np.array([step * H] * 2), np.array([[step], [10 + step]], np.float32), np.zeros(2), 0, stage
        )
    got = w.push_many(["b", "a"], np.array([2 * H] * 2), np.array([[12.0], [2.0]], np.float32), np.zeros(2), 0, stage)
    assert got.staged.tolist() == [0, 1] and got.ready.all() and not got.refused
    assert stage[:2, :, 0].tolist() == [[11.0, 12.0], [1.0, 2.0]]
    assert got.slot_ts.tolist() == [2 * H, 2 * H]
