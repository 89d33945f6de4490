"""The CPU fast path: the TorchScript trace must forecast exactly what the eager network does, at
every batch size (it was traced at one), for every architecture we checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.checkpoint import save
from models.data import Scaler
from models.forecaster import Forecaster
from models.nets.itransformer import ITransformer, ITransformerConfig
from models.nets.transformer import Transformer, TransformerConfig


def _forecaster(tmp_path, model, channels=3) -> Forecaster:
    torch.manual_seed(0)
    scaler = Scaler(np.linspace(-5, 5, channels), np.linspace(1, 3, channels))
    save(tmp_path, model.eval(), [f"c{i}" for i in range(channels)], scaler)
    return Forecaster.from_checkpoint(tmp_path, device="cpu")


@pytest.mark.parametrize(
    "model",
    [
        ITransformer(ITransformerConfig(lookback=16, horizon=4, d_model=32, n_heads=4, d_ff=32)),
        Transformer(
            TransformerConfig(lookback=16, horizon=4, n_variates=3, label_len=8, d_model=32, n_heads=4, d_ff=32)
        ),
    ],
)
def test_the_traced_forward_matches_eager_at_every_batch_size(tmp_path, model) -> None:
    f = _forecaster(tmp_path, model)
    rng = np.random.default_rng(1)
    for batch in (1, 3, 8, 77, 256):
        x = rng.normal(size=(batch, 16, 3)).astype(np.float32) * 4 + 2
        with torch.inference_mode():
            eager = f._forward(torch.from_numpy(x)).numpy()
        assert np.allclose(f.predict(x), eager, atol=1e-5), batch


def test_the_itransformer_is_served_traced_on_cpu(tmp_path) -> None:
    f = _forecaster(tmp_path, ITransformer(ITransformerConfig(lookback=16, horizon=4, d_model=32, n_heads=4, d_ff=32)))
    assert isinstance(f.scripted, torch.jit.ScriptModule)
    eager = Forecaster(f.model, f.meta, device="cpu", script=False)
    assert eager.scripted is None
    x = np.random.default_rng(2).normal(size=(5, 16, 3)).astype(np.float32)
    assert np.allclose(f.predict(x), eager.predict(x), atol=1e-5)


def test_a_batch_is_padded_to_the_next_graph_size_and_past_the_largest_runs_without_one() -> None:
    assert [Forecaster._bucket(n) for n in (1, 2, 9, 256, 600, 4096)] == [1, 8, 32, 256, 1024, 4096]
    assert Forecaster._bucket(4097) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_forecast_what_eager_does_and_do_not_pile_up(tmp_path) -> None:
    torch.manual_seed(0)
    model = ITransformer(ITransformerConfig(lookback=16, horizon=4, d_model=32, n_heads=4, d_ff=32))
    save(tmp_path, model.eval(), ["c0", "c1", "c2"], Scaler(np.zeros(3), np.ones(3)))
    f = Forecaster.from_checkpoint(tmp_path, device="cuda")
    rng = np.random.default_rng(3)
    for batch in (1, 5, 600, 601, 5000, 5001):
        x = rng.normal(size=(batch, 16, 3)).astype(np.float32)
        with torch.inference_mode():
            eager = f._forward(torch.from_numpy(x).cuda()).cpu().numpy()
        assert np.allclose(f.predict(x), eager, atol=1e-4), batch
    assert sorted(f._graphs) == [1, 8, 1024]  # one a size used, none past the largest


def _cycle_net() -> ITransformer:
    torch.manual_seed(0)
    net = ITransformer(
        ITransformerConfig(lookback=16, horizon=4, d_model=32, n_heads=4, d_ff=32, cycle=5, n_variates=3)
    )
    with torch.no_grad():
        net.cycle.normal_()
    return net.eval()


def test_a_cycle_model_forecasts_from_each_windows_phase_on_its_grid_traced_as_eager(tmp_path) -> None:
    """The phase is the slot of the window's first step on the training grid: slot_ts (its last
    reading's time) minus L - 1 slots. Traced and eager agree; the phase changes the forecast."""
    from models.checkpoint import load

    grid = {"interval_ms": 60_000, "anchor_ms": 30_000}
    net = _cycle_net()
    save(tmp_path, net, ["a", "b", "c"], Scaler.identity(3), extra={"grid": grid})
    loaded, meta = load(tmp_path)
    assert meta.config["cycle"] == 5 and torch.equal(loaded.cycle, net.cycle)
    f = Forecaster.from_checkpoint(tmp_path, device="cpu")
    assert f.cycle == 5 and f.scripted is not None
    x = np.random.default_rng(0).normal(size=(3, 16, 3)).astype(np.float32)
    slot_ts = np.array([30_000 + 60_000 * 40, 30_000 + 60_000 * 41, 30_000 + 60_000 * 45], dtype=np.int64)
    assert f.phases(slot_ts).tolist() == [25, 26, 30]
    with torch.no_grad():
        eager = net(torch.from_numpy(x), None, torch.tensor([25, 26, 30])).numpy()
    np.testing.assert_allclose(f.predict(x, slot_ts), eager, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f.predict(x[:1], slot_ts[:1] + 5 * 60_000), eager[:1], rtol=1e-5, atol=1e-5)  # W later
    assert not np.allclose(f.predict(x[:1], slot_ts[1:2]), eager[:1])
    with pytest.raises(ValueError, match="slot_ts"):
        f.predict(x)


def test_a_cycle_checkpoint_without_a_grid_is_refused_with_the_reason(tmp_path) -> None:
    save(tmp_path, _cycle_net(), ["a", "b", "c"], Scaler.identity(3))
    with pytest.raises(ValueError, match="no time grid"):
        Forecaster.from_checkpoint(tmp_path, device="cpu")
