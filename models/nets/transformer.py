"""The vanilla Transformer baseline (Vaswani et al., 2017) for multivariate forecasting, as the
Time-Series-Library runs it: *temporal* tokens, one per time step, each embedding all N variates.

    x (B, L, N) ─ embed each step N → D (+ sinusoidal position) ─ encoder × E ─┐
    [last L/2 known steps ; H zeros] ─ embed ─ decoder (causal self-attn, cross-attn) × Dd ─ D → N ─▶ ŷ (B, H, N)

Unlike the iTransformer, its weights depend on N, and attention mixes time steps, not variates:
that contrast is why the project keeps it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn


@dataclass
class TransformerConfig:
    lookback: int = 96
    horizon: int = 24
    n_variates: int = 7
    label_len: int = 48  # known steps fed to the decoder before the H placeholders
    d_model: int = 128
    n_heads: int = 8
    e_layers: int = 2
    d_layers: int = 1
    d_ff: int = 256
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


class StepEmbedding(nn.Module):
    """One token per time step: a circular 3-tap convolution over time (as TSLib's TokenEmbedding) + positions."""

    def __init__(self, n_variates: int, d_model: int, dropout: float, max_len: int = 4096):
        super().__init__()
        self.conv = nn.Conv1d(n_variates, d_model, kernel_size=3, padding=1, padding_mode="circular", bias=False)
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)
        self.register_buffer("pe", pe, persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, N) → (B, T, D)
        return self.dropout(self.conv(x.transpose(1, 2)).transpose(1, 2) + self.pe[: x.shape[1]])


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.enc_embed = StepEmbedding(cfg.n_variates, cfg.d_model, cfg.dropout)
        self.dec_embed = StepEmbedding(cfg.n_variates, cfg.d_model, cfg.dropout)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(
                cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, activation="gelu", batch_first=True
            ),
            cfg.e_layers,
            norm=nn.LayerNorm(cfg.d_model),
            enable_nested_tensor=False,
        )
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(
                cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, activation="gelu", batch_first=True
            ),
            cfg.d_layers,
            norm=nn.LayerNorm(cfg.d_model),
        )
        self.project = nn.Linear(cfg.d_model, cfg.n_variates)
        steps = cfg.label_len + cfg.horizon
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(steps), persistent=False)

    def forward(self, x: Tensor, x_mark: Tensor | None = None) -> Tensor:
        """x (B, L, N) → (B, H, N); x_mark is accepted for interface parity and unused."""
        B, L, N = x.shape
        if N != self.cfg.n_variates:
            raise ValueError(f"this Transformer was built for {self.cfg.n_variates} variates, got {N}")
        memory = self.encoder(self.enc_embed(x))  # (B, L, D)
        known = x[:, L - self.cfg.label_len :]
        dec_in = torch.cat([known, torch.zeros(B, self.cfg.horizon, N, device=x.device, dtype=x.dtype)], dim=1)
        h = self.decoder(self.dec_embed(dec_in), memory, tgt_mask=self.causal, tgt_is_causal=True)  # (B, label+H, D)
        return self.project(h[:, -self.cfg.horizon :])  # (B, H, N)
