"""Where the monitor's findings go: the champion's yardstick it reads from the registry, the
Prometheus gauge, the Prefect drift event and its own MLflow run. Each output fails soft (a log
line) so an outage never stops the monitor."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from flows.drift import DRIFT_EVENT, drift_resource
from pipeline.settings import Settings

log = logging.getLogger("sensorcast.monitor")


def champion_reference(settings: Settings) -> tuple[str, dict[str, float], int | None]:
    """(version, per-channel holdout MAE, seasonal naive's period or None) of the serving model, from its
    version's tags."""
    from mlflow import MlflowClient

    mv = MlflowClient(settings.tracking_uri, settings.tracking_uri).get_model_version_by_alias(
        settings.model_name, settings.model_alias
    )
    if "holdout_mae" not in mv.tags:
        raise RuntimeError(f"{settings.model_name} v{mv.version} carries no holdout_mae tag: retrain it with the flow")
    period = mv.tags.get("seasonal_period")
    return str(mv.version), json.loads(mv.tags["holdout_mae"]), int(period) if period else None


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

    def new_champion(self, version: str) -> None:
        """The next summary opens a run of its own, named for the champion it measures."""
        self.version, self.run_id, self.step = version, None, 0

    def _client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.settings.tracking_uri)

    def _run(self, client) -> str:
        if self.run_id is None:
            from models.mlflow.registry import MODEL_TRAINING

            experiment = client.get_experiment_by_name(self.EXPERIMENT)
            exp_id = (
                experiment.experiment_id
                if experiment
                else client.create_experiment(self.EXPERIMENT, tags=MODEL_TRAINING)
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
