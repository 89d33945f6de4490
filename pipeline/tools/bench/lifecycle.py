"""`sensorcast bench lifecycle`: a month of operation in accelerated time, through the real stack.

The loop's second month is where it used to break (issue #36): a searched champion that scheduled
retrains never retrained, a setting change that crashed the gate, a registry blip that a service
never recovered from, junk on an internal topic that killed the monitor. This driver runs the month:

    broker, MLflow and Prefect (the local stack) · `flows serve` (the retrain deployments) ·
    one `sensorcast serve` per Kafka client, side by side on the same readings · `sensorcast monitor`

Day 1 ends with a search (a run of the `retrain-search` deployment); each later day streams its
readings (messy: a gateway's jitter, re-sends, broken clocks, junk), waits until every service has
committed them, then ends with a run of the scheduled deployment. Through the month: the services
are SIGKILLed (day `kill_day`), the weather shifts by `shift` degrees (from `shift_day`), MLflow is
down for `outage_s` across a promotion (the first from `outage_day` on), the horizon changes (day
`horizon_day`: `flows serve` restarts with it, as a user would), and junk lands on every internal
topic every day. The clock is the driver's: a day is as long as the machine takes for it.

The report says what happened, the test (tests/e2e/test_lifecycle.py) asserts it. Readings keep
their weather-table timestamps, so "hours" of training data count by the readings' own time.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from pipeline.settings import Settings
from pipeline.tools import stack
from pipeline.tools.bench.incidents import MlflowOutage, internal_junk, weather_days
from pipeline.tools.bench.month import (
    HOUR_MS,
    LEVEL,
    Month,
    Plan,
    Retrain,
    coverage,
    on_the_hour,
    said_of,
    weeks,
)
from pipeline.tools.bench.probes import committed_everything, served_version, wait_until
from pipeline.tools.child import CliProcess, ServeProcess


class LifecycleError(RuntimeError):
    """The month could not go on: what broke, with the log lines that say why."""


class Stack:
    """The month's processes: `flows serve`, a service per client, the monitor. Each is watched: one that
    exits unasked is recorded, and the month fails on it."""

    def __init__(self, settings: Settings, plan: Plan, env: dict[str, str], folder: Path):
        self.settings, self.plan, self.env, self.folder = settings, plan, env, folder
        self.flows: CliProcess | None = None
        self.services: dict[str, ServeProcess] = {}
        self.ports: dict[str, int] = {}
        self.monitor: CliProcess | None = None
        self.deaths: dict[str, int] = {}

    def client_settings(self, client: str) -> Settings:
        tag, s = client.replace("-", "_"), self.settings
        topics = {"forecasts_topic": f"{s.forecasts_topic}.{tag}", "dlq_topic": f"{s.dlq_topic}.{tag}"}
        return s.model_copy(update=topics)

    def client_env(self, client: str) -> dict[str, str]:
        """The month's environment with this client's own output topics: only those on top, so the
        plan's settings (its interval level, lookback, calibration period) hold for every process."""
        s = self.client_settings(client)
        return {**self.env, "SENSORCAST_FORECASTS_TOPIC": s.forecasts_topic, "SENSORCAST_DLQ_TOPIC": s.dlq_topic}

    def start_flows(self, horizon: int) -> None:
        from flows.schedule import served_deployment_id

        if self.flows is not None:
            self.flows.stop()
        env = {**self.env, "SENSORCAST_HORIZON": str(horizon)}
        self.flows = CliProcess(["flows", "serve"], env, self.folder / f"flows-serve-h{horizon}.log").start()
        wait_until(lambda: served_deployment_id(self.settings) is not None or self.flows.proc.poll() is not None,
                   300, "flows serve ready")  # fmt: skip
        if self.flows.proc.poll() is not None:
            raise LifecycleError(f"flows serve exited: {self.flows.output()[-2000:]}")

    def start_service(self, client: str, n: int = 0) -> None:
        port = self.ports.setdefault(client, stack.free_ports(1)[0])
        env = {**self.client_env(client), "SENSORCAST_KAFKA_CLIENT": client, "SENSORCAST_METRICS_PORT": str(port),
               "SENSORCAST_CONSUMER_GROUP": f"lifecycle-{client}"}  # fmt: skip
        uri = f"models:/{self.settings.model_name}@{self.settings.model_alias}"
        self.services[client] = ServeProcess(uri, env, self.folder / f"serve-{client}-{n}.log").start()
        self.services[client].wait_ready(300)

    def start_monitor(self) -> None:
        args = ["monitor", "--metrics-port", "0", "--summary-every", "5", "--cooldown", "1e9", "-v"]
        self.monitor = CliProcess(args, self.client_env(self.plan.clients[0]), self.folder / "monitor.log").start()

    def processes(self) -> dict[str, CliProcess]:
        named = {f"serve {c}": p for c, p in self.services.items()} | {"flows serve": self.flows}
        return named | ({"monitor": self.monitor} if self.monitor else {})

    def check_alive(self) -> None:
        for name, p in self.processes().items():
            if p is not None and p.proc.poll() is not None and name not in self.deaths:
                self.deaths[name] = p.proc.returncode

    def stop(self) -> dict[str, int]:
        self.check_alive()
        return {name: p.stop() for name, p in self.processes().items() if p is not None}


def _run_deployment(settings: Settings, name: str, parameters: dict) -> tuple[str, str, float]:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    started = time.monotonic()
    with temporary_settings(updates={PREFECT_API_URL: settings.prefect_url}):
        run = run_deployment(f"retrain/{name}", parameters=parameters, timeout=None, poll_interval=1)
    return str(run.id), run.state.type.value if run.state else "?", time.monotonic() - started


def _outcome(settings: Settings, retrain: Retrain) -> None:
    """Fill in what the run did, from the MLflow run it tagged with its flow run id."""
    from mlflow import MlflowClient

    from flows.registry import EXPERIMENT, FLOW_RUN_TAG

    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    found = f"tags.{FLOW_RUN_TAG} = '{retrain.flow_run}'"
    runs = client.search_runs([experiment.experiment_id], found) if experiment else []
    if not runs:
        retrain.gate = "no MLflow run: nothing was trained"
        return
    run = runs[0]
    tags, params = run.data.tags, run.data.params
    retrain.promoted = tags.get("promoted") == "True"
    retrain.gate = tags.get("gate", "")
    retrain.config_source = tags.get("config_source", "")
    retrain.config_reason = tags.get("config_reason", "")
    retrain.intervals_calibrated_on = tags.get("intervals_calibrated_on", "")
    retrain.warm_start_reason = tags.get("warm_start_reason", "")
    retrain.warm_started = params.get("warm_start") == "True"
    retrain.horizon = int(params["horizon"]) if "horizon" in params else None
    versions = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    retrain.version = versions[0].version if versions else None


def run_lifecycle(settings: Settings, plan: Plan = Plan(), *, log: Callable[[str], None] = print) -> dict:
    """Run the month on a local stack under `settings` (started here, stopped at the end); the report."""
    from pipeline.kafka import TopicCollector, ensure_topics, make_producer
    from pipeline.messages import encode_reading, format_ts
    from pipeline.tools.demo import _quiet_libraries
    from pipeline.tools.producers import messy

    _quiet_libraries()
    started = time.monotonic()
    month = Month(plan)
    folder = settings.state_dir / "lifecycle"
    folder.mkdir(parents=True, exist_ok=True)
    log(f"the stack (Kafka, MLflow, Prefect) under {settings.state_dir}")
    stack.up(settings, log=lambda _m: None)
    now = time.gmtime()
    env = {
        **settings.as_env(),
        "SENSORCAST_LOOKBACK": str(plan.lookback),
        "SENSORCAST_INTERVAL_LEVELS": LEVEL,
        # the readings keep the weather table's 2013 timestamps and arrive within minutes: a retrain's
        # window is the most recent `train_days` of readings (the count cap), not hours of record time
        "SENSORCAST_RETRAIN_HOURS": str(10 * 365 * 24),
        "SENSORCAST_RETRAIN_MAX_READINGS": str(3 * plan.sites * 24 * plan.train_days),
        "SENSORCAST_RETRAIN_CRON": f"{now.tm_min} {(now.tm_hour + 12) % 24} * * *",  # never within the month
        "SENSORCAST_SEARCH_EVERY_S": str(30 * 86400),  # the search deployment exists; the driver starts its runs
        "SENSORCAST_SEARCH_TRIALS": str(plan.search_trials),
        "SENSORCAST_SEARCH_FOLDS": "1",
        "SENSORCAST_MODEL_POLL_S": "2",
        "SENSORCAST_CALIBRATION_EVERY_S": "0.5",  # a day streams in seconds: its multipliers go out as often
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    procs = Stack(settings, plan, env, folder)
    collectors: dict[str, tuple[TopicCollector, TopicCollector]] = {}
    producer = calibrations = None
    try:
        ensure_topics(settings)
        for client in plan.clients:
            s = procs.client_settings(client)
            ensure_topics(s, [s.forecasts_topic, s.dlq_topic])
            collectors[client] = (TopicCollector(s, s.forecasts_topic, True), TopicCollector(s, s.dlq_topic, True))
        producer = make_producer(settings)
        ensure_topics(settings, [settings.calibration_topic])
        calibrations = TopicCollector(settings, settings.calibration_topic, True)  # what paces the hours
        entities = 3 * plan.sites
        # the shift starts with the month's day `shift_day` (the history's days come first)
        days = weather_days(plan.sites, plan.history_days + plan.shift_day - 1, plan.shift)
        truth: dict[tuple[str, int], dict] = {}
        sent_clean: set[tuple[str, int]] = set()

        def all_committed(when: str = "") -> None:
            """Wait until every client's service has committed the readings topic's end."""
            for client in plan.clients:
                group = f"lifecycle-{client}"
                wait_until(lambda g=group: committed_everything(settings, g), 600, f"{when}{client} commits")

        def pace() -> None:
            """An hour's readings are in: the next waits until both services committed them and the
            monitor published a calibration since (its multipliers reach the services' next batch), so
            the intervals adapt within a day as they would in real time, not once per day's burst."""
            producer.flush(60)
            published = len(calibrations.arrivals)
            all_committed()
            deadline = time.monotonic() + plan.pace_wait_s  # before the first outcomes nothing is published
            while len(calibrations.arrivals) == published and time.monotonic() < deadline:
                time.sleep(0.05)

        def stream(rows, incidents: bool, midway: Callable[[], None] | None = None) -> None:
            rows = list(rows)
            hour = None
            out = messy(iter(rows), every=plan.messy_every) if incidents else (
                ((e.encode(), encode_reading(e, format_ts(t), v)), None, (e, t, v)) for e, t, v in rows
            )  # fmt: skip
            half, killed = len(rows) // 2, midway is None
            for n, ((key, value), incident, (entity, ts, values)) in enumerate(out):
                if incidents and plan.paced and hour is not None and ts // HOUR_MS != hour:
                    pace()
                hour = ts // HOUR_MS
                producer.send(settings.readings_topic, key=key, value=value)
                if not killed and n >= half:
                    producer.flush(60)
                    midway()
                    killed = True
                if incident is not None:
                    month.incidents[incident.kind] += 1
                    month.refusals_expected += incident.expect is not None
                    continue
                slot = round(ts / HOUR_MS) * HOUR_MS
                truth[(entity, slot)] = values
                sent_clean.add((entity, slot))
                month.readings += 1
            producer.flush(60)

        history = list(itertools.chain.from_iterable(rows for _, rows in itertools.islice(days, plan.history_days)))
        log(f"day 1: {len(history)} readings of {plan.history_days} days for {entities} sites, then the search")
        stream(history, incidents=False)
        live_from = max(ts for _, ts in sent_clean) + HOUR_MS  # day 2 on: what the services forecast live
        procs.start_flows(plan.horizon)
        search = _day_retrain(settings, 1, "search", {"trigger": "manual", "reason": "the month's first search",
                                                      "trials": plan.search_trials, "epochs": plan.epochs})  # fmt: skip
        month.retrains.append(search)
        log(f"       {said_of(search)}")
        if not search.promoted:
            raise LifecycleError(f"the day-1 search made no champion: {search.gate}")
        for client in plan.clients:
            procs.start_service(client)
        procs.start_monitor()
        horizon = plan.horizon
        outage_pending = True
        for day, (_, rows) in zip(range(2, plan.days + 1), days, strict=False):
            if day == plan.horizon_day:
                horizon = plan.new_horizon
                log(f"day {day}: SENSORCAST_HORIZON {plan.horizon} → {horizon}, `flows serve` restarted with it")
                procs.start_flows(horizon)
            outputs = [procs.client_settings(c).forecasts_topic for c in plan.clients]
            for topic, key, value in internal_junk(settings, horizon, outputs):
                producer.send(topic, key=key, value=value)
                month.internal_junk[topic] += 1
            midway = None
            if day == plan.kill_day:
                midway = lambda d=day: _kill_services(procs, month, d, log)  # noqa: E731
            stream(rows, incidents=True, midway=midway)
            all_committed(f"day {day}: ")
            procs.check_alive()
            outage = None
            if outage_pending and day >= plan.outage_day:
                outage = MlflowOutage(settings, plan.outage_s, log)
            params = {"trigger": "schedule", "hours": 10 * 365 * 24, "margin": 0.0, "epochs": plan.epochs}
            retrain = _day_retrain(settings, day, "schedule", params, outage)
            month.retrains.append(retrain)
            if outage is not None and outage.report:
                month.outage = outage.report | {"day": day, "version": retrain.version, "promoted": retrain.promoted}
                outage_pending = not retrain.promoted
            if retrain.promoted:
                announced = time.monotonic()
                for client in plan.clients:
                    port = procs.ports[client]
                    wait_until(lambda p=port, v=retrain.version: served_version(p) == v, plan.serve_ceiling_s,
                               f"day {day}: {client} serves v{retrain.version}", poll_s=0.2)  # fmt: skip
                    retrain.served_after_s[client] = round(time.monotonic() - announced, 1)
            log(f"day {day}: {said_of(retrain)}")
            procs.check_alive()
        all_committed()
        time.sleep(2)  # the last forecasts reach the collectors
        month.other_runs = _other_runs(settings, {r.flow_run for r in month.retrains})
        month.drift_events = sum(1 for r in month.other_runs if r.get("trigger") == "drift")
        last_ts = max(ts for _, ts in sent_clean)
        by_week = weeks(live_from, last_ts + HOUR_MS)
        for client in plan.clients:
            forecasts, dead = collectors[client]
            docs = [d for d in forecasts.docs if isinstance(d, dict) and d.get("entity") != "junk"]
            keys = {(d["entity"], on_the_hour(d["ts"])) for d in docs}
            month.forecasts[client] = len(keys)
            month.forecasts_total[client] = len(docs)
            unique_dead = {(d["partition"], d["offset"]): d["reason"] for d in dead.docs}
            month.dead_letters[client] = dict(Counter(unique_dead.values()))
            month.missing[client] = len(sent_clean - keys)
            scored = {name: coverage(docs, truth, a, b) for name, (a, b) in by_week.items()}
            month.coverage_by_week[client] = {name: round(got, 4) for name, got in scored.items() if got is not None}
            day_ms = 24 * HOUR_MS
            by_day = {
                f"day {2 + k}": coverage(docs, truth, a, a + day_ms)
                for k, a in enumerate(range(live_from, last_ts, day_ms))
            }
            month.coverage_by_day[client] = {name: round(got, 4) for name, got in by_day.items() if got is not None}
            a, b = by_week["last week"]
            per_channel = {ch: coverage(docs, truth, a, b, ch) for ch in truth[next(iter(truth))]}
            month.coverage_by_channel[client] = {
                ch: round(got, 4) for ch, got in per_channel.items() if got is not None
            }
        month.monitor_coverage = _monitor_coverage(settings)
        month.process_exits = dict(procs.deaths)
    finally:
        month.exit_codes = procs.stop()
        for c in [*itertools.chain.from_iterable(collectors.values()), *([calibrations] if calibrations else [])]:
            c.close()
        if producer is not None:
            producer.close()
        stack.down(settings, log=lambda _m: None)
        month.wall_s = round(time.monotonic() - started, 1)
    return month.report()


def _monitor_coverage(settings: Settings) -> dict[str, dict[str, float]]:
    """What the monitor measured of each champion's LEVEL intervals, the ones it adapted: per champion
    version, each channel's coverage since its start (the last value its MLflow run logged)."""
    from mlflow import MlflowClient

    from flows.monitor_outputs import MlflowLog

    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(MlflowLog.EXPERIMENT)
    prefix = f"coverage_{float(LEVEL) * 100:g}_"
    out = {}
    for run in client.search_runs([experiment.experiment_id]) if experiment else []:
        got = {k.removeprefix(prefix): round(v, 4) for k, v in run.data.metrics.items() if k.startswith(prefix)}
        if got:
            out[f"v{run.data.tags.get('champion_version', '?')}"] = dict(sorted(got.items()))
    return dict(sorted(out.items()))


def _day_retrain(settings: Settings, day: int, kind: str, params: dict, outage=None) -> Retrain:
    from flows.schedule import DEPLOYMENT, SEARCH_DEPLOYMENT

    if outage is not None:
        outage.start()
    name = SEARCH_DEPLOYMENT if kind == "search" else DEPLOYMENT
    flow_run, state, seconds = _run_deployment(settings, name, params)
    retrain = Retrain(day, kind, flow_run, state, round(seconds, 1))
    if outage is not None:
        outage.cancel()  # when no version was registered (once down, it comes back after its seconds)
        outage.join()  # MLflow back before its runs are read
        if outage.error:
            raise LifecycleError(outage.error)
    _outcome(settings, retrain)
    return retrain


def _kill_services(procs: Stack, month: Month, day: int, log: Callable[[str], None]) -> None:
    for service in procs.services.values():
        service.proc.kill()
        service.proc.wait(30)
    log(f"day {day}: every service SIGKILLed midway through the day, and started again")
    for client in procs.services:
        procs.start_service(client, n=day)
    month.kill = {"day": day, "services": list(procs.services)}


def _other_runs(settings: Settings, known: set[str]) -> list[dict]:
    """Flow runs of the retrain deployments that the driver did not start (drift, mostly), with their states."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: settings.prefect_url}):
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(limit=200)
    return [
        {"flow_run": str(r.id), "state": r.state.type.value if r.state else "?",
         "trigger": (r.parameters or {}).get("trigger"), "reason": (r.parameters or {}).get("reason")}
        for r in runs
        if str(r.id) not in known and r.deployment_id is not None
        and (r.state is None or r.state.type.value != "SCHEDULED")
    ]  # fmt: skip
