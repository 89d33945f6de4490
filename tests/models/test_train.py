from __future__ import annotations

import numpy as np
import pytest
import torch

from models.data import Windows
from models.nets.itransformer import ITransformer, ITransformerConfig
from models.train import TrainConfig, mean_loss, train


def _run(series) -> dict:
    torch.manual_seed(123)  # model init; train() seeds its own shuffling
    model = ITransformer(ITransformerConfig(lookback=24, horizon=6, d_model=32, n_heads=4, d_ff=32))
    data = Windows([series], 24, 6)
    result = train(model, data, data, TrainConfig(epochs=3, lr=1e-3, progress=False, seed=7))
    assert result.epochs >= 1 and len(result.history) == result.epochs and result.device == "cpu"
    return model.state_dict()


def test_training_is_deterministic_on_cpu(multi_sine) -> None:
    a, b = _run(multi_sine), _run(multi_sine)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_keeps_the_best_epoch_and_returns_its_weights(multi_sine) -> None:
    torch.manual_seed(0)
    model = ITransformer(ITransformerConfig(lookback=24, horizon=6, d_model=32, n_heads=4, d_ff=32))
    data = Windows([multi_sine], 24, 6)
    result = train(model, data, data, TrainConfig(epochs=30, lr=5e-2, patience=2, progress=False))
    vals = [h["val_loss"] for h in result.history]
    assert result.stopped_by == "patience" and vals[-1] > min(vals), vals  # the last epoch was not the best
    assert result.best_val_loss == min(vals)
    # the model holds the best epoch's weights, not the last one's: its validation loss is the best one
    assert abs(mean_loss(model, data, torch.device("cpu")) - result.best_val_loss) < 1e-6 * max(1.0, min(vals))


class _Level(torch.nn.Module):
    """One learnable number forecast for every step: it converges to the targets' mean under MSE and
    to their median under MAE."""

    def __init__(self):
        super().__init__()
        self.level = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.level.expand(x.shape[0], 1, x.shape[2])


def test_the_training_loss_is_what_the_config_names_and_validation_still_judges_by_mse() -> None:
    skewed = np.array([0.0] * 8 + [10.0] * 2, dtype=np.float32)  # median 0, mean 2
    data = Windows([np.tile(skewed, 30)[:, None]], 1, 1)
    levels = {}
    for loss in ("mse", "mae"):
        model = _Level()
        cfg = TrainConfig(epochs=60, lr=0.2, batch_size=300, patience=60, loss=loss, progress=False)
        result = train(model, data, data, cfg)
        levels[loss] = model.level.item()
        assert result.best_val_loss == mean_loss(model, data, torch.device("cpu"))  # MSE, whatever trained it
    assert abs(levels["mse"] - 2.0) < 0.3 and abs(levels["mae"]) < 0.3, levels


def test_an_unknown_loss_is_refused_with_the_choices(multi_sine) -> None:
    data = Windows([multi_sine], 24, 6)
    with pytest.raises(ValueError, match="mse, mae, huber"):
        train(_Level(), data, data, TrainConfig(loss="l3", progress=False))
