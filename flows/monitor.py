"""The drift monitor, a process of its own (`sensorcast monitor`): Prefect's client stays out of the
serving process. It follows the readings and forecasts topics from now, scores every forecast step
when its reading arrives (`flows.drift.DriftTracker`), exports the rolling errors as Prometheus
metrics, and when drift fires, emits the Prefect event `sensorcast.drift`, at most once per cool-down.
The yardstick is the champion's per-channel holdout MAE, tagged on its version by the retrain flow.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable

import orjson

from flows.drift import DriftTracker
from pipeline.kafka import TopicFollower
from pipeline.messages import BadReading, parse_ts
from pipeline.settings import Settings

log = logging.getLogger("sensorcast.monitor")
DRIFT_EVENT = "sensorcast.drift"


def champion_reference(settings: Settings) -> tuple[str, dict[str, float]]:
    """(version, per-channel holdout MAE) of the serving model, from its version's tags."""
    from mlflow import MlflowClient

    mv = MlflowClient(settings.tracking_uri, settings.tracking_uri).get_model_version_by_alias(
        settings.model_name, settings.model_alias
    )
    if "holdout_mae" not in mv.tags:
        raise RuntimeError(f"{settings.model_name} v{mv.version} carries no holdout_mae tag: retrain it with the flow")
    return str(mv.version), json.loads(mv.tags["holdout_mae"])


def emit_drift_event(settings: Settings, detail: dict) -> None:
    """Tell Prefect; a deployment trigger turns the event into a retrain. Never blocks: the events
    client sends in the background, and a Prefect outage is a log line."""
    try:
        from prefect.events import emit_event

        emit_event(
            event=DRIFT_EVENT,
            resource={"prefect.resource.id": f"sensorcast.model.{settings.model_name}"},
            payload=detail,
        )
    except Exception as e:
        log.error("could not emit %s to Prefect (%s); the next firing tries again", DRIFT_EVENT, e)


class DriftMonitor:
    def __init__(
        self,
        settings: Settings,
        reference_mae: dict[str, float],
        on_drift: Callable[[dict], None],
        threshold: float = 2.0,
        patience: int = 20,
        cooldown_s: float = 3600.0,
        window: int = 200,
        metrics=None,
    ):
        self.settings, self.on_drift, self.metrics = settings, on_drift, metrics
        self.tracker = DriftTracker(list(reference_mae), reference_mae, window, threshold, patience, cooldown_s)
        self.inbox: queue.Queue[tuple[str, bytes | None]] = queue.Queue()
        self.fired: list[dict] = []
        s = settings
        self.followers = [
            TopicFollower(s, topic, lambda v, t=topic: self.inbox.put((t, v)))
            for topic in (s.readings_topic, s.forecasts_topic)
        ]

    def handle(self, topic: str, value: bytes | None, now_s: float) -> None:
        try:
            doc = orjson.loads(value or b"")
            entity, ts = doc["entity"], parse_ts(doc["ts"]) / 1000.0
        except (orjson.JSONDecodeError, KeyError, TypeError, BadReading):
            return  # the service's dead-letter topic already names bad readings
        if topic == self.settings.forecasts_topic:
            self.tracker.on_forecast(entity, ts, doc.get("forecast", {}))
            return
        values = {c: v for c, v in (doc.get("values") or {}).items() if isinstance(v, int | float)}
        if self.tracker.on_reading(entity, ts, values, now_s):
            detail = {
                "entity": entity,
                "reason": f"rolling MAE of {entity} above {self.tracker.threshold}× the champion's holdout MAE",
                "mae_ratio": {c: round(self.tracker.mae(entity, c), 3) for c in self.tracker.channels},
            }
            self.fired.append(detail)
            log.warning("drift: %s", detail["reason"])
            self.on_drift(detail)
        if self.metrics is not None:
            for c in self.tracker.channels:
                self.metrics.labels(entity, c, "model").set(self.tracker.mae(entity, c))
                self.metrics.labels(entity, c, "persistence").set(self.tracker.mae(entity, c, naive=True))

    def run(self, stop: threading.Event, clock: Callable[[], float]) -> None:
        """Follow both topics from now until `stop`; `clock` gives the cool-down's seconds."""
        followers = self.followers
        for f in followers:
            f.start()
        try:
            while not stop.is_set():
                try:
                    topic, value = self.inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                self.handle(topic, value, clock())
        finally:
            for f in followers:
                f.close()

    def wait_ready(self, timeout_s: float = 30) -> bool:
        """True once both topics are followed from their ends (what arrives from then on is seen)."""
        return all(f.ready.wait(timeout_s) for f in self.followers)
