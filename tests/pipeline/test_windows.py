from __future__ import annotations

import numpy as np
import pytest

from pipeline.messages import BadReading, Reading
from pipeline.timegrid import Grid
from pipeline.windows import EntityWindows

H = 3_600_000


def r(entity: str, step: float, *values: float) -> Reading:
    vals = np.asarray(values or (step,), dtype=np.float32)
    return Reading(entity, int(step * H), vals, int(np.isnan(vals).sum()))


def test_window_fills_then_rolls_oldest_first() -> None:
    w = EntityWindows(1, 3)
    assert [w.push(r("a", i)).ready for i in range(5)] == [False, False, True, True, True]
    assert w.window("a")[:, 0].tolist() == [2.0, 3.0, 4.0]


def test_entities_are_independent_and_gather_matches_window() -> None:
    w = EntityWindows(2, 3, capacity=1)  # forces growth
    for i in range(4):
        w.push(r("a", i, i, -i))
        w.push(r("b", i, 10 + i, 0))
    batch = w.gather(["b", "a"])
    assert batch.shape == (2, 3, 2)
    assert np.array_equal(batch[0], w.window("b")) and np.array_equal(batch[1], w.window("a"))
    assert batch[1, :, 0].tolist() == [1.0, 2.0, 3.0]


def test_duplicate_and_late_readings_are_refused_without_side_effects() -> None:
    w = EntityWindows(1, 3)
    for i in range(3):
        w.push(r("a", i))
    before = w.window("a").copy()
    with pytest.raises(BadReading) as dup:
        w.push(r("a", 2, 99.0))
    assert dup.value.reason == "duplicate"
    with pytest.raises(BadReading) as late:
        w.push(r("a", 1, 99.0))
    assert late.value.reason == "late"
    assert np.array_equal(w.window("a"), before)


def test_short_gap_is_forward_filled() -> None:
    w = EntityWindows(1, 5, max_fill_steps=3)
    for i in range(3):
        w.push(r("a", i))
    pushed = w.push(r("a", 5))  # steps 3 and 4 missing
    assert pushed.filled == 2 and not pushed.reset and pushed.ready
    assert w.window("a")[:, 0].tolist() == [1.0, 2.0, 2.0, 2.0, 5.0]


def test_long_gap_resets_the_window() -> None:
    w = EntityWindows(1, 3, max_fill_steps=2)
    for i in range(4):
        w.push(r("a", i))
    pushed = w.push(r("a", 10))
    assert pushed.reset and not pushed.ready
    assert [w.push(r("a", 11)).ready, w.push(r("a", 12)).ready] == [False, True]


def test_configured_interval_overrides_inference() -> None:
    w = EntityWindows(1, 4, max_fill_steps=1, interval_ms=H // 2)
    w.push(r("a", 0))
    pushed = w.push(r("a", 1))  # one half-hour step missing
    assert pushed.filled == 1


def test_idle_entities_are_evicted_and_their_slots_reused() -> None:
    w = EntityWindows(1, 2, capacity=4)
    for i in range(2):
        w.push(r("old", i), seen_s=0.0)
        w.push(r("busy", i), seen_s=50.0)
    assert w.evict_idle(now_s=100.0, ttl_s=60.0) == ["old"]
    assert len(w) == 1 and "old" not in w.slots and w.window("busy")[:, 0].tolist() == [0.0, 1.0]
    assert not w.push(r("old", 5), seen_s=100.0).ready  # back after eviction: a fresh window to warm
    assert w.push(r("new", 0), seen_s=100.0) and w.data.shape[0] == 4  # the freed slot is reused, no growth


def test_a_stream_of_many_distinct_entities_stays_within_the_live_ones() -> None:
    """200,000 entities that each speak once: with eviction, capacity follows the entities alive
    within the TTL, not every entity ever seen."""
    w = EntityWindows(2, 4, capacity=64)
    for i in range(200_000):
        now = i / 1000  # 1,000 new entities a second
        w.push(Reading(f"e{i}", 0, np.ones(2, dtype=np.float32)), seen_s=now)
        if i % 1000 == 0:
            w.evict_idle(now, ttl_s=5.0)
    assert len(w) <= 6000 and w.data.shape[0] <= 8192


def test_a_resend_one_second_later_is_a_duplicate_and_the_entity_goes_on() -> None:
    """The re-send used to become the entity's cadence (1 s) and silence it for good."""
    w = EntityWindows(1, 3)
    for i in range(4):
        w.push(r("a", i))
    with pytest.raises(BadReading) as dup:
        w.push(Reading("a", 3 * H + 1000, np.ones(1, dtype=np.float32)))
    assert dup.value.reason == "duplicate"
    assert [w.push(r("a", i)).ready for i in (4, 5, 6)] == [True, True, True]


def test_jittered_readings_take_their_slots_without_phantom_fills() -> None:
    w = EntityWindows(1, 4, grid=Grid(H, 0))
    offsets = [0.2, -0.24, 0.1, -0.2, 0.24, -0.1]  # ± a quarter of an hour
    pushed = [w.push(Reading("a", int((i + o) * H), np.full(1, i, np.float32))) for i, o in enumerate(offsets)]
    assert [p.filled for p in pushed] == [0] * 6 and [p.slot_ts for p in pushed] == [i * H for i in range(6)]
    assert w.window("a")[:, 0].tolist() == [2.0, 3.0, 4.0, 5.0]


def test_replace_policy_corrects_the_slot_instead_of_refusing() -> None:
    w = EntityWindows(1, 3, grid=Grid(H, 0), duplicates="replace")
    for i in range(3):
        w.push(r("a", i))
    assert w.push(r("a", 2, 42.0)).replaced
    assert w.window("a")[:, 0].tolist() == [0.0, 1.0, 42.0]


def test_a_missing_channel_is_filled_for_a_few_readings_then_refused() -> None:
    w = EntityWindows(2, 3, grid=Grid(H, 0), max_missing_fill=2)
    w.push(r("a", 0, 1.0, 10.0))
    for i in (1, 2):
        assert w.push(r("a", i, 1.0 + i, np.nan)).channels_filled == 1
    assert w.window("a")[:, 1].tolist() == [10.0, 10.0, 10.0] and w.filled_inputs("a") == 2
    with pytest.raises(BadReading) as err:
        w.push(r("a", 3, 4.0, np.nan))
    assert err.value.reason == "missing_channels"
    assert w.push(r("a", 3, 4.0, 13.0)).ready  # the refusal moved nothing: slot 3 is still free


def test_no_history_to_fill_from_is_refused() -> None:
    w = EntityWindows(2, 3)
    with pytest.raises(BadReading) as err:
        w.push(r("a", 0, 1.0, np.nan))
    assert err.value.reason == "missing_channels" and len(w) == 0


def test_the_filled_count_follows_the_window_as_it_rolls_and_resets() -> None:
    w = EntityWindows(1, 4, grid=Grid(H, 0), max_fill_steps=2, max_missing_fill=5)
    w.push(r("a", 0))
    w.push(r("a", 3))  # slots 1 and 2 filled
    assert w.filled_inputs("a") == 2
    for i in (4, 5):
        w.push(r("a", i))
    assert w.filled_inputs("a") == 1  # slot 1 rolled out of the window of 4
    w.push(r("a", 6))
    assert w.filled_inputs("a") == 0
    w.push(r("a", 20))  # a long gap: reset
    assert w.filled_inputs("a") == 0
    for i in range(21, 25):
        w.push(r("a", i))
    assert w.filled_inputs("a") == 0 == int(w.fills[w.slots["a"], w.pos[w.slots["a"]] :][:4].sum())


def test_a_grid_an_entity_taught_itself_is_learned_again_when_its_cadence_changes() -> None:
    """No model grid: every 2 h, then every hour. Half the hourly readings fall in a 2 h slot (duplicates)
    until the learned grid is dropped; then the entity is forecast again."""
    w = EntityWindows(1, 3, max_fill_steps=1)
    for i in range(0, 10, 2):
        w.push(r("a", i))
    assert w.grid_of("a").interval_ms == 2 * H
    outcomes = []
    for i in range(11, 30):
        try:
            outcomes.append(w.push(r("a", i)).ready)
        except BadReading as e:
            outcomes.append(e.reason)
    assert w.grid_of("a").interval_ms == H and outcomes[-5:] == [True] * 5, outcomes


def test_resends_among_the_first_readings_do_not_teach_a_one_second_cadence() -> None:
    w = EntityWindows(1, 3)
    for i in range(4):
        w.push(r("a", i))
        try:
            w.push(Reading("a", i * H + 1000, np.ones(1, dtype=np.float32)))  # each re-sent 1 s later
        except BadReading as e:
            assert e.reason == "duplicate"  # once the grid is learned
    assert w.grid_of("a").interval_ms == H
