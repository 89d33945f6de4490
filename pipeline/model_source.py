"""Where the serving model comes from: a local checkpoint folder, or the MLflow registry by alias
(`models:/NAME@ALIAS`), and the background watcher that hot-swaps a newly promoted version."""

from __future__ import annotations

import json
import logging
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.forecaster import Forecaster
from pipeline.core import ModelSlot

log = logging.getLogger("sensorcast.models")
ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")


class ModelUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class RegistryRef:
    name: str
    alias: str


def parse_model_uri(uri: str) -> RegistryRef | Path:
    m = ALIAS_URI.match(uri)
    if m:
        return RegistryRef(m["name"], m["alias"])
    if uri.startswith("models:/"):
        raise ModelUnavailable(f"use models:/NAME@ALIAS to follow an alias, got {uri}")
    return Path(uri)


def load_version(ref: RegistryRef, version: str, device: str) -> Forecaster:
    from models.mlflow.registry import download_checkpoint

    with tempfile.TemporaryDirectory(prefix="sensorcast-model-") as tmp:
        folder = download_checkpoint(ref.name, version, Path(tmp))
        forecaster = Forecaster.from_checkpoint(folder, device=device, version=version)  # weights now in memory
    forecaster.meta.name = ref.name
    return forecaster


def load_model(uri: str, device: str = "auto") -> tuple[Forecaster, RegistryRef | None]:
    """The model to start with, and the alias to follow (None for a local folder)."""
    target = parse_model_uri(uri)
    if isinstance(target, Path):
        if not target.exists():
            raise ModelUnavailable(f"no checkpoint at {target}; train one with `sensorcast train --out {target}`")
        return Forecaster.from_checkpoint(target, device=device), None
    from models.mlflow.registry import RegistryUnavailable, alias_version

    try:
        version = alias_version(target.name, target.alias)
    except RegistryUnavailable as e:
        raise ModelUnavailable(f"{e}; is the MLflow server up? (or pass --model PATH to a checkpoint folder)") from e
    if version is None:
        raise ModelUnavailable(
            f"the registry has no {target.name}@{target.alias}; train and promote one first "
            "(or pass --model PATH to a checkpoint folder)"
        )
    return load_version(target, version, device), target


class ModelWatcher(threading.Thread):
    """Polls the alias; when it moves, loads and warms the new version off the hot path, then swaps.

    A registry outage is logged once when it starts and once when it ends, not every poll; the
    service keeps serving the model it has throughout. A version that fails to load is one of two
    kinds: one this service can never serve (other channels, lookback or cadence, a checkpoint it
    cannot read: a ValueError) is remembered and never downloaded again; any other failure (an MLflow
    503, a timeout, a full temp folder) is transient and retried with backoff until it loads."""

    BACKOFF_S = (1.0, 2.0, 5.0, 15.0, 30.0, 60.0)  # between retries of a transient failure; the last repeats

    def __init__(
        self,
        slot: ModelSlot,
        ref: RegistryRef,
        device: str,
        poll_s: float,
        on_swap: Callable[[Forecaster], None] | None = None,
        lookup: Callable[[str, str], str | None] | None = None,
        on_failure: Callable[[str, str, str], None] | None = None,
    ):
        super().__init__(name="model-watcher", daemon=True)
        self.slot, self.ref, self.device, self.poll_s = slot, ref, device, poll_s
        self.on_swap = on_swap
        self.on_failure = on_failure  # (kind "refused" | "transient", version, reason): a metric counts them
        self.lookup = lookup
        self.stop = threading.Event()
        self.wake = threading.Event()  # set by an announcement: check now, not at the next poll
        self.errors = 0
        self.outage_since: float | None = None  # monotonic time the registry stopped answering
        self.refused: dict[str, str] = {}  # version → why this service can never serve it: not retried
        self.retry: dict[str, tuple[int, float]] = {}  # version → (transient failures, monotonic time of the next try)

    def check_once(self) -> bool:
        from models.mlflow.registry import RegistryUnavailable, alias_version

        try:
            version = (self.lookup or alias_version)(self.ref.name, self.ref.alias)
        except RegistryUnavailable as e:
            if self.outage_since is None:
                self.outage_since = time.monotonic()
                log.error(
                    "model registry unreachable, still serving %s v%s: %s", self.ref.name, self.slot.model.version, e
                )
            return False
        if self.outage_since is not None:
            log.info("model registry reachable again after %.0f s", time.monotonic() - self.outage_since)
            self.outage_since = None
        if version is None or version == self.slot.model.version or version in self.refused:
            return False
        failures, next_try = self.retry.get(version, (0, 0.0))
        if time.monotonic() < next_try:
            return False
        try:
            new = load_version(self.ref, version, self.device)
            new.warm_up()
            old = self.slot.swap(new)
        except ValueError as e:  # this service can never serve it: said once, never downloaded and traced again
            self.refused[version] = str(e)
            self.retry.pop(version, None)
            log.error("not serving %s v%s (still v%s): %s", self.ref.name, version, self.slot.model.version, e)
            self._failed("refused", version, str(e))
            return False
        except Exception as e:  # a fault that may heal: try again after a backoff
            wait = self.BACKOFF_S[min(failures, len(self.BACKOFF_S) - 1)]
            self.retry[version] = (failures + 1, time.monotonic() + wait)
            log.warning(
                "could not load %s v%s (still serving v%s; try %d, next in %.0f s): %s: %s",
                self.ref.name, version, self.slot.model.version, failures + 1, wait, type(e).__name__, e,
            )  # fmt: skip
            self._failed("transient", version, f"{type(e).__name__}: {e}")
            return False
        self.retry.pop(version, None)
        log.info("serving %s v%s (was v%s)", self.ref.name, version, old.version)
        if self.on_swap:
            self.on_swap(new)
        return True

    def _failed(self, kind: str, version: str, reason: str) -> None:
        if self.on_failure:
            self.on_failure(kind, version, reason)

    def next_wait_s(self) -> float:
        """Until the next poll, or sooner when a transient failure's retry is due first."""
        due = [t for _, t in self.retry.values()]
        return max(0.0, min([self.poll_s, *(t - time.monotonic() for t in due)]))

    def announced(self, message: bytes | None) -> None:
        """A promotion announced on the models topic (JSON with "name"): check at once if it is ours.
        Anything else (junk, a JSON list) is ignored: the registry poll remains the fallback."""
        try:
            doc = json.loads(message or b"{}")
        except ValueError:
            return
        if isinstance(doc, dict) and doc.get("name") == self.ref.name:
            self.wake.set()

    def run(self) -> None:
        while not self.stop.is_set():
            self.wake.wait(self.next_wait_s())
            self.wake.clear()
            if self.stop.is_set():
                break
            try:
                self.check_once()
            except Exception as e:  # keep serving the current model
                self.errors += 1
                log.error("could not load the new %s@%s: %s", self.ref.name, self.ref.alias, e)
