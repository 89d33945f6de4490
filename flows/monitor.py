"""The drift monitor, a process of its own (`sensorcast monitor`): Prefect's client stays out of the
serving process. It follows the readings and forecasts topics from now, scores every forecast step
when its reading arrives (`flows.drift.DriftTracker`; only readings the service took), exports the
rolling errors as Prometheus metrics and logs them to an MLflow run of its own (`flows.monitor_outputs`), and
when drift fires, emits the Prefect event `sensorcast.drift`, at most once per cool-down and entity;
the retrain deployment's trigger turns it into a run. The yardstick is the champion's per-channel
holdout MAE, tagged on its version by the retrain flow, and it follows the models topic: a promotion
changes the yardstick at once.

It also scores the champion's published intervals (`flows.calibration`): coverage and width per level,
channel and step, as Prometheus gauges and in its MLflow run. It adapts them (ACI) once per grid step
of stream time, and every `calibration_every_s` publishes the multipliers, when they moved, to the
compacted calibration topic, keyed by version, where the service picks them up. A restarted monitor
resumes from its version's last publication.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections import Counter
from collections.abc import Callable

import orjson

from flows.calibration import CoverageGauges, IntervalCalibrator
from flows.coverage import well_formed_intervals
from flows.drift import DriftTracker
from pipeline.kafka import TopicFollower
from pipeline.messages import (
    BadCalibration,
    BadReading,
    TimePolicy,
    check_key,
    parse_calibration,
    parse_reading,
    parse_ts,
)
from pipeline.records import Record
from pipeline.settings import Settings

log = logging.getLogger("sensorcast.monitor")


def _numbers_per_channel(forecast: object) -> bool:
    """A forecast's {"channel": [H numbers]}, every row as long: what the trackers can score."""
    if not isinstance(forecast, dict) or not forecast:
        return False
    rows = list(forecast.values())
    return all(
        isinstance(row, list) and len(row) == len(rows[0])
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in row)
        for row in rows
    )  # fmt: skip


class DriftMonitor:
    """Scores the live forecasts against the readings the service took, and follows the champion.

    A reading is scored only if the service would have taken it: the same decode, time policy and key
    check (`pipeline.messages.parse_reading`), so a refused reading never counts as an error. When a
    new champion is announced on the models topic (or found at a summary, the fallback), its holdout
    MAE becomes the yardstick and the rolling errors start afresh: they were the old model's. An
    entity silent for `ttl_s` is forgotten, with its gauge labels."""

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
        *,
        version: str | None = None,
        reference: Callable[[], tuple[str, dict[str, float], int | None]] | None = None,
        on_champion: Callable[[str], None] | None = None,
        ttl_s: float | None = None,
        publish: Callable[[bytes, bytes], None] | None = None,
        coverage_gauges: CoverageGauges | None = None,
        coverage_window: int = 1000,
        seasonal_period: int | None = None,
    ):
        self.settings, self.on_drift, self.metrics = settings, on_drift, metrics
        self.version, self.reference, self.on_champion, self.ttl_s = version, reference, on_champion, ttl_s
        self._tracker_args = (window, threshold, patience, cooldown_s)
        self.tracker = DriftTracker(
            list(reference_mae), reference_mae, *self._tracker_args, seasonal_period=seasonal_period
        )
        self.policy = TimePolicy.of(settings)
        self.inbox: queue.Queue[tuple[str, Record]] = queue.Queue()
        self.fired: list[dict] = []
        self.refused: Counter[str] = Counter()  # readings the service refused too, by reason: never scored
        self.junk: Counter[str] = Counter()  # internal-topic messages skipped, by topic and why: never fatal
        self.handled: Counter[str] = Counter()  # messages handled per topic, junk included (what a test waits on)
        self.served: Counter[str] = Counter()  # forecasts per model version since the last summary
        self.levels = [f"{level:g}" for level in settings.interval_level_list]  # the levels a retrain calibrates
        self.junk_levels_said: list[str] = []  # the foreign levels last warned of
        self.intervals = IntervalCalibrator(
            settings, list(reference_mae), publish, coverage_gauges, coverage_window, version
        )
        s = settings
        self.followers = [
            TopicFollower(s, topic, lambda r, t=topic: self.inbox.put((t, r)), whole_records=True)
            for topic in (s.readings_topic, s.forecasts_topic, s.models_topic)
        ] + [  # the compacted topic from its start: a restarted monitor resumes its version's multipliers
            TopicFollower(s, s.calibration_topic, lambda r: self.inbox.put((s.calibration_topic, r)), since_ms=0,
                          whole_records=True)
        ]  # fmt: skip

    MAX_INTERNAL_BYTES = 4_000_000  # an internal message larger than this is junk (the service's are ~1 MB at most)

    def handle(self, topic: str, record: Record, now_s: float) -> None:
        """One message of a followed topic. Junk on an internal topic is counted and skipped: nothing
        on them can stop the monitor or lock a tracker."""
        try:
            if topic != self.settings.readings_topic and len(record.value or b"") > self.MAX_INTERNAL_BYTES:
                self.junk[f"{topic}: oversized"] += 1
            else:
                self._handle(topic, record, now_s)
        except Exception as e:  # a message no check foresaw: counted and skipped, never fatal
            self.junk[f"{topic}: {type(e).__name__}"] += 1
            log.warning("skipped a message on %s: %s: %s", topic, type(e).__name__, e)
        finally:
            self.handled[topic] += 1

    def _handle(self, topic: str, record: Record, now_s: float) -> None:
        if topic == self.settings.models_topic:
            self._announced(record.value)
        elif topic == self.settings.calibration_topic:
            self._calibration(record.value)
        elif topic == self.settings.forecasts_topic:
            self._forecast(record.value, now_s)
        else:
            self._reading(record, now_s)

    def _announced(self, value: bytes | None) -> None:
        try:
            doc = orjson.loads(value or b"")
            name, version = doc["name"], str(doc["version"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.junk[f"{self.settings.models_topic}: not an announcement"] += 1
            return
        if name == self.settings.model_name and version != self.version:
            self.follow_champion()

    def follow_champion(self) -> bool:
        """Re-read the champion; if it changed, measure against it from now on. True if it changed."""
        if self.reference is None:
            return False
        try:
            version, mae, period = self.reference()
        except Exception as e:  # MLflow down, or a version without its tag: keep the yardstick we have
            log.error("could not read the champion's holdout MAE (%s); keeping v%s's", e, self.version)
            return False
        if version == self.version:
            return False
        log.info("champion v%s → v%s: its holdout MAE is the yardstick from now on", self.version, version)
        self.version = version
        self.tracker = DriftTracker(list(mae), mae, *self._tracker_args, seasonal_period=period)
        self.intervals.new_champion(version, list(mae))  # from where the outgoing champion's got to
        if self.metrics is not None:
            self.metrics.clear()
        if self.on_champion is not None:
            self.on_champion(version)
        return True

    def _forecast(self, value: bytes | None, now_s: float) -> None:
        try:
            doc = orjson.loads(value or b"")
            entity, ts = doc["entity"], parse_ts(doc["ts"], self.settings.ts_unit) / 1000.0
        except (orjson.JSONDecodeError, KeyError, TypeError, BadReading):
            self.junk[f"{self.settings.forecasts_topic}: not a forecast"] += 1
            return
        if not isinstance(entity, str):
            self.junk[f"{self.settings.forecasts_topic}: not a forecast"] += 1
            return
        step = doc.get("step_ms")
        step_s = step / 1000 if isinstance(step, int | float) and not isinstance(step, bool) and step > 0 else None
        forecast, intervals = doc.get("forecast"), doc.get("intervals")
        if not _numbers_per_channel(forecast) or not len(next(iter(forecast.values()))):  # nothing to score
            self.junk[f"{self.settings.forecasts_topic}: no forecast rows"] += 1
            return
        model = doc.get("model")
        if isinstance(model, dict) and isinstance(model.get("version"), str | int):
            self.served[str(model["version"])] += 1
        if intervals is not None and not well_formed_intervals(intervals, forecast, self.levels):
            self.junk[f"{self.settings.forecasts_topic}: malformed intervals"] += 1
            others = sorted(map(str, intervals)) if isinstance(intervals, dict) else []
            if not others or not well_formed_intervals(intervals, forecast, others):
                return  # not our service's (it never sends such rows): nothing of it is scored
            if not set(others) & set(self.levels) and self.junk_levels_said != others:
                self.junk_levels_said = others  # said once per set of levels: a misconfiguration, not junk
                log.warning(
                    "forecasts carry the interval levels %s; this monitor scores %s (SENSORCAST_INTERVAL_LEVELS), "
                    "so their intervals are not scored", others, self.levels,
                )  # fmt: skip
            intervals = None  # well-formed rows at other levels: the point forecast is still scored
        if intervals:
            model = doc.get("model")
            version = str(model.get("version")) if isinstance(model, dict) else None
            if self.version is not None and version != self.version:
                intervals = None  # another version's: its misses say nothing of the champion's multipliers
            else:
                self.tracker.coverage = self.intervals.track(list(intervals), len(next(iter(forecast.values()))))
        self.tracker.on_forecast(entity, ts, forecast, step_s, now_s, intervals)

    def _calibration(self, value: bytes | None) -> None:
        try:
            cal = parse_calibration(value)
        except BadCalibration:
            self.junk[f"{self.settings.calibration_topic}: not a calibration"] += 1
            return
        self.intervals.published(cal)

    def calibrate(self, now_ms: int | None = None) -> bool:
        """Publish the champion's multipliers if they moved since the last time (`IntervalCalibrator`)."""
        return self.intervals.calibrate(now_ms)

    def summary(self) -> dict[str, float]:
        """The rolling errors and, once the champion's intervals are scored, their coverage and width;
        and whether the forecasts since the last summary came from the champion (`served_is_champion`,
        1 or 0: a service that could not swap to a promoted version keeps serving the old one)."""
        cov = self.tracker.coverage
        out = self.tracker.summary() | (cov.summary() if cov is not None else {})
        if self.served and self.version is not None:
            others = {v: n for v, n in self.served.items() if v != self.version}
            out["served_is_champion"] = 0.0 if others else 1.0
            if others:
                log.warning("forecasts since the last summary came from %s, not the champion v%s",
                            ", ".join(f"v{v} ({n})" for v, n in sorted(others.items())), self.version)  # fmt: skip
            self.served.clear()
        return out

    def _reading(self, record: Record, now_s: float) -> None:
        s, channels = self.settings, self.tracker.channels
        try:
            reading = parse_reading(
                record.value,
                channels,
                s.max_payload_bytes,
                record_ts_ms=record.timestamp_ms,
                policy=self.policy,
                allow_missing=s.max_missing_fill > 0,
            )
            check_key(record.key, reading.entity, s.key_policy)
        except BadReading as bad:  # the service refused it too, and its dead letter says why
            self.refused[bad.reason] += 1
            return
        entity = reading.entity
        values = {c: float(v) for c, v in zip(channels, reading.values, strict=True) if math.isfinite(v)}
        if self.tracker.on_reading(entity, reading.ts_ms / 1000.0, values, now_s):
            detail = {
                "entity": entity,
                "reason": f"rolling MAE of {entity} above {self.tracker.threshold}× the champion's holdout MAE",
                "mae_ratio": {c: round(self.tracker.mae(entity, c), 3) for c in self.tracker.channels},
                "champion_version": self.version,
            }
            self.fired.append(detail)
            log.warning("drift: %s", detail["reason"])
            self.on_drift(detail)
        if self.metrics is not None:
            for c in self.tracker.channels:
                self.metrics.labels(entity, c, "model").set(self.tracker.mae(entity, c))
                self.metrics.labels(entity, c, "persistence").set(self.tracker.mae(entity, c, naive=True))
                if self.tracker.seasonal_period:
                    self.metrics.labels(entity, c, "seasonal").set(self.tracker.mae(entity, c, of="seasonal"))

    def forget_idle(self, now_s: float) -> list[str]:
        """Forget the entities silent for the TTL, and their gauge labels."""
        if self.ttl_s is None:
            return []
        gone = self.tracker.forget_idle(now_s, self.ttl_s)
        if self.metrics is not None:
            for entity in gone:
                for c in self.tracker.channels:
                    for model in ("model", "persistence", "seasonal"):
                        try:
                            self.metrics.remove(entity, c, model)
                        except KeyError:  # never scored: no label to remove
                            pass
        return gone

    def run(
        self,
        stop: threading.Event,
        clock: Callable[[], float],
        on_summary: Callable[[dict[str, float]], None] | None = None,
        summary_every_s: float = 60.0,
    ) -> None:
        """Follow the topics from now until `stop`; `clock` gives the cool-down's seconds. Every
        `summary_every_s` (and once at the end) the summary goes to `on_summary`; every
        `settings.calibration_every_s` (and once at the end) the adapted multipliers are published
        (`calibrate`)."""
        followers = self.followers
        for f in followers:
            f.start()
        next_summary = clock() + summary_every_s
        calibrate_every = self.settings.calibration_every_s
        next_calibration = clock() + calibrate_every
        forget_every = min(self.ttl_s / 10, 60.0) if self.ttl_s else None
        next_forget = clock() + (forget_every or 0)
        try:
            while not stop.is_set():
                if clock() >= next_summary:
                    self.follow_champion()  # the fallback, when an announcement was missed
                    if on_summary is not None:
                        on_summary(self.summary())
                    next_summary = clock() + summary_every_s
                if clock() >= next_calibration:
                    self.calibrate()
                    next_calibration = clock() + calibrate_every
                if forget_every is not None and clock() >= next_forget:
                    self.forget_idle(clock())
                    next_forget = clock() + forget_every
                try:
                    topic, value = self.inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                self.handle(topic, value, clock())
            self.calibrate()  # the multipliers adapted since the last publication: a restart resumes from them
            if on_summary is not None:
                on_summary(self.summary())
        finally:
            for f in followers:
                f.close()

    def wait_ready(self, timeout_s: float = 30) -> bool:
        """True once the topics are followed from their ends (what arrives from then on is seen)."""
        return all(f.ready.wait(timeout_s) for f in self.followers)
