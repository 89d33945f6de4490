"""Where the serving model comes from: an outage of the registry is told apart from "no alias"."""

from __future__ import annotations

import logging

import pytest

from models.mlflow.registry import RegistryUnavailable
from pipeline.core import ModelSlot
from pipeline.model_source import ModelWatcher, RegistryRef
from tests.fixtures.fakes import LastValueModel


def test_a_registry_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers = iter([RegistryUnavailable("connection refused")] * 3 + ["1", "1"])

    def lookup(name: str, alias: str) -> str | None:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    slot = ModelSlot(LastValueModel(["temp"], version="1"))
    watcher = ModelWatcher(slot, RegistryRef("m", "champion"), "cpu", 1.0, lookup=lookup)
    with caplog.at_level(logging.INFO, logger="sensorcast.models"):
        swaps = [watcher.check_once() for _ in range(5)]
    assert swaps == [False] * 5 and slot.model.version == "1"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("model registry unreachable, still serving m v1") and "connection refused" in lines[0]
    assert lines[1].startswith("model registry reachable again")
