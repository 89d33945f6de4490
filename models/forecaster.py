"""A numpy-in, numpy-out inference wrapper: raw readings in (B, L, N), raw forecasts out (B, H, N).

It owns the things a serving loop should not think about: the training scaler, the device,
`torch.inference_mode`, and how a forward pass is run fast:
- on CUDA, batches are padded to a few fixed sizes whose forward passes are captured once as CUDA
  graphs and replayed from pinned host memory (one launch sequence a batch);
- on CPU, the network is traced to TorchScript, so a forward pass is one call that holds the GIL
  only on entry and exit. Eager PyTorch re-takes the GIL between every op: next to a busy Python
  thread (the Kafka clients' I/O threads, the service's own loop) a batch of 256 measured 263 ms
  instead of 8 ms; traced, 18 ms. TorchScript is deprecated in favour of torch.compile, whose CPU
  start-up costs tens of seconds; the trace takes about 2 s and any failure falls back to eager.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.checkpoint import CheckpointMeta, load
from models.conformal import WINDOW_POWER, WINDOW_SCORE, window_scale
from models.device import pick_device

# CUDA graph sizes: a batch is padded up to the next one; a larger batch runs without a graph (one
# captured per size would pile up, a graph per distinct batch size, for the life of the process)
BUCKETS = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# The range a reading may take: within MAX_SCALED training standard deviations of the training mean.
# A billion σ is far past any real excursion (it is a unit mistake or a corrupt value), and well inside
# what float32 arithmetic in either network takes without overflow: scaled inputs of 1e9 square to
# 1e18, summed over a window and the model width that stays many orders below float32's 3.4e38.
# (The scaler's σ is at least 1e-8 or, for a constant channel, 1.0: the range is never narrower than ±10.)
MAX_SCALED = 1e9
log = logging.getLogger("sensorcast.forecaster")
# TorchScript's deprecation notices and the tracer's generic cautions, on every model load (the module
# docstring says why we trace; tests check the trace against eager). Process-wide filters narrowed to
# those: `catch_warnings` is not thread-safe, and the hot-swap thread loads models too.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)


def input_bounds(mean: np.ndarray, std: np.ndarray, max_scaled: float = MAX_SCALED) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per channel: readings outside are refused as `out_of_range` before they reach the net."""
    f32 = float(np.finfo(np.float32).max)
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    return np.clip(mean - max_scaled * std, -f32, f32), np.clip(mean + max_scaled * std, -f32, f32)


def interval_widths(meta: CheckpointMeta) -> dict[str, np.ndarray]:
    """{level: (N, H) half-width in raw units} from the split-conformal widths the version carries
    (scaled units, (H, N)); empty for a version without them."""
    stored = (meta.extra.get("intervals") or {}).get("half_width") or {}
    std = np.asarray(meta.scaler["std"], dtype=np.float32)[:, None]
    return {level: (np.asarray(w, dtype=np.float32).T * std).astype(np.float32) for level, w in stored.items()}


class Scaled(nn.Module):
    """The network between the training scaler's two halves: raw readings in, raw forecasts out."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(
        self, x: torch.Tensor, cycle_index: torch.Tensor | None = None
    ) -> torch.Tensor:  # (B, L, N) → (B, H, N)
        scaled = (x - self.mean) / self.std
        out = self.model(scaled) if cycle_index is None else self.model(scaled, None, cycle_index)
        return out * self.std + self.mean


class Forecaster:
    def __init__(
        self,
        model: nn.Module,
        meta: CheckpointMeta,
        device: str = "auto",
        cuda_graphs: bool = True,
        script: bool = True,
    ):
        self.meta = meta
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        mean = torch.as_tensor(np.asarray(meta.scaler["mean"], dtype=np.float32), device=self.device)
        std = torch.as_tensor(np.asarray(meta.scaler["std"], dtype=np.float32), device=self.device)
        self.net = Scaled(self.model, mean, std).eval()
        self.input_bounds = input_bounds(np.asarray(meta.scaler["mean"]), np.asarray(meta.scaler["std"]))
        self.interval_widths = interval_widths(meta)
        stored = meta.extra.get("intervals") or {}
        self._window_power = float(stored.get("power", WINDOW_POWER)) if stored.get("score") == WINDOW_SCORE else None
        self._inv_std = (1 / np.asarray(meta.scaler["std"], dtype=np.float32)).astype(np.float32)
        self.cycle = int(meta.config.get("cycle", 0))  # W: its forecasts depend on each window's phase
        self.use_graphs = cuda_graphs and self.device.type == "cuda" and not self.cycle  # graphs take x alone
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.scripted = self._script() if script and self.device.type == "cpu" else None

    def interval_scale(self, x: np.ndarray) -> np.ndarray | None:
        """(B, N) float32: what each forecast's half-widths are multiplied by, its input window's scale
        (`models.conformal.window_scale`) for x (B, L, N) raw; None for a version calibrated with one
        width for every window."""
        if self._window_power is None:
            return None
        return window_scale((x * self._inv_std).std(axis=1), self._window_power).astype(np.float32)

    @classmethod
    def from_checkpoint(cls, folder: Path, device: str = "auto", version: str | None = None) -> Forecaster:
        model, meta = load(folder, device="cpu")
        if meta.config.get("n_time_features", 0):
            raise ValueError("checkpoints trained with time features are not servable yet; retrain without them")
        if meta.config.get("cycle", 0) and not meta.extra.get("grid"):
            raise ValueError(
                "this checkpoint has a cycle but no time grid: a window's phase is its slot on the grid of the "
                "training data; retrain it with the grid recorded (the retrain flow does), or with cycle=0"
            )
        if meta.architecture == "itransformer" and meta.config.get("n_covariates", 0):
            raise ValueError(
                "checkpoints trained with time covariates are not servable yet; retrain with n_covariates=0"
            )
        if version is not None:
            meta.version = version
        return cls(model, meta, device)

    @property
    def channels(self) -> list[str]:
        return self.meta.channels

    @property
    def lookback(self) -> int:
        return self.meta.lookback

    @property
    def horizon(self) -> int:
        return self.meta.horizon

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def version(self) -> str:
        return self.meta.version

    @property
    def grid(self) -> dict | None:
        """The time grid of the training data ({"interval_ms", "anchor_ms"}), or None: not recorded."""
        return self.meta.extra.get("grid")

    def _forward(self, x: torch.Tensor, *cycle_index: torch.Tensor) -> torch.Tensor:
        return self.net(x, *cycle_index)

    def phases(self, slot_ts: np.ndarray) -> np.ndarray:
        """Each window's phase: the slot of its first step on the training grid, from the time of its
        last (int64 epoch ms, one per window)."""
        grid = self.grid
        last = np.rint((np.asarray(slot_ts, dtype=np.int64) - grid["anchor_ms"]) / grid["interval_ms"])
        return last.astype(np.int64) - (self.lookback - 1)

    def _script(self) -> torch.jit.ScriptModule | None:
        """Trace once at batch 8 (the trace is batch-size agnostic; tests check it against eager)."""
        example = (torch.zeros(8, self.lookback, len(self.channels)),)
        if self.cycle:
            example += (torch.zeros(8, dtype=torch.long),)
        try:
            with torch.no_grad():
                return torch.jit.optimize_for_inference(torch.jit.trace(self.net, example))
        except Exception as e:  # an architecture the tracer cannot follow: serve it eagerly
            log.warning("TorchScript trace failed (%s); the CPU forward runs eagerly", e)
            return None

    @torch.inference_mode()
    def predict(self, x: np.ndarray, slot_ts: np.ndarray | None = None) -> np.ndarray:
        """x (B, L, N) raw readings → (B, H, N) raw forecasts. `slot_ts` (B,) is the time of each window's
        last reading on the grid: a model with a cycle needs it (its phase), others ignore it."""
        if x.ndim != 3 or x.shape[1] != self.lookback or x.shape[2] != len(self.channels):
            raise ValueError(f"expected (batch, {self.lookback}, {len(self.channels)}), got {x.shape}")
        phase: tuple[torch.Tensor, ...] = ()  # the net's second input, for a model with a cycle
        if self.cycle:
            if slot_ts is None or len(slot_ts) != x.shape[0]:
                raise ValueError("this model has a cycle: pass slot_ts, the time of each window's last reading")
            phase = (torch.from_numpy(self.phases(slot_ts)).to(self.device),)
        if self.use_graphs and self._bucket(x.shape[0]) is not None:  # never with a cycle: graphs take x alone
            try:
                return self._predict_graph(x)
            except RuntimeError as e:  # a capture the driver refuses: serve eagerly, never fail
                log.warning("CUDA graph replay failed (%s); running eagerly from now on", e)
                self.use_graphs = False
        inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        out = self.scripted(inputs, *phase) if self.scripted is not None else self._forward(inputs, *phase)
        return out.float().cpu().numpy()

    # -- CUDA: fixed-size buckets, captured graphs, pinned staging buffers ---------------------------

    @staticmethod
    def _bucket(n: int) -> int | None:
        for b in BUCKETS:
            if n <= b:
                return b
        return None  # larger than every bucket: no graph

    def _graph_for(self, size: int):
        if size not in self._graphs:
            shape = (size, self.lookback, len(self.channels))
            host = torch.zeros(shape, dtype=torch.float32).pin_memory()
            static_in = torch.zeros(shape, dtype=torch.float32, device=self.device)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm up kernels and the allocator before capture
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
            self._graphs[size] = (graph, host, static_in, static_out)
        return self._graphs[size]

    def _predict_graph(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        graph, host, static_in, static_out = self._graph_for(self._bucket(n))
        host[:n].copy_(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        if n < host.shape[0]:
            host[n:].zero_()
        static_in.copy_(host, non_blocking=True)
        graph.replay()
        return static_out[:n].float().cpu().numpy()  # the one host sync of the batch

    def warm_up(self) -> None:
        """Compile/capture every bucket now, so the first real batch pays nothing."""
        sizes = BUCKETS if self.use_graphs else (1, 8)
        for b in sizes:
            self.predict(np.zeros((b, self.lookback, len(self.channels)), dtype=np.float32), np.zeros(b, np.int64))
