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
