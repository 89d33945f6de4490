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
    assert "expects channels" in watcher.refused["2"]


def test_a_transient_load_failure_is_retried_with_backoff_until_the_version_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before, an MLflow 503 or a full temp folder put the version on the refused list for good: the
    service kept the old model until restarted while the registry and the gate assumed the new one."""
    import pipeline.model_source as model_source

    outcomes = [OSError("No space left on device"), ConnectionError("503 Service Unavailable")]
    loads: list[str] = []

    def load_version(ref, version, device):
        loads.append(version)
        if outcomes:
            raise outcomes.pop(0)
        return LastValueModel(["temp"], version=version)

    monkeypatch.setattr(model_source, "load_version", load_version)
    clock = [1000.0]
    monkeypatch.setattr(model_source.time, "monotonic", lambda: clock[0])
    failures: list[tuple[str, str]] = []
    slot = ModelSlot(LastValueModel(["temp"], version="1"))
    watcher = ModelWatcher(slot, RegistryRef("m", "champion"), "cpu", 30.0, lookup=lambda *_: "2",
                           on_failure=lambda kind, version, _why: failures.append((kind, version)))  # fmt: skip
    assert watcher.check_once() is False and watcher.next_wait_s() == 1.0  # the first backoff, not the 30 s poll
    assert watcher.check_once() is False and loads == ["2"]  # not yet due: not downloaded again
    clock[0] += 1.0
    assert watcher.check_once() is False and loads == ["2", "2"] and watcher.next_wait_s() == 2.0
    clock[0] += 2.0
    assert watcher.check_once() is True and slot.model.version == "2" and watcher.retry == {}
    assert failures == [("transient", "2"), ("transient", "2")] and watcher.refused == {}


def test_junk_on_the_models_topic_never_wakes_or_kills_the_watcher() -> None:
    watcher = ModelWatcher(ModelSlot(LastValueModel(["temp"])), RegistryRef("m", "champion"), "cpu", 1.0)
    for junk in (b"[1, 2]", b"\xff\xfe", b"null", b'"m"', b"{", None, b'{"name": ["m"]}'):
        watcher.announced(junk)
        assert not watcher.wake.is_set(), junk
    watcher.announced(b'{"name": "m", "version": "3"}')
    assert watcher.wake.is_set()


def test_a_model_trained_at_another_cadence_is_not_swapped_in() -> None:
    old, new = LastValueModel(["temp"], version="1"), LastValueModel(["temp"], version="2")
    old.grid, new.grid = {"interval_ms": 3_600_000, "anchor_ms": 0}, {"interval_ms": 60_000, "anchor_ms": 0}
    with pytest.raises(ValueError, match="trained every 60000 ms"):
        ModelSlot(old).swap(new)
