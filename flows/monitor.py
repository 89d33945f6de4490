"""The drift monitor, a process of its own (`sensorcast monitor`): Prefect's client stays out of the
serving process. It follows the readings and forecasts topics from now, scores every forecast step
when its reading arrives (`flows.drift.DriftTracker`), exports the rolling errors as Prometheus
metrics and logs them to an MLflow run of its own (`MlflowLog`), and when drift fires, emits the
Prefect event `sensorcast.drift`, at most once per cool-down; the retrain deployment's trigger turns
it into a run. The yardstick is the champion's per-channel holdout MAE, tagged on its version by the retrain flow.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable

import orjson

from flows.drift import DRIFT_EVENT, DriftTracker, drift_resource
from pipeline.kafka import TopicFollower
from pipeline.messages import BadReading, parse_ts
from pipeline.settings import Settings

log = logging.getLogger("sensorcast.monitor")


def champion_reference(settings: Settings) -> tuple[str, dict[str, float]]:
    """(version, per-channel holdout MAE) of the serving model, from its version's tags."""
    from mlflow import MlflowClient

    mv = MlflowClient(settings.tracking_uri, settings.tracking_uri).get_model_version_by_alias(
        settings.model_name, settings.model_alias
    )
    if "holdout_mae" not in mv.tags:
        raise RuntimeError(f"{settings.model_name} v{mv.version} carries no holdout_mae tag: retrain it with the flow")
    return str(mv.version), json.loads(mv.tags["holdout_mae"])


def mae_ratio_gauge(registry=None):
    """The monitor's Prometheus gauge (the process's default registry unless another is given)."""
    from prometheus_client import REGISTRY, Gauge

    return Gauge(
        "sensorcast_rolling_mae_ratio",
        "rolling MAE / champion holdout MAE",
        ["entity", "channel", "model"],
        registry=registry or REGISTRY,
    )


def emit_drift_event(settings: Settings, detail: dict) -> None:
    """Tell Prefect; a deployment trigger turns the event into a retrain. Never blocks: the events
    client sends in the background, and a Prefect outage is a log line."""
    try:
        from prefect.events import emit_event

        emit_event(
            event=DRIFT_EVENT,
            resource={"prefect.resource.id": drift_resource(settings.model_name)},
            payload=detail,
        )
    except Exception as e:
        log.error("could not emit %s to Prefect (%s); the next firing tries again", DRIFT_EVENT, e)


class MlflowLog:
    """The monitor's own MLflow run (experiment "sensorcast-monitor"): the tracker's summary as metrics
    every time it is called, and each drift firing as a text artifact. An MLflow outage costs a log
    line, once, never the monitor."""

    EXPERIMENT = "sensorcast-monitor"

    def __init__(self, settings: Settings, champion_version: str):
        self.settings, self.version = settings, champion_version
        self.run_id: str | None = None
        self.step = 0
        self._down = False

    def _client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.settings.tracking_uri)

    def _run(self, client) -> str:
        if self.run_id is None:
            experiment = client.get_experiment_by_name(self.EXPERIMENT)
            exp_id = (
                experiment.experiment_id
                if experiment
                else client.create_experiment(
                    self.EXPERIMENT, tags={"mlflow.experimentKind": "custom_model_development"}
                )
            )
            run = client.create_run(
                exp_id,
                run_name=f"monitor-{self.settings.model_name}-v{self.version}",
                tags={"model_name": self.settings.model_name, "champion_version": self.version},
            )
            self.run_id = run.info.run_id
        return self.run_id

    def _guard(self, what: str, call: Callable[[], None]) -> None:
        try:
            call()
            if self._down:
                log.info("MLflow answers again")
            self._down = False
        except Exception as e:
            if not self._down:
                log.error("could not %s in MLflow (%s); the monitor goes on and retries", what, e)
            self._down = True

    def metrics(self, summary: dict[str, float]) -> None:
        if not summary:
            return

        def send() -> None:
            from mlflow.entities import Metric

            client = self._client()
            now_ms = int(time.time() * 1000)
            batch = [Metric(k, float(v), now_ms, self.step) for k, v in summary.items()]
            client.log_batch(self._run(client), metrics=batch)
            self.step += 1

        self._guard("log the rolling errors", send)

    def drift(self, detail: dict) -> None:
        def send() -> None:
            client = self._client()
            client.log_dict(self._run(client), detail, f"drift/{self.step:06d}.json")

        self._guard("log a drift firing", send)


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
            entity, ts = doc["entity"], parse_ts(doc["ts"], self.settings.ts_unit) / 1000.0
        except (orjson.JSONDecodeError, KeyError, TypeError, BadReading):
            return  # the service's dead-letter topic already names bad readings
        if topic == self.settings.forecasts_topic:
            step = doc.get("step_ms")
            step_s = step / 1000 if isinstance(step, int | float) and not isinstance(step, bool) and step > 0 else None
            self.tracker.on_forecast(entity, ts, doc.get("forecast", {}), step_s)
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

    def run(
        self,
        stop: threading.Event,
        clock: Callable[[], float],
        on_summary: Callable[[dict[str, float]], None] | None = None,
        summary_every_s: float = 60.0,
    ) -> None:
        """Follow both topics from now until `stop`; `clock` gives the cool-down's seconds. Every
        `summary_every_s` (and once at the end) the tracker's summary goes to `on_summary`."""
        followers = self.followers
        for f in followers:
            f.start()
        next_summary = clock() + summary_every_s
        try:
            while not stop.is_set():
                if on_summary is not None and clock() >= next_summary:
                    on_summary(self.tracker.summary())
                    next_summary = clock() + summary_every_s
                try:
                    topic, value = self.inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                self.handle(topic, value, clock())
            if on_summary is not None:
                on_summary(self.tracker.summary())
        finally:
            for f in followers:
                f.close()

    def wait_ready(self, timeout_s: float = 30) -> bool:
        """True once both topics are followed from their ends (what arrives from then on is seen)."""
        return all(f.ready.wait(timeout_s) for f in self.followers)
