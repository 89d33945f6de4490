"""Which configuration a retrain trains: the champion's, unless its dimensions no longer fit."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from flows.candidate import _warm_start
from flows.lineage import lineage_break, next_configuration, recipe_of
from models.nets import PRESETS, build

HOUR = 3_600_000


def champion_meta(**changes) -> SimpleNamespace:
    """What a version's checkpoint says of itself: a searched configuration with a daily cycle."""
    meta = {
        "architecture": "itransformer",
        "channels": ["rh", "temp"],
        "config": {
            "lookback": 24,
            "horizon": 6,
            "d_model": 32,
            "n_heads": 4,
            "e_layers": 1,
            "d_ff": 64,
            "cycle": 24,
            "n_variates": 2,
            "skip": True,
        },  # fmt: skip
        "extra": {"grid": {"interval_ms": HOUR, "anchor_ms": 0}, "search": {"chosen": {"lr": 0.01, "loss": "mae"}}},
        "version": "7",
    }
    return SimpleNamespace(**{**meta, **changes})


def test_the_champions_configuration_and_recipe_are_carried() -> None:
    plan = next_configuration(champion_meta(), 24, 6, ["rh", "temp"], {"interval_ms": HOUR})
    assert plan.carried and plan.champion_version == "7"
    assert plan.config["cycle"] == 24 and plan.config["skip"] is True and "lookback" not in plan.config
    assert plan.recipe["lr"] == 0.01 and plan.recipe["loss"] == "mae"  # the search's choice, older versions
    assert "cycle 24, skip" in plan.reason


@pytest.mark.parametrize(
    ("lookback", "horizon", "channels", "interval", "said"),
    [
        (48, 6, ["rh", "temp"], HOUR, "reads 24 steps back, this retrain 48"),
        (24, 12, ["rh", "temp"], HOUR, "forecasts 6 steps, this retrain 12"),
        (24, 6, ["rh"], HOUR, "takes channels ['rh', 'temp'], this retrain ['rh']"),
        (24, 6, ["rh", "temp"], 600_000, "steps every 3600 s, this retrain's data every 600 s"),
    ],
)
def test_changed_dimensions_start_a_new_lineage_from_the_preset(lookback, horizon, channels, interval, said) -> None:
    plan = next_configuration(champion_meta(), lookback, horizon, channels, {"interval_ms": interval})
    assert not plan.carried and plan.config == PRESETS["serving"] and said in plan.reason
    assert said in lineage_break(champion_meta(), lookback, horizon, channels, {"interval_ms": interval})


def test_no_champion_trains_the_preset_and_a_recorded_recipe_wins_over_the_search() -> None:
    assert next_configuration(None, 24, 6, ["rh"], None).reason == "the serving preset: no champion yet"
    meta = champion_meta(extra={"recipe": {"lr": 0.002, "batch_size": 256}, "search": {"chosen": {"lr": 0.01}}})
    assert recipe_of(meta)["lr"] == 0.002 and recipe_of(meta)["batch_size"] == 256


def test_weights_that_do_not_load_fall_back_to_training_from_scratch_with_the_reason() -> None:
    model = build("itransformer", lookback=24, horizon=6, d_model=32, n_heads=4, e_layers=1, d_ff=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other = build("itransformer", lookback=24, horizon=6, d_model=64, n_heads=4, e_layers=1, d_ff=64)
    warm, why = _warm_start(model, SimpleNamespace(model=other, version="7"))
    assert not warm and why.startswith("trained from scratch: the champion v7's weights did not load")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched, not half-loaded
    same = build("itransformer", lookback=24, horizon=6, d_model=32, n_heads=4, e_layers=1, d_ff=64)
    assert _warm_start(model, SimpleNamespace(model=same, version="8")) == (True, "warm-started from the champion v8")
