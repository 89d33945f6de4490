"""Prometheus metrics of the service, in a registry of its own (no process globals), served with a
health endpoint beside them: GET /metrics, GET /healthz."""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class BatchHistogram:
    """A Prometheus histogram observed a batch of values at a time (`observe_many`: one numpy pass,
    not one `observe` per forecast), exposed as the same _bucket, _count and _sum series."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry):
        self.name, self.documentation = name, documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self.bounds_list = [float(b) for b in buckets]
        self.counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # the last: above every bound (+Inf)
        self.sum = 0.0
        self._lock = threading.Lock()  # the loop observes, the scrape thread collects
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        if len(values) <= 4:  # a few: 0.5 µs for one value this way, 2.3 µs through numpy
            for v in values.tolist():
                self.observe(v)
            return
        per_bucket = np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.counts))
        with self._lock:
            self.counts += per_bucket
            self.sum += float(values.sum())

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.bounds_list, value)
        with self._lock:
            self.counts[i] += 1
            self.sum += value

    def collect(self):
        with self._lock:
            cumulative, total = np.cumsum(self.counts).tolist(), self.sum
        les = [*map(floatToGoString, self.bounds.tolist()), "+Inf"]
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=list(zip(les, cumulative, strict=True)), sum_value=total
        )


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.e2e = BatchHistogram(
            "sensorcast_e2e_latency_seconds",
            "reading produced → its forecast handed to the producer",
            LATENCY_BUCKETS,
            r,
        )
        self.inference = Histogram(
            "sensorcast_inference_latency_seconds", "one batched forward pass", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_rows = Histogram(
            "sensorcast_batch_size",
            "forecasts per forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.readings = Counter("sensorcast_readings", "readings consumed", registry=r)
        self.forecasts = Counter("sensorcast_forecasts", "forecasts published", registry=r)
        self.buffered = Counter("sensorcast_readings_buffered", "valid readings still warming a window", registry=r)
        self.dead = Counter("sensorcast_dead_letters", "readings sent to the dead-letter topic", ["reason"], registry=r)
        self.filled = Counter("sensorcast_steps_forward_filled", "missing steps filled forward", registry=r)
        self.resets = Counter("sensorcast_window_resets", "windows reset after a long gap", registry=r)
        self.replaced = Counter("sensorcast_slots_replaced", "readings that replaced a filled slot", registry=r)
        self.channels_filled = Counter(
            "sensorcast_channels_filled", "missing channel values filled from the last reading", registry=r
        )
        self.rekeyed = Counter(
            "sensorcast_readings_rekeyed", "readings whose key was null or not their entity", registry=r
        )
        self.evicted = Counter("sensorcast_entities_evicted", "idle entities whose windows were freed", registry=r)
        self.lag = Gauge(
            "sensorcast_consumer_lag", "messages behind the end of each assigned partition", ["partition"], registry=r
        )
        self.model_version = Gauge(
            "sensorcast_model_version",
            "serving model version (numeric; 0 for a local checkpoint)",
            ["name"],
            registry=r,
        )
        self.swaps = Counter("sensorcast_model_swaps", "hot swaps to a new model version", registry=r)
        self.load_failures = Counter(
            "sensorcast_model_load_failures",
            "promoted versions not swapped in: refused (this service can never serve it) or transient (retried)",
            ["kind"],
            registry=r,
        )
        self.model_info = Gauge(
            "sensorcast_model_info",
            "the serving model (1; name and version in the labels)",
            ["name", "version"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            "sensorcast_consumer_lag_seconds", "now minus the produce time of the newest reading handled", registry=r
        )

        self.model: dict[str, str] = {}
        self.started = time.monotonic()
        self.last_batch: float | None = None

    def serve(self, port: int, host: str = "127.0.0.1", running: Callable[[], bool] = lambda: True):
        """/metrics for Prometheus and /healthz (200 while serving a model, 503 before or while stopping),
        on a daemon thread; returns the server (`shutdown()` stops it)."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                if self.path.split("?")[0] == "/metrics":
                    self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    status, doc = metrics.health(running())
                    self._send(status, json.dumps(doc).encode(), "application/json")
                else:
                    self._send(404, b"try /metrics or /healthz\n", "text/plain")

            def _send(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:  # scrapes every few seconds: not worth a log line each
                pass

        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="sensorcast-metrics", daemon=True).start()
        return server

    def health(self, running: bool) -> tuple[int, dict]:
        now = time.monotonic()
        doc = {
            "status": "serving" if running and self.model else ("stopping" if self.model else "starting"),
            "model": self.model,
            "uptime_s": round(now - self.started, 1),
            "last_batch_age_s": None if self.last_batch is None else round(now - self.last_batch, 1),
        }
        return (200 if doc["status"] == "serving" else 503), doc

    def set_lag(self, behind: dict[int, int]) -> None:
        for partition, n in behind.items():
            self.lag.labels(partition=str(partition)).set(n)

    def set_model(self, name: str, version: str) -> None:
        self.model_version.clear()
        self.model_version.labels(name=name).set(float(version) if str(version).isdigit() else 0.0)
        self.model_info.clear()
        self.model_info.labels(name=name, version=str(version)).set(1)
        self.model = {"name": name, "version": str(version)}

    def on_batch(self, stats, records, published_at: float) -> None:
        self.last_batch = time.monotonic()
        self.readings.inc(stats.readings)
        self.forecasts.inc(stats.forecasts)
        self.buffered.inc(stats.buffered)
        self.filled.inc(stats.filled)
        self.resets.inc(stats.resets)
        self.evicted.inc(stats.evicted)
        for reason, n in stats.dead.items():
            self.dead.labels(reason=reason).inc(n)
        if stats.batch_rows:
            self.inference.observe(stats.inference_s)
            self.batch_rows.observe(stats.batch_rows)
        self.replaced.inc(stats.replaced)
        self.channels_filled.inc(stats.channels_filled)
        self.rekeyed.inc(stats.rekeyed)
        now_ms = published_at * 1000
        if stats.forecast_record_ts:  # forecasts only: not replays, not dead letters
            produced = np.asarray(stats.forecast_record_ts, dtype=np.float64)
            self.e2e.observe_many(np.maximum(0.0, now_ms - produced[produced > 0]) / 1000)
        newest = max((r.timestamp_ms for r in records if not r.replay), default=0)
        if newest:
            self.lag_seconds.set(max(0.0, now_ms - newest) / 1000)
