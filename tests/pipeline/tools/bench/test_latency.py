"""The latency benchmark's in-memory half (its figures are checked in `make bench`, not here)."""

from __future__ import annotations

import os

from pipeline.tools.bench.in_memory import in_memory
from pipeline.tools.bench.report import cpu_seconds, percentiles


def test_in_memory_bench_reports_every_figure() -> None:
    doc = in_memory("cpu", entities=5, readings=600, log=lambda _m: None)
    assert doc["device"] == "cpu" and doc["batched_readings_per_s"] > 0 and doc["naive_readings_per_s"] > 0
    assert doc["no_forward_readings_per_s"] > 0
    assert [r["batch"] for r in doc["inference"]] == [1, 8, 64, 256]
    assert all(0 < r["p50_ms"] <= r["p99_ms"] for r in doc["inference"])


def test_percentiles() -> None:
    p = percentiles([float(i) for i in range(1, 101)])
    assert p == {"p50_ms": 50.5, "p95_ms": 95.05, "p99_ms": 99.01}


def test_cpu_seconds_counts_this_process_working() -> None:
    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert cpu_seconds(os.getpid()) > before
