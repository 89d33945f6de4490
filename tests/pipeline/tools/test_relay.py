"""The no-model relay (the benchmark's Kafka floor) runs the service's own loop: every reading comes
back as a forecast-shaped message with its entity and timestamp, bad ones are skipped, all committed."""

from __future__ import annotations

import threading

import orjson

from pipeline.core import ServiceConfig
from pipeline.loop import run
from pipeline.messages import encode_reading
from pipeline.records import Record
from pipeline.testing import MemorySink, MemorySource
from pipeline.tools.relay import RelayCore


def test_every_reading_comes_back_with_its_entity_and_ts_and_all_is_committed() -> None:
    good = [Record(encode_reading(f"e{i % 3}", i * 1000, {"temp": 1.0}), f"e{i % 3}".encode()) for i in range(50)]
    source = MemorySource(good[:20] + [Record(b"{broken"), Record(None)] + good[20:])
    sink, stop = MemorySink(), threading.Event()
    cfg = ServiceConfig(forecasts_topic="out", max_batch=8)
    threading.Timer(0.5, stop.set).start()
    assert run(source, sink, RelayCore(cfg), stop) == 52
    docs = [orjson.loads(m.value) for m in sink.confirmed]
    assert [(d["entity"], d["ts"]) for d in docs] == [
        (orjson.loads(r.value)["entity"], orjson.loads(r.value)["ts"]) for r in good
    ]
    assert {m.topic for m in sink.confirmed} == {"out"} and source.committed == 52
