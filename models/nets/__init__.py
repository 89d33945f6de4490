"""The networks, and the one registry of them: name → (class, config class), and named sizes.

Adding an architecture is one line in ARCHITECTURES; checkpoints, the benchmark and the CLI all
look it up here.

>>> net = build("itransformer", lookback=16, horizon=4, **PRESETS["serving"])
>>> type(net).__name__, net.cfg.d_model
('ITransformer', 64)
"""

from __future__ import annotations

from torch import nn

from models.nets.baselines import NAIVE, Persistence, SeasonalNaive, WindowMean
from models.nets.itransformer import ITransformer, ITransformerConfig
from models.nets.transformer import Transformer, TransformerConfig

ARCHITECTURES: dict[str, tuple[type[nn.Module], type]] = {
    "itransformer": (ITransformer, ITransformerConfig),
    "transformer": (Transformer, TransformerConfig),
}

# Named sizes. "serving": small enough that a forecast per reading is cheap on a CPU (what `sensorcast
# train`, the demo and the latency benchmark use).
PRESETS: dict[str, dict] = {
    "serving": {"d_model": 64, "n_heads": 4, "e_layers": 2, "d_ff": 128},
}


class UnknownArchitecture(ValueError):
    pass


def build(name: str, **config) -> nn.Module:
    """A network by its registry name and config fields."""
    if name not in ARCHITECTURES:
        raise UnknownArchitecture(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    cls, cfg_cls = ARCHITECTURES[name]
    return cls(cfg_cls(**config))


def architecture_of(model: nn.Module) -> str:
    for name, (cls, _) in ARCHITECTURES.items():
        if isinstance(model, cls):
            return name
    raise UnknownArchitecture(f"{type(model).__name__} is not a registered architecture")


__all__ = [
    "ARCHITECTURES",
    "NAIVE",
    "SeasonalNaive",
    "PRESETS",
    "ITransformer",
    "ITransformerConfig",
    "Persistence",
    "Transformer",
    "TransformerConfig",
    "UnknownArchitecture",
    "WindowMean",
    "architecture_of",
    "build",
]
