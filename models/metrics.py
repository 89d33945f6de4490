"""Forecast error: MSE and MAE, per horizon step and overall, on a set of windows."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Metrics:
    mse: float
    mae: float
    mse_per_step: list[float]
    mae_per_step: list[float]


@torch.no_grad()
def evaluate(
    model: nn.Module, windows, device: torch.device | str = "cpu", batch_size: int = 256, indices=None
) -> Metrics:
    """Over every window, or only those at `indices` (a subset every compared model is scored on)."""
    device = torch.device(device)
    model.eval()
    se = ae = None
    count = 0
    chosen = torch.arange(len(windows)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    for start in range(0, len(chosen), batch_size):
        inputs, y = windows.inputs_for(model, chosen[start : start + batch_size])
        pred = model(*[t if t is None else t.to(device) for t in inputs]).float().cpu()
        err = pred - y  # (B, H, N)
        se_b, ae_b = (err**2).sum(dim=(0, 2)), err.abs().sum(dim=(0, 2))  # per horizon step
        se = se_b if se is None else se + se_b
        ae = ae_b if ae is None else ae + ae_b
        count += y.shape[0] * y.shape[2]
    mse_steps, mae_steps = (se / count).tolist(), (ae / count).tolist()
    return Metrics(sum(mse_steps) / len(mse_steps), sum(mae_steps) / len(mae_steps), mse_steps, mae_steps)


def window_std(windows, batch_size: int = 512):
    """Each window's standard deviation over its input, per channel, (n, N), in the windows' units:
    the scale of the window-scaled conformal score."""
    import numpy as np

    out = []
    for start in range(0, len(windows), batch_size):
        x, _ = windows.batch(torch.arange(start, min(start + batch_size, len(windows))))
        out.append(x.std(dim=1, unbiased=False).numpy())
    return np.concatenate(out)


@torch.no_grad()
def abs_errors(model: nn.Module, windows, device: torch.device | str = "cpu", batch_size: int = 512):
    """|forecast - actual| of every window, (n, H, N), in the windows' units: conformal scores."""
    import numpy as np

    device = torch.device(device)
    model.eval()
    out = []
    for start in range(0, len(windows), batch_size):
        inputs, y = windows.inputs_for(model, torch.arange(start, min(start + batch_size, len(windows))))
        pred = model(*[t if t is None else t.to(device) for t in inputs]).float().cpu()
        out.append((pred - y).abs().numpy())
    return np.concatenate(out)
