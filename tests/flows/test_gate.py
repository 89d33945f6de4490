"""The promotion gate, pure: chronological splits, one scale for every contender, the decision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flows.gate import after, decide, scaled_mse, time_split, windows
from models.data import DataError, Scaler
from models.nets import Persistence, WindowMean


def test_split_is_chronological_and_later_splits_carry_lookback_history() -> None:
    s = np.arange(100, dtype=np.float64)[:, None]
    parts = time_split([(np.arange(100, dtype=np.int64), s)], lookback=5)
    assert parts.train[0][-1, 0] == 69 and parts.val[0][0, 0] == 65 and parts.val[0][-1, 0] == 79
    assert parts.holdout[0][0, 0] == 75 and parts.holdout[0][-1, 0] == 99


def test_scores_are_in_the_candidates_scaled_units() -> None:
    ramp = np.arange(50, dtype=np.float32)[:, None].repeat(2, axis=1) * np.array([1.0, 10.0], dtype=np.float32)
    w = windows([ramp], lookback=4, horizon=1, what="holdout")
    # persistence is off by one step: 1 and 10 raw units, i.e. 1 σ in both channels when σ = (1, 10)
    assert scaled_mse(Persistence(1), w, Scaler(np.zeros(2), np.array([1.0, 10.0]))) == pytest.approx(1.0)


def test_too_short_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="too little data"):
        windows([np.zeros((5, 2))], lookback=4, horizon=2, what="holdout")


@pytest.mark.parametrize(
    "scores, margin, promote, why",
    [
        ({"candidate": 0.4, "persistence": 0.9, "mean": 0.7}, 0.0, True, "no champion yet"),
        ({"candidate": 0.95, "persistence": 0.9, "mean": 1.7}, 0.0, False, "does not beat persistence 0.9"),
        ({"candidate": 0.75, "persistence": 0.9, "mean": 0.7}, 0.0, False, "does not beat the window mean 0.7"),
        ({"candidate": 0.4, "persistence": 0.9, "mean": 0.7, "seasonal": 0.3}, 0.0, False, "seasonal naive 0.3"),
        ({"candidate": 0.25, "persistence": 0.9, "mean": 0.7, "seasonal": 0.3}, 0.0, True, "seasonal naive 0.3"),
        ({"candidate": 0.4, "champion": 0.41, "persistence": 0.9, "mean": 0.7}, 0.05, False, "not 5% better"),
        ({"candidate": 0.4, "champion": 0.5, "persistence": 0.9, "mean": 0.7}, 0.05, True, "by more than 5%"),
        ({"candidate": float("nan"), "persistence": 0.9, "mean": 0.7}, 0.0, False, "nan"),
    ],
)
def test_decide(scores: dict, margin: float, promote: bool, why: str) -> None:
    decision = decide(scores, margin)
    assert decision.promote is promote and why in decision.reason


def test_windows_reject_what_has_no_full_window() -> None:
    with pytest.raises(DataError):
        windows([torch.zeros(3, 1).numpy()], lookback=4, horizon=1, what="training")


def test_one_time_cut_for_every_entity_and_every_segment() -> None:
    """Two sites a week apart and one site broken by a gap: no holdout target comes before any
    training target, and the early segment gets no holdout of its own."""
    hour = 3_600_000
    site = lambda start, n: (np.arange(start, start + n, dtype=np.int64) * hour, np.arange(n, dtype=float)[:, None])  # noqa: E731
    early, late = site(0, 40), site(60, 100)  # one entity: a gap between 40 and 60
    other = site(168, 100)  # another site, a week later
    splits = time_split([early, late, other], lookback=4)
    t1, t2 = splits.cuts
    assert splits.ranges["train"][1] < t1 <= splits.ranges["val"][0] <= splits.ranges["val"][1] < t2
    assert t2 <= splits.ranges["holdout"][0]
    assert len(splits.holdout) == 1  # only the latest site reaches past t2: the early segment has none
    assert [len(s) for s in splits.train][0] == 40  # the early segment is training data, whole
    kept = after([other], since_ms=200 * hour, lookback=4)
    assert kept[0][1][0, 0] == 200 - 168 - 3  # the first target after the cut, with 4 rows of history before
    assert kept[0][0][0] == (200 - 3) * hour  # and its time


@pytest.mark.parametrize(
    ("champion_config", "champion_channels", "said"),
    [
        (
            {"lookback": 4, "horizon": 1},
            ["temp"],
            "the champion v3 takes channels ['temp'], this retrain ['temp', 'rh']",
        ),
        ({"lookback": 4, "horizon": 2}, ["temp", "rh"], "the champion v3 forecasts 2 steps, this retrain 1"),
        ({"lookback": 8, "horizon": 1}, ["temp", "rh"], "the champion v3 reads 8 steps back, this retrain 4"),
    ],
)
def test_a_champion_of_other_dimensions_is_not_scored_the_candidate_meets_the_naive_baselines_alone(
    champion_config: dict, champion_channels: list[str], said: str
) -> None:
    """Before, a champion of another horizon crashed the gate (arrays of different horizons
    subtracted), and one of other channels refused every promotion: the lineage could never change."""
    from types import SimpleNamespace

    from flows.retrain import score

    candidate = SimpleNamespace(raw_net=lambda: WindowMean(1), scaler=Scaler.identity(2))
    meta = SimpleNamespace(config=champion_config, channels=champion_channels, extra={}, version="3")
    champion = SimpleNamespace(meta=meta, version="3", net=Persistence(champion_config["horizon"]))
    series = np.stack([np.arange(40.0), np.zeros(40)], axis=1).astype(np.float32)  # persistence beats the mean
    holdout = windows([series], lookback=4, horizon=1, what="holdout")
    decision = score.fn(candidate, champion, holdout, 0.0, ["temp", "rh"])
    assert decision.reason.startswith(f"{said}: compared with the naive baselines only"), decision.reason
    assert "champion" not in decision.scores and not decision.promote and "does not beat persistence" in decision.reason


def test_a_window_has_the_same_phase_in_training_as_the_service_gives_it(tmp_path) -> None:
    """The flow's windows know each window's first slot on the grid; the service derives it from the
    time of the window's last reading (Forecaster.phases). Each reading's value here is its slot, so
    every window of every part says when it ends, and the two must agree."""
    from models.checkpoint import save
    from models.forecaster import Forecaster
    from models.nets.itransformer import ITransformer, ITransformerConfig

    hour, anchor, L, H = 3_600_000, 1_800_000, 8, 3
    grid = {"interval_ms": hour, "anchor_ms": anchor}
    net = ITransformer(ITransformerConfig(L, H, d_model=8, n_heads=4, d_ff=8, cycle=24, n_variates=1))
    save(tmp_path, net, ["v"], Scaler.identity(1), extra={"grid": grid})
    service = Forecaster.from_checkpoint(tmp_path, device="cpu")
    series = [
        (anchor + slots * hour, slots[:, None].astype(float))
        for slots in (np.arange(5, 65), np.arange(400, 490), np.arange(1000, 1040), np.arange(2000, 2004))
    ]  # the last is too short for any window: its start must not shift the others'
    splits = time_split(series, L)
    for part in ("train", "val", "holdout"):
        w = windows(getattr(splits, part), L, H, part, splits.first_ts[part], grid)
        index = torch.arange(len(w))
        x, _ = w.batch(index)
        last_ts = anchor + x[:, -1, 0].numpy().astype(np.int64) * hour
        assert service.phases(last_ts).tolist() == w.cycle_index(index).tolist(), part


def test_the_gates_figures_are_fixed_by_the_holdout_not_the_candidates_scaler() -> None:
    """Two candidates that forecast alike, one trained on a window where a channel barely varied (its
    σ 1e-3). Before, every contender was scored in the candidate's scaled units: that channel then
    weighed a million times more in one run than in the other, and the runs' figures could not be
    compared. Now each channel's MSE is in units of its variance on the holdout."""
    from types import SimpleNamespace

    from flows.retrain import score

    series = np.stack([np.sin(np.arange(60.0)), 0.01 * np.cos(np.arange(60.0))], axis=1).astype(np.float32)
    holdout = windows([series], lookback=4, horizon=2, what="holdout")
    decisions = [
        score.fn(SimpleNamespace(raw_net=lambda: WindowMean(2), scaler=Scaler(np.zeros(2), np.array(std))), None,
                 holdout, 0.0, ["temp", "rh"])
        for std in ([1.0, 1.0], [1.0, 1e-3])
    ]  # fmt: skip
    a, b = (d.scores for d in decisions)
    assert a == b and set(a) == {"candidate", "persistence", "mean"}
    assert 0 < a["persistence"] < a["mean"] < 5  # errors of the size of each channel's variation
    assert decisions[0].raw_mae["candidate"]["rh"] < decisions[0].raw_mae["candidate"]["temp"]  # raw units beside
