import pytest
import torch

from models.nets.baselines import Persistence, SeasonalNaive, WindowMean


def test_persistence_repeats_the_last_value() -> None:
    x = torch.arange(12.0).view(1, 4, 3)
    y = Persistence(5)(x)
    assert y.shape == (1, 5, 3)
    assert torch.equal(y[0], torch.tensor([[9.0, 10.0, 11.0]]).expand(5, 3))


def test_window_mean_repeats_the_mean() -> None:
    x = torch.arange(12.0).view(1, 4, 3)
    assert torch.equal(WindowMean(2)(x)[0], torch.tensor([[4.5, 5.5, 6.5]] * 2))


def test_seasonal_naive_repeats_the_last_cycle_exactly_on_a_periodic_series() -> None:
    t = torch.arange(60.0)
    series = torch.stack([torch.sin(2 * torch.pi * t / 24), (t % 24) * 2.0], dim=1)  # (60, 2), a cycle of 24
    x, future = series[:48].unsqueeze(0), series[48:].unsqueeze(0)  # lookback 48, the next 12 steps
    assert torch.allclose(SeasonalNaive(12, 24)(x), future, atol=1e-5)
    assert not torch.allclose(Persistence(12)(x), future, atol=1e-2)


def test_a_period_longer_than_the_lookback_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="does not fit in a lookback of 12"):
        SeasonalNaive(6, 24)(torch.zeros(1, 12, 1))
    with pytest.raises(ValueError, match="at least one step"):
        SeasonalNaive(6, 0)
