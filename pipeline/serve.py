"""Assemble the running service from settings: model, Kafka source and sink, metrics, hot swap,
signals. The loop itself lives in pipeline.loop; this module is the wiring around it."""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time

import torch

from pipeline.changelog import Changelog
from pipeline.core import ForecastCore, ModelSlot, ServiceConfig
from pipeline.kafka import TopicFollower, ensure_topics, service_ends
from pipeline.kafka.sink import TransactionAborted
from pipeline.loop import run
from pipeline.messages import BadCalibration, parse_calibration
from pipeline.metrics import ServiceMetrics
from pipeline.model_source import ModelWatcher, load_model
from pipeline.settings import Settings
from pipeline.state import state_bytes

log = logging.getLogger("sensorcast.serve")


class _Observer:
    """Feeds the metrics after each batch and refreshes consumer lag every few seconds."""

    def __init__(self, metrics: ServiceMetrics, source, every_s: float = 5.0):
        self.metrics, self.source, self.every_s = metrics, source, every_s
        self._next = 0.0

    def on_batch(self, stats, records, published_at: float) -> None:
        self.metrics.on_batch(stats, records, published_at)
        if published_at >= self._next:
            self._next = published_at + self.every_s
            lag = getattr(self.source, "lag", dict)()
            self.metrics.set_lag(lag)


MAX_TRANSACTIONS_LOST = 3  # exactly-once: starts over in a row, none committing, before the service gives up
CALIBRATION_WAIT_S = 10.0  # at start, at most this long for the calibrations already on the topic


class CalibrationFollower:
    """Applies the monitor's calibrations (the compacted calibration topic, read from its start, so
    the latest per version is known at once) to the slot. The service never waits on it: until one
    arrives, or with no monitor at all, a version's intervals are its static split-conformal ones."""

    def __init__(self, slot: ModelSlot):
        self.slot = slot
        self._said: set[str] = set()  # versions whose first applied calibration was logged

    def __call__(self, value: bytes | None) -> None:
        try:
            cal = parse_calibration(value)
        except BadCalibration as e:
            log.warning("calibration not applied, the intervals stay as they are: %s", e)
            return
        if self.slot.calibrate(cal) and cal.version not in self._said:
            self._said.add(cal.version)
            log.info("intervals of %s v%s now follow the monitor's calibration", cal.name, cal.version)


def rehydrate_span_ms(settings: Settings, forecaster) -> int | None:
    """How far back in time a restart re-reads to refill the windows: twice the model's window with
    its fillable gaps, on the grid the service slots readings on (None: no grid known, read back
    `rehydrate_records` records instead)."""
    interval = settings.reading_interval_s * 1000 if settings.reading_interval_s else None
    interval = interval or (forecaster.grid or {}).get("interval_ms")
    if not interval:
        return None
    return int(2 * (forecaster.lookback + settings.max_fill_steps + 1) * interval)


def changelog_kept(settings: Settings, forecaster) -> bool:
    """Whether this service keeps its windows on the changelog: the setting, with a window that fits
    one message."""
    if settings.window_state != "changelog":
        return False
    size = state_bytes(forecaster.lookback, len(forecaster.channels))
    if size > settings.max_message_bytes:
        log.warning(
            "window changelog off: a window of %d bytes is over SENSORCAST_MAX_MESSAGE_BYTES=%d; restarts replay",
            size, settings.max_message_bytes,
        )  # fmt: skip
        return False
    return True


def service_core(slot: ModelSlot, settings: Settings, source, keeps_changelog: bool):
    """The core, with the windows the source restored from the changelog loaded, and the changelog
    that captures them from now on (None when not kept). A consumer-group source restores and
    releases partitions as they move: it calls the core for both from then on."""
    core = ForecastCore(slot, ServiceConfig.from_settings(settings))
    if not keeps_changelog or not getattr(source, "changelog_partitions", None):
        return core, None
    every_s = settings.changelog_interval_ms / 1000
    changelog = Changelog(core, settings.windows_topic, source.changelog_partitions, every_s)

    def restore(restored) -> None:
        core.restore(restored)
        log.info("restored %d windows from %s", len(restored), settings.windows_topic)

    if source.restored:
        restore(source.restored)
        source.restored = {}
    if hasattr(source, "on_restore"):
        source.on_restore, source.on_release = restore, core.release
    return core, changelog


def serve(settings: Settings, stop: threading.Event | None = None, metrics: ServiceMetrics | None = None) -> int:
    """Serve until SIGTERM/SIGINT (or `stop`); the batch in flight is published and committed first."""
    torch.set_num_threads(settings.torch_threads)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):  # from the start: a stop during start-up is clean too
            signal.signal(sig, lambda *_: stop.set())
    uri = settings.default_model_uri
    if uri.startswith("models:/"):
        import mlflow

        mlflow.set_tracking_uri(settings.tracking_uri)

        mlflow.set_registry_uri(
            settings.tracking_uri
        )  # one server: a registry URI set earlier in the process must not win
    forecaster, ref = load_model(uri, settings.device)
    forecaster.warm_up()
    log.info(
        "serving %s v%s on %s (L=%d, H=%d, channels %s)",
        forecaster.name,
        forecaster.version,
        forecaster.device,
        forecaster.lookback,
        forecaster.horizon,
        forecaster.channels,
    )

    ensure_topics(settings)
    keeps_changelog = changelog_kept(settings, forecaster)
    shape = (forecaster.lookback, len(forecaster.channels)) if keeps_changelog else None
    source, sink = service_ends(settings, rehydrate_span_ms(settings, forecaster), shape)
    slot = ModelSlot(forecaster)
    core, changelog = service_core(slot, settings, source, keeps_changelog)

    metrics = metrics or ServiceMetrics()
    metrics.set_model(forecaster.name, forecaster.version)
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, settings.metrics_host, lambda: not stop.is_set())

    def swapped(new) -> None:
        metrics.set_model(new.name, new.version)
        metrics.swaps.inc()
        gc.freeze()  # the new model's objects join the frozen ones (see below)

    def not_served(kind: str, version: str, reason: str) -> None:
        metrics.load_failures.labels(kind=kind).inc()

    watcher = (
        ModelWatcher(slot, ref, settings.device, settings.model_poll_s, on_swap=swapped, on_failure=not_served)
        if ref
        else None
    )
    followers = [TopicFollower(settings, settings.calibration_topic, CalibrationFollower(slot), since_ms=0)]
    if watcher:
        watcher.start()
        followers.append(TopicFollower(settings, settings.models_topic, watcher.announced))  # promotions land at once
    for follower in followers:
        follower.start()
    # the calibrations already on the compacted topic, before the first forecast (a bounded wait on the
    # broker, never on the monitor: with none running the topic is empty and this returns at once)
    if not followers[0].caught_up.wait(CALIBRATION_WAIT_S):
        log.warning(
            "the calibration topic was not read within %.0f s: static intervals until it is", CALIBRATION_WAIT_S
        )
    # torch, numpy and the clients leave ~10^6 long-lived objects; a full collection walked them all
    # in ~100 ms, every few seconds under load: the p99's worst spikes. Freeze them out of the walk.
    gc.collect()
    gc.freeze()
    log.info(
        "consuming %s as group %s with %s, forecasts to %s",
        settings.readings_topic,
        settings.consumer_group,
        settings.kafka_client,
        settings.forecasts_topic,
    )
    started, handled, lost_in_a_row = time.monotonic(), 0, 0
    observer = _Observer(metrics, source)
    try:
        while True:
            try:
                handled += run(source, sink, core, stop, observer, changelog)
                break
            except TransactionAborted as e:
                # exactly-once: nothing of the aborted transaction is read, so start over from the
                # last committed offsets with fresh windows (the replay refills them), as a restart would
                lost_in_a_row = 0 if sink.committed else lost_in_a_row + 1
                if lost_in_a_row > MAX_TRANSACTIONS_LOST:
                    raise
                log.warning("%s; reading again from the last committed offsets", e)
                sink.close()
                source.close()
                source, sink = service_ends(settings, rehydrate_span_ms(settings, forecaster), shape)
                core, changelog = service_core(slot, settings, source, keeps_changelog)
                observer.source = source
        log.info("stopping after %d readings in %.0f s", handled, time.monotonic() - started)
    finally:
        if watcher:
            watcher.stop.set()
            watcher.wake.set()
        for follower in followers:
            follower.close()
        sink.close()
        source.close()
    return 0
