"""The configuration search: chosen on validation only, the best trial's own weights, budgets kept."""

from __future__ import annotations

import pytest

from models.data import Windows
from models.search import NothingEligible, SearchBudget, SearchSpace, TrialRecord, one_se, search
from models.train import TrainConfig, mean_loss

SMALL = SearchSpace(d_model=(8, 16), e_layers=(1, 2), d_ff=(8, 16), n_heads=(4,), epochs=(2,), patience=(2,))
BASE = TrainConfig(progress=False, seed=3)


def _windows(series) -> tuple[Windows, Windows]:
    return Windows([series[:400]], 24, 6), Windows([series[400 - 24 :]], 24, 6)


def test_the_chosen_model_is_the_best_trial_at_its_best_validation_epoch(multi_sine) -> None:
    train_w, val_w = _windows(multi_sine)
    found = search(train_w, val_w, 24, 6, 4, SearchBudget(trials=4), space=SMALL, base=BASE, progress=False)
    done = [t for t in found.trials if t.state == "complete"]
    assert len(found.trials) == 4 and done
    assert found.best.val_loss == min(t.val_loss for t in done)
    assert mean_loss(found.model, val_w, found.model.embed.weight.device) == pytest.approx(
        found.best.val_loss, rel=1e-5
    )
    assert found.model.cfg.d_model == found.best.params["d_model"] and not found.model.training
    assert found.to_dict()["chosen"] == found.best.params and found.wall_seconds > 0


def test_over_the_serving_budget_a_configuration_never_trains_but_the_start_point_does(multi_sine) -> None:
    train_w, val_w = _windows(multi_sine)
    start = SearchSpace.point({"d_model": 8, "e_layers": 1, "d_ff": 8, "dropout": 0.1, "n_heads": 4}, BASE)
    start.update(epochs=2, patience=2)
    budget = SearchBudget(trials=3, max_forward_ms=1e-6)  # nothing is that fast
    found = search(train_w, val_w, 24, 6, 4, budget, space=SMALL, base=BASE, start_from=start, progress=False)
    assert [t.state for t in found.trials] == ["complete", "ineligible", "ineligible"]
    assert all(t.history == [] and t.val_loss is None for t in found.trials[1:])
    assert found.best.number == 0 and found.best.params == start


def test_when_nothing_is_eligible_the_error_says_what_to_change(multi_sine) -> None:
    train_w, val_w = _windows(multi_sine)
    with pytest.raises(NothingEligible, match="max_forward_ms"):
        search(train_w, val_w, 24, 6, 4, SearchBudget(trials=2, max_forward_ms=1e-6), space=SMALL, progress=False)


def test_cycle_periods_come_from_the_training_data_and_the_grid() -> None:
    import numpy as np

    from models.search import cadence_of, cycle_candidates

    t = np.arange(2000.0)[:, None]
    daily = np.sin(2 * np.pi * t / 24) + 0.1 * np.cos(2 * np.pi * t / 5)
    assert 24 in cycle_candidates(daily)
    assert cycle_candidates(np.random.default_rng(0).normal(size=(2000, 2)), cadence=7) == [7]  # noise: the grid's
    assert (cadence_of(3600), cadence_of(86_400), cadence_of(900), cadence_of(7 * 3600), cadence_of(None)) == (
        24, 7, 96, None, None,
    )  # fmt: skip


def test_with_rolling_origins_a_trial_is_judged_by_the_mean_over_folds_and_the_model_is_the_real_splits(
    multi_sine,
) -> None:
    from models.data import rolling_origins

    train_w, val_w = _windows(multi_sine)
    folds = rolling_origins([multi_sine[:400]], val_rows=60, lookback=24, horizon=6, folds=3)
    found = search(
        train_w, val_w, 24, 6, 4, SearchBudget(trials=2), space=SMALL, base=BASE, folds=folds, progress=False
    )
    for t in [t for t in found.trials if t.state == "complete"]:
        assert len(t.fold_val_losses) == 3 and t.val_loss == pytest.approx(sum(t.fold_val_losses) / 3)
        assert sorted({h["fold"] for h in t.history}) == [0, 1, 2]
    real = mean_loss(found.model, val_w, found.model.embed.weight.device)
    assert real == pytest.approx(found.best.fold_val_losses[-1], rel=1e-5)  # trained on the whole training split
    assert found.best.val_loss == min(t.val_loss for t in found.trials if t.state == "complete")


def test_cyclenet_linears_recipe_is_a_point_of_a_space_with_a_cycle_only() -> None:
    with_cycle = SearchSpace(cycle=(0, 24, 48))
    assert with_cycle.cyclenet_linear() == {
        "d_model": 512, "e_layers": 0, "d_ff": 64, "dropout": 0.0, "n_heads": 4, "lr": 1e-2, "schedule": "halve",
        "epochs": 30, "patience": 5, "batch_size": 256, "loss": "mse", "skip": False, "cycle": 24,
    }  # fmt: skip
    assert SearchSpace().cyclenet_linear() is None and SMALL.cyclenet_linear() is None


def _trial(number: int, folds: list[float]) -> TrialRecord:
    return TrialRecord(number, {}, "complete", sum(folds) / len(folds), 1.0, 1.0, 1, fold_val_losses=folds, folds=3)


def test_the_one_se_rule_keeps_the_default_unless_a_trial_beats_it_by_more_than_the_origins_disagree() -> None:
    default = _trial(0, [1.10, 0.90, 1.00])
    assert one_se(default, _trial(4, [1.00, 0.80, 0.90]))[0]  # 0.1 better on every origin: clearly
    kept, why = one_se(default, _trial(4, [1.00, 0.92, 1.02]))  # 0.02 on average, +0.1 / -0.02 / -0.02
    assert not kept and "not more than one SE" in why
    one_origin = TrialRecord(4, {}, "complete", 0.9, 1.0, 1.0, 1, fold_val_losses=[0.9])
    assert one_se(TrialRecord(0, {}, "complete", 1.0, 1.0, 1.0, 1, fold_val_losses=[1.0]), one_origin)[0]


def test_a_search_with_a_default_chooses_by_the_rule_and_returns_the_chosen_trials_own_weights(multi_sine) -> None:
    from models.data import rolling_origins

    train_w, val_w = _windows(multi_sine)
    folds = rolling_origins([multi_sine[:400]], val_rows=60, lookback=24, horizon=6, folds=3)
    start = SearchSpace.point({"d_model": 8, "e_layers": 1, "d_ff": 8, "dropout": 0.1, "n_heads": 4}, BASE)
    start.update(epochs=2, patience=2)
    found = search(
        train_w, val_w, 24, 6, 4, SearchBudget(trials=4), space=SMALL, base=BASE, start_from=start, folds=folds,
        progress=False,
    )  # fmt: skip
    done = [t for t in found.trials if t.state == "complete"]
    lowest = min(done, key=lambda t: t.val_loss)
    default = found.trials[0]
    clearly = lowest is default or one_se(default, lowest)[0]
    assert found.select == "one-se" and found.lowest is lowest
    assert found.best is (lowest if clearly else default), found.selection
    real = mean_loss(found.model, val_w, found.model.embed.weight.device)
    assert real == pytest.approx(found.best.fold_val_losses[-1], rel=1e-5)  # the chosen trial's weights
    with pytest.raises(ValueError, match="one-se, best"):
        search(train_w, val_w, 24, 6, 4, SearchBudget(trials=1), space=SMALL, select="newest", progress=False)
