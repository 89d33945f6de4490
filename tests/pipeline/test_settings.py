from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.settings import Settings


def test_env_then_flags(monkeypatch) -> None:
    monkeypatch.setenv("SENSORCAST_KAFKA_PORT", "19092")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    s = Settings.load(max_batch=64, device=None)
    assert s.bootstrap_servers == "127.0.0.1:19092" and s.tracking_uri == "http://mlflow:5000"
    assert s.max_batch == 64 and s.device == "auto"  # a flag left at None does not override
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:9092")
    assert Settings.load().bootstrap_servers == "broker:9092"


def test_partitions_and_their_validation() -> None:
    assert Settings.load(partitions="0,2").partition_list == [0, 2]
    assert Settings.load().partition_list is None
    with pytest.raises(ValidationError):
        Settings.load(partitions="zero")
    with pytest.raises(ValidationError):
        Settings.load(offset_reset="middle")


def test_settings_travel_through_the_environment_unchanged(monkeypatch) -> None:
    from pipeline.settings import Settings

    original = Settings.load(kafka_port=19092, model_name="m", retrain_interval_s=30.0, kafka_client="confluent")
    for key, value in original.as_env().items():
        monkeypatch.setenv(key, value)
    again = Settings.load()
    assert again.bootstrap_servers == "127.0.0.1:19092" and again.model_dump() == {
        **original.model_dump(),
        "kafka_bootstrap_servers": "127.0.0.1:19092",
        "mlflow_tracking_uri": original.tracking_uri,
        "prefect_api_url": original.prefect_url,
    }


def test_every_setting_says_what_it_does_and_the_docs_table_is_current() -> None:
    from pipeline.settings import REPO_ROOT, Settings, settings_table

    assert [n for n, f in Settings.model_fields.items() if not f.description] == []
    page = (REPO_ROOT / "docs" / "configuration.md").read_text()
    start, end = page.index("<!-- settings:start -->\n"), page.index("<!-- settings:end -->")
    assert page[start + len("<!-- settings:start -->\n") : end] == settings_table(), (
        "docs/configuration.md's settings table is stale: paste the output of `.venv/bin/python -m pipeline.settings`"
    )
