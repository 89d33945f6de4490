"""Naive forecasts that every evaluation reports beside the networks: a model that cannot beat
these has learned nothing worth serving."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Persistence(nn.Module):
    """Repeat the last observed value H times."""

    def __init__(self, horizon: int):
        super().__init__()
        self.horizon = horizon

    def forward(self, x: Tensor, x_mark: Tensor | None = None) -> Tensor:  # (B, L, N) → (B, H, N)
        return x[:, -1:, :].expand(-1, self.horizon, -1)


class WindowMean(nn.Module):
    """Repeat the mean of the lookback window H times."""

    def __init__(self, horizon: int):
        super().__init__()
        self.horizon = horizon

    def forward(self, x: Tensor, x_mark: Tensor | None = None) -> Tensor:
        return x.mean(dim=1, keepdim=True).expand(-1, self.horizon, -1)


class SeasonalNaive(nn.Module):
    """Repeat the last observed cycle: step h forecasts the value one `period` before it (the same hour
    yesterday, for hourly readings with a daily cycle). The M-competitions' yardstick for seasonal data;
    the period must fit in the lookback.

    >>> x = torch.arange(6.0).reshape(1, 6, 1)  # readings 0..5; a cycle of 2
    >>> SeasonalNaive(horizon=3, period=2)(x).flatten().tolist()
    [4.0, 5.0, 4.0]
    """

    def __init__(self, horizon: int, period: int):
        super().__init__()
        if period < 1:
            raise ValueError(f"a seasonal period is at least one step, got {period}")
        self.horizon, self.period = horizon, period

    def forward(self, x: Tensor, x_mark: Tensor | None = None) -> Tensor:
        lookback = x.shape[1]
        if self.period > lookback:
            raise ValueError(f"a period of {self.period} steps does not fit in a lookback of {lookback}")
        index = torch.arange(self.horizon, device=x.device) % self.period + (lookback - self.period)
        return x[:, index, :]


NAIVE = {"persistence": Persistence, "mean": WindowMean}  # the period-free ones; SeasonalNaive needs the data's cycle
