"""Where tensors run, and seeding: shared by training and inference (neither imports the other)."""

from __future__ import annotations

import torch


def pick_device(requested: str = "auto") -> torch.device:
    """ "auto" is CUDA when there is one, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
