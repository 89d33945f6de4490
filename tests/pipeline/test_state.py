"""A window written to the changelog and read back is the window: fuzzed with the messy streams of
test_windows_batch, cut at any point, every entity exported, encoded, decoded and loaded into fresh
windows, the rest of the stream then meets the same outcomes, windows and grids as on the original."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.messages import BadReading, Reading
from pipeline.state import BadState, EntityState, decode_state, encode_state
from pipeline.windows import EntityWindows
from tests.pipeline.test_windows_batch import configs, outcome, reading

H = 3_600_000
N, L = 2, 4


def push(windows: EntityWindows, e: str, ts: int, v: np.ndarray):
    try:
        return outcome(windows.push(Reading(e, ts, v, int(np.isnan(v).sum()))))
    except BadReading as bad:
        return outcome(bad)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.lists(reading, min_size=10, max_size=120), cut=st.integers(0, 120), cfg=configs)
def test_a_restored_window_goes_on_as_the_original(stream, cut, cfg) -> None:
    original = EntityWindows(N, L, capacity=2, **cfg)
    clock: dict[str, int] = {}
    rows = []
    for e, step, jitter, v, short in stream:
        clock[e] = max(0, clock.get(e, 0) + step)
        rows.append((e, clock[e] * H + jitter, np.array([v, np.nan if short else -v], np.float32)))
    cut = min(cut, len(rows))
    for row in rows[:cut]:
        push(original, *row)
    restored = EntityWindows(N, L, capacity=2, **cfg)
    for e in original.slots:
        restored.load(e, decode_state(encode_state(original.export(e, position=cut))))
    for e, ts, v in rows[cut:]:
        assert push(restored, e, ts, v) == push(original, e, ts, v)
        if e in original.slots and original.count[original.slots[e]] == L:
            np.testing.assert_array_equal(restored.window(e), original.window(e))
            assert restored.filled_inputs(e) == original.filled_inputs(e)
    assert restored.slots.keys() == original.slots.keys()
    for e in original.slots:
        assert restored.grid_of(e) == original.grid_of(e)


def test_a_record_of_another_shape_or_format_is_refused_not_misread() -> None:
    state = EntityState(lookback=3, channels=2, values=np.ones((3, 2), np.float32), count=3, position=9)
    data = encode_state(state)
    for bad in (None, b"", b"junk", data[:-1], b"SCW0" + data[4:]):
        with pytest.raises(BadState):
            decode_state(bad)
    with pytest.raises(ValueError, match="does not fit"):
        EntityWindows(2, 4).load("a", decode_state(data))


@given(junk=st.binary(max_size=400), head=st.booleans())
def test_junk_on_the_changelog_is_refused_as_bad_state_and_nothing_else(junk: bytes, head: bool) -> None:
    """The changelog topic is not trusted: anything on it decodes to a window or raises BadState."""
    data = b"SCW1" + junk if head else junk
    try:
        state = decode_state(data)
    except BadState:
        return
    assert state.values.shape == (state.lookback, state.channels) and 0 <= state.count <= state.lookback
