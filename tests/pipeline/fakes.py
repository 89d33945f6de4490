"""A stand-in model for pure-logic unit tests of the service core (real models are tested in tests/models)."""

from __future__ import annotations

import numpy as np


class LastValueModel:
    """Forecasts the last value of each channel plus the step number: easy to check by hand."""

    def __init__(self, channels: list[str], lookback: int = 4, horizon: int = 3, version: str = "1"):
        self.channels, self.lookback, self.horizon = channels, lookback, horizon
        self.name, self.version = "fake", version
        self.input_bounds = None  # any float32
        self.calls: list[int] = []

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(x.shape[0])
        steps = np.arange(1, self.horizon + 1, dtype=np.float32)[None, :, None]
        return x[:, -1:, :] + steps
