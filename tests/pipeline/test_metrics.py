"""The service's metrics follow Prometheus conventions: the model as an info metric, lag in seconds."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from pipeline.core import BatchStats
from pipeline.metrics import LATENCY_BUCKETS, BatchHistogram, ServiceMetrics
from pipeline.records import Record


def test_model_info_names_one_model_and_lag_is_in_seconds() -> None:
    m = ServiceMetrics()
    m.set_model("sensorcast-itransformer", "3")
    m.set_model("sensorcast-itransformer", "4")  # a swap: the old version's series goes
    m.on_batch(BatchStats(readings=2), [Record(b"", timestamp_ms=1_000), Record(b"", timestamp_ms=4_000)], 6.5)
    text = generate_latest(m.registry).decode()
    assert 'sensorcast_model_info{name="sensorcast-itransformer",version="4"} 1.0' in text
    assert 'version="3"' not in text
    assert "sensorcast_consumer_lag_seconds 2.5" in text  # 6.5 s − the newest reading's 4.0 s


def test_lag_is_per_partition() -> None:
    m = ServiceMetrics()
    m.set_lag({0: 5, 2: 0})
    text = generate_latest(m.registry).decode()
    assert 'sensorcast_consumer_lag{partition="0"} 5.0' in text and 'sensorcast_consumer_lag{partition="2"} 0.0' in text


def test_healthz_says_serving_only_with_a_model_and_while_running() -> None:
    import json
    import urllib.error
    import urllib.request

    from pipeline.tools.stack import free_ports

    m, running = ServiceMetrics(), [True]
    port = free_ports(1)[0]
    server = m.serve(port, "127.0.0.1", lambda: running[0])

    def get(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    try:
        status, body = get("/healthz")
        assert status == 503 and json.loads(body)["status"] == "starting"
        m.set_model("sensorcast-itransformer", "7")
        status, body = get("/healthz")
        assert status == 200 and json.loads(body)["model"] == {"name": "sensorcast-itransformer", "version": "7"}
        assert get("/metrics")[1].count(b'sensorcast_model_info{name="sensorcast-itransformer",version="7"}') == 1
        running[0] = False
        assert get("/healthz")[0] == 503 and get("/nothing")[0] == 404
    finally:
        server.shutdown()


def test_a_batch_histogram_exposes_what_a_histogram_observed_one_at_a_time_would() -> None:
    values = [0.0, 0.001, 0.0011, 0.0249, 0.03, 1.0, 7.5, 11.0, 99.0]  # on bounds, between them, above all
    one, batch = CollectorRegistry(), CollectorRegistry()
    h = Histogram("x_seconds", "doc", buckets=LATENCY_BUCKETS, registry=one)
    for v in values:
        h.observe(v)
    batched = BatchHistogram("x_seconds", "doc", LATENCY_BUCKETS, batch)
    batched.observe_many(np.array(values))  # a batch: one numpy pass
    batched.observe_many(np.array(values[:3]))  # a few: one at a time
    for v in values[:3]:
        h.observe(v)

    def series(registry) -> list[str]:
        return [line for line in generate_latest(registry).decode().splitlines() if "x_seconds_created" not in line]

    assert series(batch) == series(one) and 'x_seconds_bucket{le="0.001"} 4.0' in series(batch)


def test_forecast_latency_is_observed_per_batch_from_the_readings_produce_times() -> None:
    m = ServiceMetrics()
    m.on_batch(BatchStats(readings=3, forecasts=3, forecast_record_ts=[5_000, 5_900, 0]), [], 6.0)
    text = generate_latest(m.registry).decode()
    assert "sensorcast_e2e_latency_seconds_count 2.0" in text  # a record without a time is not timed
    assert 'sensorcast_e2e_latency_seconds_bucket{le="0.1"} 1.0' in text and "_sum 1.1" in text
