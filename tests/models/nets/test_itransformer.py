from __future__ import annotations

import torch

from models.data import Windows
from models.nets.itransformer import InstanceNorm, ITransformer, ITransformerConfig
from models.train import TrainConfig, mean_loss, train


def _model(**kw) -> ITransformer:
    torch.manual_seed(0)
    return ITransformer(ITransformerConfig(lookback=24, horizon=6, d_model=32, n_heads=4, d_ff=64, **kw)).eval()


def test_shapes_for_any_number_of_variates() -> None:
    model = _model()
    for n in (1, 3, 17):
        assert model(torch.randn(5, 24, n)).shape == (5, 6, n)


def test_covariates_are_extra_tokens_not_outputs() -> None:
    model = _model(n_covariates=3)
    x, mark = torch.randn(2, 24, 4), torch.randn(2, 24, 3)
    y = model(x, mark)
    assert y.shape == (2, 6, 4)
    assert not torch.allclose(y, model(x, mark + 1.0)), "covariates must influence the forecast"


def test_instance_norm_is_exactly_invertible() -> None:
    norm = InstanceNorm()
    x = torch.randn(8, 5, 24, dtype=torch.float64) * 100 + 42  # (B, N, L) tokens
    z, mean, std = norm.normalize(x)
    assert torch.allclose(z.mean(dim=-1), torch.zeros(8, 5, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(z.std(dim=-1, unbiased=False), torch.ones(8, 5, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(norm.denormalize(z, mean, std), x, rtol=0, atol=1e-9)


def test_permuting_variates_permutes_the_forecast() -> None:
    model = _model()
    x = torch.randn(3, 24, 7)
    y = model(x)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        perm = torch.randperm(7, generator=gen)
        assert torch.allclose(model(x[:, :, perm]), y[:, :, perm], atol=1e-5)


def test_forecast_follows_the_scale_of_the_input() -> None:
    """With instance norm, scaling and shifting the input scales and shifts the output."""
    model = _model()
    x = torch.randn(2, 24, 3)
    assert torch.allclose(model(x * 10 + 3), model(x) * 10 + 3, atol=1e-3)


def test_overfits_a_small_multi_sine_set(multi_sine) -> None:
    data = Windows([multi_sine], 24, 6)
    model = ITransformer(ITransformerConfig(lookback=24, horizon=6, d_model=64, n_heads=4, d_ff=128, dropout=0.0))
    before = mean_loss(model, data, torch.device("cpu"))
    train(
        model,
        data,
        data,
        TrainConfig(epochs=15, lr=3e-3, batch_size=32, patience=15, progress=False, schedule="cosine"),
    )
    after = mean_loss(model, data, torch.device("cpu"))
    assert after < before / 10, (before, after)


def test_a_cycle_is_taken_out_and_put_back_by_its_phase() -> None:
    """With the encoder's output zeroed, the forecast is the learned cycle continued past the window,
    in the window's own scale, and a window W slots later (the same phase) forecasts the same."""
    model = _model(cycle=7, n_variates=2)
    with torch.no_grad():
        model.project.weight.zero_(), model.project.bias.zero_()
        model.cycle.copy_(torch.arange(14.0).reshape(7, 2))
    x = torch.randn(1, 24, 2) * 3 + 5
    first = torch.tensor([3])
    y = model(x, None, first)
    phase = (3 + 24 + torch.arange(6)) % 7
    mean, std = x.mean(dim=1), x.std(dim=1, unbiased=False)
    torch.testing.assert_close(y[0], model.cycle[phase] * std + mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model(x, None, first + 7), y)
    assert not torch.allclose(model(x, None, first + 1), y)


def test_a_cycle_aware_network_refuses_a_window_without_its_phase() -> None:
    import pytest

    with pytest.raises(ValueError, match="cycle_index"):
        _model(cycle=7, n_variates=2)(torch.randn(1, 24, 2))
    with pytest.raises(ValueError, match="n_variates"):
        _model(cycle=7)


def test_a_cycle_learns_a_cycle_the_windows_do_not_show(multi_sine) -> None:
    """The windows' phase comes from Windows.starts: a cycle of 12 trains below the same net without."""
    losses = {}
    for cycle in (0, 12):
        torch.manual_seed(0)
        extra = {"cycle": cycle, "n_variates": 4} if cycle else {}
        model = ITransformer(ITransformerConfig(lookback=8, horizon=12, d_model=16, n_heads=4, d_ff=16, **extra))
        data = Windows([multi_sine[:, :1].repeat(4, axis=1)], 8, 12, starts=[0])
        train(model, data, data, TrainConfig(epochs=4, lr=3e-3, progress=False))
        losses[cycle] = mean_loss(model, data, torch.device("cpu"))
    assert losses[12] < losses[0], losses


def test_with_a_skip_an_untrained_network_is_persistence_and_training_learns_a_correction(multi_sine) -> None:
    """skip=True: the forecast is the last value plus a correction whose projection starts at zero."""
    x = torch.randn(5, 24, 3) * 4 + 10
    assert torch.allclose(_model(skip=True)(x), x[:, -1:, :].expand(5, 6, 3), atol=1e-5)
    torch.manual_seed(0)
    net = ITransformer(ITransformerConfig(lookback=24, horizon=6, d_model=32, n_heads=4, d_ff=64, skip=True))
    windows = Windows([multi_sine], 24, 6)
    before = mean_loss(net, windows, torch.device("cpu"))
    train(net, windows, windows, TrainConfig(epochs=6, lr=1e-3, progress=False))
    assert mean_loss(net, windows, torch.device("cpu")) < 0.5 * before  # a sine is not flat: a correction is learned
