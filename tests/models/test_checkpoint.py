from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.checkpoint import META, WEIGHTS, CheckpointError, load, read_meta, save
from models.data import Scaler
from models.forecaster import Forecaster
from models.nets.itransformer import ITransformer, ITransformerConfig
from models.nets.transformer import Transformer, TransformerConfig


@pytest.mark.parametrize(
    "model",
    [
        ITransformer(ITransformerConfig(lookback=16, horizon=4, d_model=32, n_heads=4, d_ff=32)),
        Transformer(
            TransformerConfig(lookback=16, horizon=4, n_variates=3, label_len=8, d_model=32, n_heads=4, d_ff=32)
        ),
    ],
)
def test_save_then_load_gives_identical_outputs(tmp_path, model) -> None:
    model.eval()
    save(tmp_path, model, ["a", "b", "c"], Scaler.identity(3), extra={"note": "x"})
    assert (tmp_path / WEIGHTS).read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    meta_doc = json.loads((tmp_path / META).read_text())
    assert meta_doc["channels"] == ["a", "b", "c"] and meta_doc["extra"] == {"note": "x"}
    loaded, meta = load(tmp_path)
    x = torch.randn(2, 16, 3)
    assert torch.equal(loaded(x), model(x))
    assert meta.lookback == 16 and meta.horizon == 4


def test_a_folder_without_metadata_is_refused(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not a sensorcast checkpoint"):
        read_meta(tmp_path)


def test_forecaster_applies_the_training_scaler(tmp_path) -> None:
    torch.manual_seed(0)
    model = ITransformer(ITransformerConfig(lookback=16, horizon=4, d_model=32, n_heads=4, d_ff=32)).eval()
    scaler = Scaler(np.array([10.0, -5.0]), np.array([2.0, 4.0]))
    save(tmp_path, model, ["t", "p"], scaler)
    f = Forecaster.from_checkpoint(tmp_path, device="cpu", version="7")
    raw = np.random.default_rng(0).normal(size=(3, 16, 2)).astype(np.float32) * 3 + 10
    expected = (
        model(torch.as_tensor(scaler.transform(raw), dtype=torch.float32)).detach().numpy() * scaler.std + scaler.mean
    )
    got = f.predict(raw)
    assert got.shape == (3, 4, 2) and got.dtype == np.float32
    assert np.allclose(got, expected, atol=1e-4)
    assert f.version == "7" and f.channels == ["t", "p"]
    with pytest.raises(ValueError, match="expected"):
        f.predict(np.zeros((1, 15, 2), dtype=np.float32))
