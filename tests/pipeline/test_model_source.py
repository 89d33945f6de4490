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


def test_a_version_the_service_cannot_serve_is_said_once_and_never_loaded_again(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, every registry poll downloaded and traced the refused version again, indefinitely."""
    import pipeline.model_source as model_source

    loads: list[str] = []

    def load_version(ref, version, device):
        loads.append(version)
        return LastValueModel(["temp", "rh"], version=version)  # other channels: the swap refuses it

    monkeypatch.setattr(model_source, "load_version", load_version)
    slot = ModelSlot(LastValueModel(["temp"], version="1"))
    watcher = ModelWatcher(slot, RegistryRef("m", "champion"), "cpu", 1.0, lookup=lambda *_: "2")
    with caplog.at_level(logging.ERROR, logger="sensorcast.models"):
        swaps = [watcher.check_once() for _ in range(4)]
    assert swaps == [False] * 4 and slot.model.version == "1" and loads == ["2"]
    (line,) = [r.getMessage() for r in caplog.records]
    assert "not serving m v2 (still v1)" in line and "expects channels ['temp', 'rh']" in line


def test_a_model_trained_at_another_cadence_is_not_swapped_in() -> None:
    old, new = LastValueModel(["temp"], version="1"), LastValueModel(["temp"], version="2")
    old.grid, new.grid = {"interval_ms": 3_600_000, "anchor_ms": 0}, {"interval_ms": 60_000, "anchor_ms": 0}
    with pytest.raises(ValueError, match="trained every 60000 ms"):
        ModelSlot(old).swap(new)
