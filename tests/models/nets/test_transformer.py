from __future__ import annotations

import pytest
import torch

from models.data import Windows
from models.nets.transformer import Transformer, TransformerConfig
from models.train import TrainConfig, mean_loss, train


def _cfg(**kw) -> TransformerConfig:
    return TransformerConfig(lookback=24, horizon=6, n_variates=4, label_len=12, d_model=32, n_heads=4, d_ff=64, **kw)


def test_shapes_match_the_itransformer() -> None:
    assert Transformer(_cfg()).eval()(torch.randn(3, 24, 4)).shape == (3, 6, 4)


def test_refuses_another_number_of_variates() -> None:
    with pytest.raises(ValueError, match="built for 4 variates"):
        Transformer(_cfg())(torch.randn(1, 24, 5))


def test_decoder_is_causal_over_the_placeholders() -> None:
    """The decoder must not see into later steps: changing nothing but the input after the label
    window cannot happen (placeholders are zeros), so check the mask itself."""
    model = Transformer(_cfg())
    assert model.causal.shape == (18, 18)
    assert torch.isinf(model.causal[0, 1]) and model.causal[1, 0] == 0


def test_overfits_a_small_multi_sine_set(multi_sine) -> None:
    data = Windows([(multi_sine - multi_sine.mean(0)) / multi_sine.std(0)], 24, 6)
    model = Transformer(_cfg(dropout=0.0))
    before = mean_loss(model, data, torch.device("cpu"))
    train(model, data, data, TrainConfig(epochs=15, lr=2e-3, batch_size=32, patience=15, progress=False))
    after = mean_loss(model, data, torch.device("cpu"))
    assert after < before / 10, (before, after)


def test_time_features_enter_both_embeddings_and_are_required() -> None:
    import pytest
    import torch

    from models.nets import Transformer, TransformerConfig

    torch.manual_seed(0)
    net = Transformer(TransformerConfig(lookback=12, horizon=4, n_variates=3, label_len=6, d_model=16, n_heads=2,
                                        d_ff=32, dropout=0.0, n_time_features=4)).eval()  # fmt: skip
    x, x_mark, y_mark = torch.randn(2, 12, 3), torch.rand(2, 12, 4) - 0.5, torch.rand(2, 4, 4) - 0.5
    out = net(x, x_mark, y_mark)
    assert out.shape == (2, 4, 3)
    assert not torch.allclose(out, net(x, x_mark, y_mark + 0.3)), "the horizon's calendar changes the forecast"
    with pytest.raises(ValueError, match="time features"):
        net(x)
