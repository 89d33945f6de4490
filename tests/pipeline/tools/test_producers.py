from __future__ import annotations

import datetime as dt
import itertools
import os
import subprocess
import sys

import polars as pl
import pytest

from pipeline.tools.producers import paced, replay_rows, simulate


def test_replay_interleaves_entities_in_time_order_and_makes_offset_copies(tmp_path) -> None:
    t0 = dt.datetime(2026, 1, 1)
    frame = pl.DataFrame(
        {
            "time": [t0 + dt.timedelta(hours=h) for h in range(5)] * 2,
            "site": ["a"] * 5 + ["b"] * 5,
            "v": [float(i) for i in range(10)],
        }
    )
    path = tmp_path / "x.csv"
    frame.write_csv(path)
    rows = list(replay_rows(path, entity_column="site"))
    assert [r[0] for r in rows[:4]] == ["a", "b", "a", "b"]
    assert [r[2]["v"] for r in rows if r[0] == "b"] == [5.0, 6.0, 7.0, 8.0, 9.0]
    copies = list(replay_rows(path, entity_column="site", copies=2, offset_rows=2))
    a1 = [r for r in copies if r[0] == "a-1"]
    assert len(a1) == 3 and a1[0][2]["v"] == 2.0 and a1[0][1] == rows[0][1]  # shifted values, same clock


def test_weather_replay_is_three_airports() -> None:
    first = list(itertools.islice(replay_rows(), 6))
    assert sorted({r[0] for r in first}) == ["EWR", "JFK", "LGA"]
    assert set(first[0][2]) == {"temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib"}


def test_simulator_ticks_every_entity_with_increasing_time() -> None:
    rows = list(itertools.islice(simulate(entities=3, channels=2, start_ms=0, interval_ms=1000), 9))
    assert [r[0] for r in rows[:3]] == ["sensor-0000", "sensor-0001", "sensor-0002"]
    assert [r[1] for r in rows[::3]] == [0, 1000, 2000]
    assert len(list(paced(iter(rows), rate=0, limit=4))) == 4


@pytest.mark.integration
def test_a_send_the_broker_refuses_is_counted_and_produce_exits_non_zero(kafka_settings, kafka_client) -> None:
    """A topic that takes at most 200-byte messages refuses every weather reading (about 250 bytes)."""
    kafka_settings = kafka_settings.model_copy(update={"kafka_client": kafka_client})
    from kafka.admin import KafkaAdminClient, NewTopic

    from pipeline.kafka import ensure_topics
    from pipeline.tools.producers import stream_to_kafka

    admin = KafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap_servers)
    admin.create_topics([NewTopic(kafka_settings.readings_topic, 1, 1, topic_configs={"max.message.bytes": "200"})])
    admin.close()
    ensure_topics(kafka_settings)
    small = ("a", 0, {"v": 1.0})  # about 60 bytes: accepted
    delivery = stream_to_kafka(kafka_settings, iter([small, *itertools.islice(replay_rows(), 3)]))
    # kafka-python splits a refused batch and lands the small reading; librdkafka refuses the batch whole
    assert delivery.sent == 4 and delivery.failed >= 3 and delivery.confirmed + delivery.failed == 4
    assert "MessageSizeTooLarge" in delivery.first_error or "Message size too large" in delivery.first_error

    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "SENSORCAST_READINGS_TOPIC": kafka_settings.readings_topic,
        "SENSORCAST_KAFKA_CLIENT": kafka_client,
    }
    cli = subprocess.run(
        [sys.executable, "-m", "pipeline.tools.cli", "produce", "--limit", "5", "--rate", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "5 of 5 readings were not delivered" in " ".join((cli.stdout + cli.stderr).split())
