"""The pyfunc face of a checkpoint: a model with a cycle takes each reading's time, as the service gives it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from models.checkpoint import save
from models.data import Scaler
from models.forecaster import Forecaster
from models.nets.itransformer import ITransformer, ITransformerConfig

HOUR = 3_600_000


def test_a_cycle_model_forecasts_from_the_ts_column_and_says_when_it_is_missing(tmp_path) -> None:
    from models.mlflow.pyfunc import SensorcastModel
    from models.mlflow.registry import pyfunc_example

    torch.manual_seed(0)
    net = ITransformer(ITransformerConfig(8, 3, d_model=16, n_heads=4, d_ff=16, cycle=24, n_variates=2))
    with torch.no_grad():
        net.cycle.normal_()
    save(tmp_path, net.eval(), ["a", "b"], Scaler.identity(2), extra={"grid": {"interval_ms": HOUR, "anchor_ms": 0}})
    model = SensorcastModel()
    model.forecaster = forecaster = Forecaster.from_checkpoint(tmp_path, device="cpu")
    values = np.random.default_rng(1).normal(size=(8, 2)).astype(np.float32)
    frame = pd.DataFrame(values, columns=["a", "b"]).assign(ts=np.arange(30, 38) * HOUR)
    got = model.predict(None, frame)
    np.testing.assert_allclose(got.to_numpy(), forecaster.predict(values[None], np.array([37 * HOUR]))[0], rtol=1e-6)
    with pytest.raises(ValueError, match="ts"):
        model.predict(None, frame.drop(columns="ts"))
    example, signature = pyfunc_example(tmp_path)
    assert list(example.columns) == ["a", "b", "ts"] and "ts" in signature.inputs.input_names()


def test_the_pyfunc_returns_each_levels_bounds_scaled_by_the_window_as_the_service_does(tmp_path) -> None:
    from models.conformal import WINDOW_SCORE
    from models.mlflow.pyfunc import SensorcastModel
    from models.mlflow.registry import pyfunc_example

    torch.manual_seed(0)
    net = ITransformer(ITransformerConfig(8, 3, d_model=16, n_heads=4, d_ff=16)).eval()
    intervals = {"score": WINDOW_SCORE, "power": 0.5, "windows": 50, "half_width": {"0.8": [[1.0, 2.0]] * 3}}
    save(tmp_path, net, ["a", "b"], Scaler(np.zeros(2), np.array([2.0, 4.0])), extra={"intervals": intervals})
    model = SensorcastModel()
    model.forecaster = Forecaster.from_checkpoint(tmp_path, device="cpu")
    values = np.random.default_rng(1).normal(size=(8, 2)).astype(np.float32)
    got = model.predict(None, pd.DataFrame(values, columns=["a", "b"]))
    assert list(got.columns) == ["a", "b", "a_lower_0.8", "a_upper_0.8", "b_lower_0.8", "b_upper_0.8"]
    for c, i, w, std in (("a", 0, 1.0, 2.0), ("b", 1, 2.0, 4.0)):
        half = w * std * np.sqrt(max(values[:, i].std() / std, 0.05))  # the window's own scale
        np.testing.assert_allclose(got[f"{c}_upper_0.8"] - got[c], half, rtol=1e-4)
        np.testing.assert_allclose(got[c] - got[f"{c}_lower_0.8"], half, rtol=1e-4)
    _, signature = pyfunc_example(tmp_path)
    assert "a_lower_0.8" in signature.outputs.input_names()
