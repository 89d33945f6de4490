"""One training loop for every model: AdamW, a learning-rate schedule, early stopping on the
validation split, seeded and deterministic on CPU, mixed precision on CUDA, a progress bar."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from models.data import Windows
from models.device import pick_device, seed_everything


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | halve (TSLib's "type1": lr halves each epoch) | constant
    loss: str = "mse"  # what training minimizes: mse | mae | huber; validation always judges by MSE
    patience: int = 3
    seed: int = 2024
    device: str = "auto"
    max_seconds: float | None = None  # a wall-clock budget: stop after the epoch that passes it
    max_batches_per_epoch: int | None = None
    progress: bool = True


@dataclass
class TrainResult:
    best_val_loss: float
    epochs: int
    seconds: float
    device: str
    history: list[dict] = field(default_factory=list)
    stopped_by: str = "epochs"  # "epochs" (the schedule ran out), "patience" (early stopping) or "time_cap"


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": nn.functional.mse_loss,
    "mae": nn.functional.l1_loss,  # less pulled by the outliers of heavy-tailed series
    "huber": nn.functional.smooth_l1_loss,  # squared within one (scaled) unit, absolute beyond
}


def _lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    if schedule == "halve":
        return 0.5**epoch
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / max(epochs, 1)))
    return 1.0


@torch.no_grad()
def mean_loss(model: nn.Module, windows: Windows, device: torch.device, batch_size: int = 256) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(windows)))
        inputs, y = windows.inputs_for(model, idx)
        inputs, y = [t if t is None else t.to(device) for t in inputs], y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = model(*inputs)
        total += nn.functional.mse_loss(pred.float(), y, reduction="sum").item()
        count += y.numel()
    return total / max(count, 1)


def train(
    model: nn.Module,
    train_set: Windows,
    val_set: Windows,
    cfg: TrainConfig,
    on_epoch: Callable[[dict], None] | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train in place; the model ends with the weights of its best validation epoch."""
    if cfg.loss not in LOSSES:
        raise ValueError(f"unknown loss {cfg.loss!r}; choose from {', '.join(LOSSES)}")
    criterion = LOSSES[cfg.loss]
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, bad_epochs = math.inf, copy.deepcopy(model.state_dict()), 0
    history: list[dict] = []
    started = time.perf_counter()
    n_batches = math.ceil(len(train_set) / cfg.batch_size)
    if cfg.max_batches_per_epoch:
        n_batches = min(n_batches, cfg.max_batches_per_epoch)

    stopped_by = "epochs"
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(cfg.schedule, epoch - 1, cfg.epochs)
        model.train()
        order = torch.randperm(len(train_set), generator=gen)
        running = 0.0
        bar = tqdm(range(n_batches), desc=f"{desc} epoch {epoch}/{cfg.epochs}", disable=not cfg.progress, leave=False)
        for b in bar:
            inputs, y = train_set.inputs_for(model, order[b * cfg.batch_size : (b + 1) * cfg.batch_size])
            inputs = [t if t is None else t.to(device, non_blocking=True) for t in inputs]
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                pred = model(*inputs)
            loss = criterion(pred.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item()
            if b % 20 == 0:
                bar.set_postfix(loss=f"{running / (b + 1):.4f}")
        val = mean_loss(model, val_set, device)
        record = {"epoch": epoch, "train_loss": running / n_batches, "val_loss": val, "lr": opt.param_groups[0]["lr"]}
        history.append(record)
        if on_epoch:
            on_epoch(record)
        if val < best - 1e-7:
            best, best_state, bad_epochs = val, copy.deepcopy(model.state_dict()), 0
        else:
            bad_epochs += 1
        if bad_epochs >= cfg.patience:
            stopped_by = "patience"
            break
        if cfg.max_seconds is not None and time.perf_counter() - started > cfg.max_seconds and epoch < cfg.epochs:
            stopped_by = "time_cap"
            break
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(best, epoch, time.perf_counter() - started, str(device), history, stopped_by)
