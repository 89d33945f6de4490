"""The query API against the real broker: history loaded on start, newer forecasts followed, the
latest per entity by timestamp, 404 for an entity never seen."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import orjson
import pytest

from pipeline.api import ForecastApi, LatestForecasts
from pipeline.kafka import ensure_topics
from pipeline.messages import format_ts

HOUR = 3_600_000


def forecast(entity: str, hour: int, level: float) -> tuple[bytes, bytes]:
    doc = {"entity": entity, "ts": format_ts(hour * HOUR), "forecast": {"temp": [level] * 4}}
    return entity.encode(), orjson.dumps(doc)


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_latest_is_by_timestamp_and_garbage_is_ignored() -> None:
    latest = LatestForecasts()
    for _key, value in [forecast("a", 5, 1.0), forecast("a", 3, 2.0), (b"a", b"{not json"), (b"b", b'{"ts": 1}')]:
        latest.add(value)
    assert latest.entities() == ["a"] and latest.get("a")["forecast"]["temp"][0] == 1.0  # hour 5, not 3


@pytest.mark.integration
def test_the_api_answers_from_history_then_follows_the_topic(kafka_settings, produce) -> None:
    ensure_topics(kafka_settings, [kafka_settings.forecasts_topic])
    topic = kafka_settings.forecasts_topic
    produce(kafka_settings, [forecast("pump-1", 1, 10.0), forecast("pump-2", 1, 20.0)], topic=topic)
    api = ForecastApi(kafka_settings, port=0, history_s=3600).start()
    base = f"http://127.0.0.1:{api.port}"
    try:
        deadline = time.monotonic() + 30
        while get(f"{base}/forecasts")[1].get("entities") != ["pump-1", "pump-2"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert get(f"{base}/healthz") == (200, {"status": "ok", "entities": 2})
        produce(kafka_settings, [forecast("pump-1", 2, 11.0)], topic=topic)
        while get(f"{base}/forecasts/pump-1")[1]["forecast"]["temp"][0] != 11.0 and time.monotonic() < deadline:
            time.sleep(0.1)
        status, doc = get(f"{base}/forecasts/pump-1")
        assert status == 200 and doc["ts"] == format_ts(2 * HOUR) and doc["forecast"]["temp"] == [11.0] * 4
        status, many = get(f"{base}/forecasts?entity=pump-2&entity=nobody")
        assert status == 200 and set(many["forecasts"]) == {"pump-2"} and many["missing"] == ["nobody"]
        assert get(f"{base}/forecasts/nobody")[0] == 404
        assert get(f"{base}/nowhere")[0] == 404
    finally:
        api.close()
