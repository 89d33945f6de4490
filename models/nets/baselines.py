"""Naive forecasts that every evaluation reports beside the networks: a model that cannot beat
these has learned nothing worth serving."""

from __future__ import annotations

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


NAIVE = {"persistence": Persistence, "mean": WindowMean}
