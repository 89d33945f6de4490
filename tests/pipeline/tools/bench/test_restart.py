"""`bench restart` on a small fleet against the test broker: both paths bring every window back, and
the changelog path reads one record per entity where the replay reads the history again."""

from __future__ import annotations

import pytest

from pipeline.settings import Settings
from pipeline.tools.bench.restart import REPLAY_STEPS, records_read, run

pytestmark = pytest.mark.integration


def test_the_changelog_restart_reads_one_record_per_entity_and_the_replay_the_history(
    kafka_settings: Settings,
) -> None:
    doc = run(kafka_settings, (12,), log=lambda _m: None)
    (fleet,) = doc["fleets"]
    replay, changelog, warm = fleet["paths"]["replay"], fleet["paths"]["changelog"], fleet["warm_up"]
    assert changelog["changelog_records"] == 12 and replay["changelog_records"] == warm["changelog_records"] == 0
    # the replay run handled one reading per entity after the changelog's last marker: those alone are read again
    assert changelog["input_records"] == 12
    # the history is stamped a step a second: the replay reads back its span by time, however fast it was sent
    assert replay["input_records"] >= 12 * REPLAY_STEPS and warm["input_records"] >= 12 * REPLAY_STEPS
    for path in (replay, changelog):
        assert 0 < path["first_forecast_s"] <= path["all_windows_whole_s"] and path["peak_rss_mb"] > 0
    assert doc["machine"]["cpu_model"]


def test_the_restart_log_is_counted_by_path() -> None:
    log = (
        "partition 0: 5 windows from the changelog, then 7 records from its position 90\n"
        "partition 1: no changelog; replaying 300 records\n"
    )
    assert records_read(log) == {"changelog_records": 5, "input_records": 307}
