"""Checkpoints on disk: weights as safetensors plus a JSON file with the model's config and the
channel/scaling metadata. Loading never unpickles anything."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from models.data import Scaler
from models.nets import ARCHITECTURES, UnknownArchitecture, build
from models.nets import architecture_of as _architecture_of

WEIGHTS = "model.safetensors"
META = "model.json"


class CheckpointError(ValueError):
    pass


@dataclass
class CheckpointMeta:
    architecture: str
    config: dict
    channels: list[str]
    scaler: dict
    name: str = "sensorcast-itransformer"
    version: str = "local"
    extra: dict = field(default_factory=dict)  # metrics, data source, training time ...

    @property
    def lookback(self) -> int:
        return int(self.config["lookback"])

    @property
    def horizon(self) -> int:
        return int(self.config["horizon"])


def architecture_of(model: nn.Module) -> str:
    try:
        return _architecture_of(model)
    except UnknownArchitecture as e:
        raise CheckpointError(f"cannot checkpoint it: {e}") from None


def save(
    folder: Path,
    model: nn.Module,
    channels: list[str],
    scaler: Scaler,
    *,
    name: str = "sensorcast-itransformer",
    extra: dict | None = None,
) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    meta = {
        "architecture": architecture_of(model),
        "config": model.cfg.to_dict(),
        "channels": list(channels),
        "scaler": scaler.to_dict(),
        "name": name,
        "version": "local",
        "extra": extra or {},
    }
    (folder / META).write_text(json.dumps(meta, indent=2))
    return folder


def read_meta(folder: Path) -> CheckpointMeta:
    path = Path(folder) / META
    if not path.exists():
        raise CheckpointError(f"{folder} is not a sensorcast checkpoint (no {META})")
    doc = json.loads(path.read_text())
    if doc.get("architecture") not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {doc.get('architecture')!r} in {path}")
    return CheckpointMeta(**doc)


def load(folder: Path, device: str = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    meta = read_meta(folder)
    model = build(meta.architecture, **meta.config)
    model.load_state_dict(load_file(str(Path(folder) / WEIGHTS), device="cpu"))
    return model.to(device).eval(), meta
