"""The lifecycle month's incidents, each as it would happen to a user: the weather by day (a level
shift from a day on), junk on every internal topic, and MLflow down across a promotion."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable

from pipeline.settings import Settings
from pipeline.tools import stack
from pipeline.tools.bench.month import HOUR_MS, LEVEL

RESTART_CEILING_S = 600.0  # MLflow back after its outage: a guard against a hang, not a budget


def weather_days(sites: int, shift_from_day: int | None, shift: float):
    """The weather, one hour of every entity at a time, grouped by day (UTC of the readings' time);
    from the `shift_from_day`-th day on (0: the first), `shift` degrees added to temp and dewp."""
    from pipeline.tools.producers import replay_rows

    days = itertools.groupby(replay_rows(copies=sites, offset_rows=24 * 7), key=lambda row: row[1] // (24 * HOUR_MS))
    for n, (day, rows) in enumerate(days):
        if shift_from_day is not None and n >= shift_from_day:
            rows = ((e, ts, {**v, "temp": v["temp"] + shift, "dewp": v["dewp"] + shift}) for e, ts, v in rows)
        yield day, rows


def internal_junk(settings: Settings, horizon: int, forecasts_topics: list[str]) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) for every internal topic: what a broken or hostile producer could leave there
    (a JSON list, broken JSON, an unknown or out-of-range level, empty or ragged rows, a doc without
    its fields)."""
    from pipeline.messages import encode_calibration

    rows = [0.0] * horizon

    def forecast(intervals: object) -> bytes:
        doc = {"entity": "junk", "ts": 0, "step_ms": HOUR_MS, "forecast": {"temp": rows}, "intervals": intervals,
               "model": {"name": settings.model_name, "version": "1"}}  # fmt: skip
        return json.dumps(doc).encode()

    def bands(level: str, n: int) -> dict:
        return {level: {"lower": {"temp": [0.0] * n}, "upper": {"temp": [1.0] * n}}}

    ragged = {LEVEL: {"lower": {"temp": [0.0]}, "upper": {"temp": rows}}}
    forecasts = [b"[1, 2, 3]", b"{not json", forecast(bands("abc", horizon)), forecast(bands("0.5", horizon)),
                 forecast(bands(LEVEL, 0)), forecast(ragged), forecast([1, 2])]  # fmt: skip
    models = [b"[1, 2, 3]", b"{not json", json.dumps({"name": settings.model_name}).encode()]
    odd_level = encode_calibration(settings.model_name, "1", {"abc": {"temp": [1.0] * horizon}}, "2013-01-01T00:00:00Z")
    calibrations = [b"[1, 2, 3]", b"{not json", odd_level]
    return (
        [(topic, b"junk", v) for topic in forecasts_topics for v in forecasts]
        + [(settings.models_topic, settings.model_name.encode(), v) for v in models]
        + [(settings.calibration_topic, b"junk", v) for v in calibrations]
    )


class MlflowOutage(threading.Thread):
    """MLflow stopped the moment the day's run registers its version (before the gate's
    promotion or the services' download), for `seconds`, then started again. A version a drift run
    registers meanwhile is not the one."""

    def __init__(self, settings: Settings, seconds: float, log: Callable[[str], None]):
        super().__init__(name="mlflow-outage", daemon=True)
        self.settings, self.seconds, self.log = settings, seconds, log
        self.report: dict = {}
        self.error = ""
        self.cancelled = threading.Event()
        from mlflow import MlflowClient

        self.client = MlflowClient(settings.tracking_uri)
        self.seen = {v.version for v in self._versions()}

    def _versions(self) -> list:
        return self.client.search_model_versions(f"name = '{self.settings.model_name}'")

    def _scheduled_one(self) -> bool:
        new = [v for v in self._versions() if v.version not in self.seen]
        self.seen |= {v.version for v in new}
        return any(self.client.get_run(v.run_id).data.tags.get("trigger") == "schedule" for v in new)

    def cancel(self) -> None:
        """The run ended without registering a version: no outage this time."""
        self.cancelled.set()

    def run(self) -> None:
        while not self._scheduled_one():
            if self.cancelled.wait(0.1):
                return
        stack.down(self.settings, ["mlflow"], log=lambda _m: None)
        down_at = time.monotonic()
        self.log(f"       MLflow down for {self.seconds:.0f} s: a version was just registered")
        time.sleep(self.seconds)
        self.error = _restart_mlflow(self.settings)
        self.report = {"down_s": round(time.monotonic() - down_at, 1)}


def _restart_mlflow(settings: Settings, tries: int = 3) -> str:
    """MLflow started again; "" once it answers, else why not, with its log's last lines.

    The restart lands amid the day's busiest minutes (a retrain training, services restarting
    after the kill): on two loaded cores the server has taken over 90 s to answer, so its
    start-up gets a ceiling against hangs, not the user-facing default."""
    patient = settings.model_copy(update={"startup_timeout_s": max(settings.startup_timeout_s, RESTART_CEILING_S)})
    why = ""
    for _ in range(tries):
        try:
            stack.up(patient, ["mlflow"], log=lambda _m: None)
            return ""
        except stack.StackError as e:
            why = str(e)
    log_file = stack.services(settings, ["mlflow"])[0].log_file
    tail = log_file.read_text(errors="replace")[-3000:] if log_file.exists() else "(no log)"
    return f"MLflow did not come back after its outage ({tries} tries): {why}\nlast log lines:\n{tail}"
