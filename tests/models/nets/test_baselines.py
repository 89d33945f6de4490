import torch

from models.nets.baselines import Persistence, WindowMean


def test_persistence_repeats_the_last_value() -> None:
    x = torch.arange(12.0).view(1, 4, 3)
    y = Persistence(5)(x)
    assert y.shape == (1, 5, 3)
    assert torch.equal(y[0], torch.tensor([[9.0, 10.0, 11.0]]).expand(5, 3))


def test_window_mean_repeats_the_mean() -> None:
    x = torch.arange(12.0).view(1, 4, 3)
    assert torch.equal(WindowMean(2)(x)[0], torch.tensor([[4.5, 5.5, 6.5]] * 2))
