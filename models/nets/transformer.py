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
    n_time_features: int = 0  # TSLib's timeF calendar features (4 hourly, 3 daily); 0: none

    def to_dict(self) -> dict:
        return asdict(self)


class StepEmbedding(nn.Module):
    """One token per time step, as TSLib's DataEmbedding: a circular 3-tap convolution over time
    (TokenEmbedding) + sinusoidal positions (+ a linear embedding of the calendar features), then dropout."""

    def __init__(self, n_variates: int, d_model: int, dropout: float, n_time_features: int = 0, max_len: int = 4096):
        super().__init__()
        self.conv = nn.Conv1d(n_variates, d_model, kernel_size=3, padding=1, padding_mode="circular", bias=False)
        self.time = nn.Linear(n_time_features, d_model, bias=False) if n_time_features else None
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)
        self.register_buffer("pe", pe, persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mark: Tensor | None = None) -> Tensor:  # (B, T, N), (B, T, C) → (B, T, D)
        h = self.conv(x.transpose(1, 2)).transpose(1, 2) + self.pe[: x.shape[1]]
        if self.time is not None:
            h = h + self.time(mark)
        return self.dropout(h)


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.enc_embed = StepEmbedding(cfg.n_variates, cfg.d_model, cfg.dropout, cfg.n_time_features)
        self.dec_embed = StepEmbedding(cfg.n_variates, cfg.d_model, cfg.dropout, cfg.n_time_features)
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

    def forward(self, x: Tensor, x_mark: Tensor | None = None, y_mark: Tensor | None = None) -> Tensor:
        """x (B, L, N) → (B, H, N). Built with time features, it also takes their values over the
        lookback (x_mark, (B, L, C)) and the horizon (y_mark, (B, H, C): calendar time is known ahead)."""
        B, L, N = x.shape
        if N != self.cfg.n_variates:
            raise ValueError(f"this Transformer was built for {self.cfg.n_variates} variates, got {N}")
        dec_mark = None
        if self.cfg.n_time_features:
            if x_mark is None or y_mark is None:
                raise ValueError("this Transformer was built with time features: pass x_mark and y_mark")
            dec_mark = torch.cat([x_mark[:, L - self.cfg.label_len :], y_mark], dim=1)
        known = x[:, L - self.cfg.label_len :]
        dec_in = torch.cat([known, torch.zeros(B, self.cfg.horizon, N, device=x.device, dtype=x.dtype)], dim=1)
        dec = self.dec_embed(dec_in, dec_mark)
        memory = self.encoder(self.enc_embed(x, x_mark))  # (B, L, D)
        h = self.decoder(dec, memory, tgt_mask=self.causal, tgt_is_causal=True)  # (B, label+H, D)
        return self.project(h[:, -self.cfg.horizon :])  # (B, H, N)
