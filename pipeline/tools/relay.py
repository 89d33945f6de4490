"""The Kafka floor: the service's own loop, source and sink with no model in it. Each reading
becomes a forecast-shaped message holding its entity and timestamp, so the latency benchmark can
put the service beside what Kafka and the client alone cost on the same machine.

    sensorcast bench relay --kafka-client confluent   # (the benchmark starts it for itself)
"""

from __future__ import annotations

import logging
import signal
import threading

import orjson

from pipeline.core import ServiceConfig
from pipeline.kafka import ensure_topics, service_ends
from pipeline.loop import run
from pipeline.records import Outgoing, Record
from pipeline.settings import Settings

log = logging.getLogger("sensorcast.relay")


class RelayCore:
    """pipeline.core.ForecastCore's shape (prepare → forecast → finish) with nothing to forecast."""

    def __init__(self, cfg: ServiceConfig):
        self.cfg = cfg

    def prepare(self, records: list[Record]) -> list[Record]:
        return records

    def forecast(self, _records: list[Record]) -> tuple:
        return ()

    def finish(self, records: list[Record]) -> tuple[list[Outgoing], None]:
        out, topic = [], self.cfg.forecasts_topic
        for r in records:
            try:
                doc = orjson.loads(r.value or b"")
                value = orjson.dumps({"entity": doc["entity"], "ts": doc["ts"], "forecast": {}})
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
            out.append(Outgoing(topic, r.key, value))
        return out, None


def relay(settings: Settings, stop: threading.Event | None = None) -> int:
    """Relay until SIGTERM/SIGINT (or `stop`), committing as the service does; returns readings handled."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    ensure_topics(settings)
    source, sink = service_ends(settings)
    log.info(
        "consuming %s with %s, relaying to %s", settings.readings_topic, settings.kafka_client, settings.forecasts_topic
    )
    try:
        return run(source, sink, RelayCore(ServiceConfig.from_settings(settings)), stop)
    finally:
        sink.close()
        source.close()
