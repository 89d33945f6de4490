"""iTransformer (Liu et al., "iTransformer: Inverted Transformers Are Effective for Time Series
Forecasting", ICLR 2024), read top to bottom as the paper's Figure 2:

    x (B, L, N) ─ invert: each variate's whole lookback is one token ─ instance norm ─ embed L → D
      ─ [ self-attention across variate tokens ─ add & LayerNorm ─ feed-forward ─ add & LayerNorm ] × E
      ─ project D → H ─ undo instance norm ─ invert back ─▶ ŷ (B, H, N)

Weights never depend on N, so one model serves any number of variates, and permuting the input
variates permutes the output the same way (attention without positions is permutation-equivariant).

With `cycle` = W > 0 it is cycle-aware, after CycleNet's residual cycle forecasting (Lin et al.,
NeurIPS 2024): a learnable cycle of W steps per variate (so N is then fixed) is taken out of the
normalized lookback before the encoder and added back to the forecast, each step's phase being its
slot on the data's time grid modulo W. The network then learns what the cycle does not explain.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class ITransformerConfig:
    lookback: int = 96  # L: steps of history per token
    horizon: int = 24  # H: steps forecast
    d_model: int = 128  # D
    n_heads: int = 8
    e_layers: int = 2
    d_ff: int = 256
    dropout: float = 0.1
    n_covariates: int = 0  # extra tokens for time features (hour, weekday, ...), never forecast
    use_norm: bool = True  # the paper's instance normalization (RevIN without affine)
    cycle: int = 0  # W: a learnable cycle of this period (CycleNet's RCF); 0: none
    n_variates: int = 0  # N, needed by a cycle (one per variate); 0 otherwise
    skip: bool = False  # forecast = the last value + the network's correction, which starts at zero (persistence)

    def to_dict(self) -> dict:
        return asdict(self)


class InstanceNorm(nn.Module):
    """Per-sample, per-variate normalization over the lookback window; exactly undone on the output.
    Works on tokens (B, N, L): the statistics reduce the contiguous last axis, several times faster
    than reducing L in (B, L, N) with N small."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def normalize(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # tokens (B, N, L)
        # two passes (mean, then the mean square of the deviations) rather than torch.var_mean:
        # the same statistics, and on CPU about 10x faster at serving sizes (var_mean took a tenth
        # of the whole forward pass at batch 64)
        x = tokens.detach()
        mean = x.mean(dim=-1, keepdim=True)
        var = (x - mean).square().mean(dim=-1, keepdim=True)
        std = torch.sqrt(var + self.eps)
        return (tokens - mean) / std, mean, std

    @staticmethod
    def denormalize(y: Tensor, mean: Tensor, std: Tensor) -> Tensor:  # y (B, N, H)
        return y * std + mean


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:  # x (B, T, D) with T = variate tokens
        q, k, v = self.qkv(x).unflatten(-1, (3, self.n_heads, -1)).permute(2, 0, 3, 1, 4)  # 3 × (B, h, T, D/h)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).flatten(-2))  # (B, T, D)


class EncoderLayer(nn.Module):
    """Post-norm Transformer block, as in the paper's reference code (attention, then a position-wise FFN)."""

    def __init__(self, cfg: ITransformerConfig):
        super().__init__()
        self.attention = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.ff = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.d_ff, cfg.d_model)
        )
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D)
        x = self.norm1(x + self.dropout(self.attention(x)))
        return self.norm2(x + self.dropout(self.ff(x)))


class ITransformer(nn.Module):
    def __init__(self, cfg: ITransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.norm = InstanceNorm()
        self.embed = nn.Linear(cfg.lookback, cfg.d_model)  # inverted embedding: a whole series → one token
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.e_layers))
        self.encoder_norm = nn.LayerNorm(cfg.d_model)
        self.project = nn.Linear(cfg.d_model, cfg.horizon)
        if cfg.skip:  # the correction starts at zero: an untrained network is persistence
            nn.init.zeros_(self.project.weight)
            nn.init.zeros_(self.project.bias)
        if cfg.cycle:
            if cfg.n_variates < 1:
                raise ValueError("a cycle needs n_variates: it holds one learnable cycle per variate")
            self.cycle = nn.Parameter(torch.zeros(cfg.cycle, cfg.n_variates))  # (W, N)

    def cycle_at(self, first: Tensor, steps: int, offset: int = 0) -> Tensor:
        """The cycle over `steps` steps from slot first + offset, as tokens (B, N, steps)."""
        phase = (first[:, None] + offset + torch.arange(steps, device=first.device)) % self.cfg.cycle  # (B, steps)
        return self.cycle[phase].transpose(1, 2)

    def forward(self, x: Tensor, x_mark: Tensor | None = None, cycle_index: Tensor | None = None) -> Tensor:
        """x (B, L, N) values; x_mark (B, L, C) optional time covariates; cycle_index (B,) the slot of
        each window's first step, for a cycle-aware network → (B, H, N)."""
        B, L, N = x.shape
        tokens = x.transpose(1, 2).contiguous()  # (B, N, L): one row per variate
        if self.cfg.use_norm:
            tokens, mean, std = self.norm.normalize(tokens)
        if self.cfg.cycle:
            if cycle_index is None:
                raise ValueError("this iTransformer has a cycle: pass each window's cycle_index")
            tokens = tokens - self.cycle_at(cycle_index, L)  # what the cycle explains is taken out
        if x_mark is not None:
            tokens = torch.cat([tokens, x_mark.transpose(1, 2)], dim=1)  # (B, N + C, L)
        h = self.embed_dropout(self.embed(tokens))  # (B, N + C, D)
        for layer in self.encoder:
            h = layer(h)  # attention across variate tokens
        h = self.encoder_norm(h)
        y = self.project(h)[:, :N]  # (B, N + C, H) → keep the variates → (B, N, H)
        if self.cfg.skip:
            y = y + tokens[:, :N, -1:]  # a correction to the last (normalized) value, every step
        if self.cfg.cycle:
            y = y + self.cycle_at(cycle_index, self.cfg.horizon, offset=L)  # and put back over the horizon
        if self.cfg.use_norm:
            y = self.norm.denormalize(y, mean, std)
        return y.transpose(1, 2)  # (B, H, N)
