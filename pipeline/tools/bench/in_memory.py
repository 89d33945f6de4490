"""`sensorcast bench latency --in-memory`: the service's core alone, no Kafka: inference per batch
size, and readings per second batched beside a naive per-reading loop, on the CPU and, where there is
one, the GPU (the path to measure on a GPU machine). The benchmark model is built here too."""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

CHANNELS = 7
LOOKBACK, HORIZON = 96, 24


def bench_checkpoint(folder: Path) -> Path:
    """The benchmark model: the iTransformer size `sensorcast train` writes by default (weights need
    no training to be timed)."""
    import torch

    from models.checkpoint import save
    from models.data import Scaler
    from models.nets import PRESETS, ITransformer, ITransformerConfig

    torch.manual_seed(0)
    model = ITransformer(ITransformerConfig(lookback=LOOKBACK, horizon=HORIZON, **PRESETS["serving"]))
    save(folder, model, [f"ch{j}" for j in range(CHANNELS)], Scaler.identity(CHANNELS), name="bench-itransformer")
    return folder


# -- inference only ------------------------------------------------------------------------------


def inference_table(forecaster, batches=(1, 8, 64, 256), reps: int = 200) -> list[dict]:
    rows = []
    for b in batches:
        x = np.random.default_rng(b).normal(size=(b, forecaster.lookback, len(forecaster.channels))).astype(np.float32)
        for _ in range(10):
            forecaster.predict(x)
        times = []
        n = reps if b <= 64 else max(30, reps // 4)
        for _ in range(n):
            t = time.perf_counter()
            forecaster.predict(x)
            times.append((time.perf_counter() - t) * 1000)
        rows.append(
            {
                "batch": b,
                "p50_ms": round(statistics.median(times), 4),
                "p99_ms": round(float(np.percentile(times, 99)), 4),
            }
        )
    return rows


# -- in memory -----------------------------------------------------------------------------------


class NoForward:
    """The serving model with its forward pass taken out (zeros at once): the loop's own ceiling, what
    decode, windows, encode and accounting allow when the forward pass costs nothing (a fast GPU)."""

    def __init__(self, model):
        self.channels, self.lookback, self.horizon = model.channels, model.lookback, model.horizon
        self.name, self.version, self.input_bounds, self.grid = "no-forward", "0", model.input_bounds, model.grid

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.zeros((len(x), self.horizon, len(self.channels)), dtype=np.float32)


def in_memory(
    device: str,
    entities: int = 100,
    readings: int = 50_000,
    max_batch: int = 256,
    log: Callable[[str], None] = print,
) -> dict:
    """The core without Kafka: batched vs one-reading-at-a-time throughput, and inference per batch."""
    import torch

    from models.forecaster import Forecaster
    from pipeline.core import ForecastCore, ModelSlot, ServiceConfig
    from pipeline.loop import run
    from pipeline.messages import encode_reading, format_ts
    from pipeline.records import Record
    from pipeline.testing import MemorySink, MemorySource
    from pipeline.tools.producers import simulate

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        forecaster = Forecaster.from_checkpoint(bench_checkpoint(Path(tmp)), device=device)
    forecaster.warm_up()
    rows = simulate(entities, CHANNELS, start_ms=0)
    warm = [
        Record(encode_reading(e, format_ts(t), v), e.encode())
        for e, t, v in (next(rows) for _ in range(entities * (LOOKBACK - 1)))
    ]
    stream = [
        Record(encode_reading(e, format_ts(t), v), e.encode()) for e, t, v in (next(rows) for _ in range(readings))
    ]

    def throughput(max_batch: int, limit: int, model=forecaster) -> float:
        """The service's own loop (pipelined forward passes included) until the source is drained."""
        core = ForecastCore(ModelSlot(model), ServiceConfig(max_batch=max_batch))
        core.process(warm)
        src, sink, stop = MemorySource(stream[:limit]), MemorySink(), threading.Event()

        class StopWhenDrained:
            def on_batch(self, stats, records, published_at):
                if src.position >= limit:
                    stop.set()

        t = time.perf_counter()
        run(src, sink, core, stop, StopWhenDrained())
        elapsed = time.perf_counter() - t
        if len(sink.on(core.cfg.forecasts_topic)) != limit:
            raise RuntimeError(f"in-memory run forecast {len(sink.on(core.cfg.forecasts_topic))} of {limit} readings")
        return limit / elapsed

    batched = throughput(max_batch, readings)
    log(f"in-memory batched: {batched:,.0f} readings/s")
    ceiling = throughput(max_batch, readings, NoForward(forecaster))
    log(f"in-memory batched, forward pass taken out: {ceiling:,.0f} readings/s (the loop's own ceiling)")
    naive = throughput(1, min(readings, 5_000))
    log(f"in-memory naive (batch 1): {naive:,.0f} readings/s")
    return {
        "mode": "in-memory",
        "entities": entities,
        "max_batch": max_batch,
        "device": str(forecaster.device),
        "device_name": torch.cuda.get_device_name(0) if forecaster.device.type == "cuda" else "cpu",
        "batched_readings_per_s": round(batched),
        "naive_readings_per_s": round(naive),
        "speedup": round(batched / naive, 2),
        "no_forward_readings_per_s": round(ceiling),
        "inference": inference_table(forecaster),
    }


# -- against the broker ----------------------------------------------------------------------------
