"""The service's metrics follow Prometheus conventions: the model as an info metric, lag in seconds."""

from __future__ import annotations

from prometheus_client import generate_latest

from pipeline.core import BatchStats
from pipeline.metrics import ServiceMetrics
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
