"""A messy stream through the real broker to the running service, on both clients, across 3
partitions: jitter, re-sends, broken clocks, epoch seconds, a dropped channel, null keys and junk.
Nothing stops the service or silences an entity, every refusal has its reason, and nothing it
produces is over the broker's limit."""

from __future__ import annotations

import time
from collections import Counter

import orjson
import pytest

from pipeline.kafka import ensure_topics, topic_reader
from pipeline.messages import parse_ts
from pipeline.settings import Settings
from pipeline.tools.producers import INCIDENTS, messy
from tests.e2e.test_serve import start_service

pytestmark = pytest.mark.integration

HOUR = 3_600_000
L, ENTITIES, STEPS = 8, 4, 60
BROKER_LIMIT = 1_048_588


def clean_rows(start_ms: int):
    for s in range(STEPS):
        for e in range(ENTITIES):
            yield f"site-{e}", start_ms + s * HOUR, {"temp": 20.0 + s % 5 + e, "pressure": 1.0 + 0.1 * e}


def read_all(settings: Settings, topic: str) -> list:
    consumer = topic_reader(settings, topic, from_beginning=True)
    out, idle = [], 0
    while idle < 3:
        got = [r for records in consumer.poll(timeout_ms=500).values() for r in records]
        out += got
        idle = 0 if got else idle + 1
    consumer.close()
    return out


def test_a_messy_stream_neither_stops_the_service_nor_silences_an_entity(
    kafka_settings: Settings, kafka_client: str, tiny_checkpoint, produce, collect
) -> None:
    s = kafka_settings.model_copy(
        update={
            "model_uri": str(tiny_checkpoint(grid={"interval_ms": HOUR, "anchor_ms": 0}, lookback=L)),
            "metrics_port": 0,
            "topic_partitions": 3,
            "kafka_client": kafka_client,
        }
    )
    ensure_topics(s)
    now = int(time.time() * 1000)
    start = now - now % HOUR - STEPS * HOUR  # recent: a ts in seconds or in 2101 is judged against now
    stream = list(messy(clean_rows(start), every=7, seed=1))
    incidents = [i for _, i, _ in stream if i is not None]
    assert {i.kind for i in incidents} == set(INCIDENTS) - {"jitter"}, "the mix holds every kind of incident"
    forecasts = collect(s, s.forecasts_topic)
    thread, stop = start_service(s)
    try:
        produce(s, [m for m, _, _ in stream])
        expected_dead = sum(i.expect is not None for i in incidents)
        collect(s, s.dlq_topic).wait_for(expected_dead, timeout_s=60)
        forecasts.wait_for(ENTITIES * (STEPS - L), timeout_s=60)
        time.sleep(1.0)
        alive = thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=30)
    assert alive, "no single message may stop the service"

    dead = read_all(s, s.dlq_topic)
    reasons = Counter(orjson.loads(r.value)["reason"] for r in dead)
    assert reasons == Counter(i.expect for i in incidents if i.expect), "each refusal with its reason, no other"
    out = read_all(s, s.forecasts_topic)
    assert max(len(r.value) + len(r.key or b"") for r in dead + out) < BROKER_LIMIT // 10
    docs = [orjson.loads(r.value) for r in out]
    assert all(r.key == d["entity"].encode() for r, d in zip(out, docs, strict=True)), "forecasts keyed by entity"

    forecast_at = {(d["entity"], parse_ts(d["ts"])) for d in docs}
    assert len(forecast_at) == len(docs), "each slot forecast once"
    last = start + (STEPS - 1) * HOUR
    for incident in incidents:
        if incident.ts_ms + (L + 1) * HOUR > last:
            continue  # too near the end of the stream to show a full window after it
        after = [t for e, t in forecast_at if e == incident.entity and incident.ts_ms < t <= incident.ts_ms + L * HOUR]
        assert after, f"{incident.entity} was not forecast within one window after {incident.kind}"
    jittery = "site-0"  # its clock jitters by ±25% of the hour: every reading keeps its slot, none is filled in
    slots = sorted(t for e, t in forecast_at if e == jittery)
    assert slots == [start + k * HOUR for k in range(L - 1, STEPS)]
