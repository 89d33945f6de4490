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
import json
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.settings import Settings
from pipeline.tools import stack
from pipeline.tools.child import CliProcess, ServeProcess

HOUR_MS = 3_600_000
LEVEL = "0.9"  # the interval level whose coverage the month is judged on
RESTART_CEILING_S = 600.0  # MLflow back after its outage: a guard against a hang, not a budget


class LifecycleError(RuntimeError):
    """The month could not go on: what broke, with the log lines that say why."""


@dataclass(frozen=True)
class Plan:
    """The month: how long, how much data, and when each incident happens (days count from 1)."""

    days: int = 30
    history_days: int = 28  # readings before day 1: what the day-1 search trains on
    sites: int = 2  # copies of the three airports: 3 × sites entities
    lookback: int = 48
    horizon: int = 12
    new_horizon: int = 24  # from horizon_day on
    train_days: int = 21  # each retrain trains on the most recent readings of this many days
    epochs: int = 2
    search_trials: int = 3
    kill_day: int = 5
    shift_day: int = 10
    shift: float = 20.0  # degrees added to temp and dewp from shift_day on: a level shift
    outage_day: int = 12
    outage_s: float = 30.0
    horizon_day: int = 20
    messy_every: int = 13  # a day of 3 × sites entities brings every kind of incident
    clients: tuple[str, ...] = ("kafka-python", "confluent")
    serve_ceiling_s: float = 300.0  # a promotion not served by then is a failure (a hang guard, not a budget)

    def over(self, days: int) -> Plan:
        """The same month in `days` days, each incident on the day of the same fraction of it.

        >>> p = Plan().over(10)
        >>> (p.days, p.kill_day, p.shift_day, p.outage_day, p.horizon_day)
        (10, 2, 3, 4, 7)
        """
        from dataclasses import replace

        def scaled(day: int) -> int:
            return min(days, max(2, round(day * days / self.days)))

        incidents = ("kill_day", "shift_day", "outage_day", "horizon_day")
        return replace(self, days=days, **{k: scaled(getattr(self, k)) for k in incidents})


@dataclass
class Retrain:
    day: int
    kind: str  # search, schedule
    flow_run: str
    state: str
    seconds: float
    version: str | None = None
    promoted: bool = False
    gate: str = ""
    config_source: str = ""
    config_reason: str = ""
    warm_started: bool | None = None
    warm_start_reason: str = ""
    horizon: int | None = None
    intervals_calibrated_on: str = ""  # which holdout windows its conformal widths stand on
    served_after_s: dict[str, float] = field(default_factory=dict)  # client → seconds from announcement


@dataclass
class Month:
    """What the driver saw, day by day; `report()` is the JSON the bench writes."""

    plan: Plan
    retrains: list[Retrain] = field(default_factory=list)
    other_runs: list[dict] = field(default_factory=list)  # drift runs and anything else the deployments ran
    readings: int = 0  # clean readings sent (the table's rows)
    incidents: Counter = field(default_factory=Counter)
    refusals_expected: int = 0
    internal_junk: Counter = field(default_factory=Counter)
    forecasts: dict[str, int] = field(default_factory=dict)  # client → unique (entity, ts)
    forecasts_total: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)  # client → readings with neither forecast nor refusal
    dead_letters: dict[str, dict[str, int]] = field(default_factory=dict)
    coverage_by_week: dict[str, dict[str, float]] = field(default_factory=dict)
    coverage_by_day: dict[str, dict[str, float]] = field(default_factory=dict)
    coverage_by_channel: dict[str, dict[str, float]] = field(default_factory=dict)  # over the last week
    monitor_coverage: dict[str, dict[str, float]] = field(default_factory=dict)  # champion → channel → its run's
    process_exits: dict[str, int | None] = field(default_factory=dict)  # before the driver stopped them
    exit_codes: dict[str, int] = field(default_factory=dict)
    outage: dict = field(default_factory=dict)
    kill: dict = field(default_factory=dict)
    drift_events: int = 0
    wall_s: float = 0.0

    def report(self) -> dict:
        doc = asdict(self)  # asdict rebuilds a Counter from its items, counting the pairs: plain dicts here
        doc["incidents"], doc["internal_junk"] = dict(self.incidents), dict(self.internal_junk)
        doc["plan"] = asdict(self.plan)
        doc["promoted"] = sum(r.promoted for r in self.retrains)
        doc["refused"] = {f"day {r.day}": r.gate for r in self.retrains if not r.promoted}
        return doc


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


def committed_everything(settings: Settings, group: str) -> bool:
    """The consumer group has committed the readings topic's end on every partition."""
    from kafka import KafkaConsumer, TopicPartition

    from pipeline.kafka import make_admin
    from pipeline.kafka.security import kafka_python_security

    admin = make_admin(settings)
    try:
        committed = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, **kafka_python_security(settings))
    try:
        topic = settings.readings_topic
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        ends, starts = consumer.end_offsets(parts), consumer.beginning_offsets(parts)
    finally:
        consumer.close()
    # an empty partition gets no commit: nothing to commit there
    return all(end == starts[tp] or (tp in committed and committed[tp].offset >= end) for tp, end in ends.items())


def wait_until(check: Callable[[], bool], ceiling_s: float, what: str, poll_s: float = 0.5) -> float:
    """Wait for `check`, returning the seconds it took; raise after `ceiling_s` (a hang guard)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > ceiling_s:
            raise TimeoutError(f"{what}: not after {ceiling_s:.0f} s")
        time.sleep(poll_s)
    return time.monotonic() - started


def served_version(port: int) -> str | None:
    try:
        doc = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
    except (OSError, ValueError):
        return None
    return (doc.get("model") or {}).get("version")


def _slot(ts: str | int) -> int:
    """A forecast's time (ISO or epoch ms) on the hour: a jittered site's forecast meets its reading's slot."""
    from pipeline.messages import parse_ts

    return round(parse_ts(ts) / HOUR_MS) * HOUR_MS


def coverage(
    forecasts: list[dict], truth: dict[tuple[str, int], dict], since_ms: int, until_ms: int, channel: str | None = None
) -> float | None:
    """The share of outcomes inside the LEVEL interval, over every channel (or the one given) and step
    of the forecasts made in [since_ms, until_ms) (None: nothing scored)."""
    inside = total = 0
    for doc in forecasts:
        ts = _slot(doc["ts"])
        band = (doc.get("intervals") or {}).get(LEVEL)
        if band is None or not since_ms <= ts < until_ms:
            continue
        step = doc.get("step_ms") or HOUR_MS
        for name, lower in band["lower"].items():
            if channel is not None and name != channel:
                continue
            upper = band["upper"][name]
            for h, (lo, hi) in enumerate(zip(lower, upper, strict=True)):
                seen = truth.get((doc["entity"], ts + (h + 1) * step))
                if seen is not None and name in seen:
                    total += 1
                    inside += lo <= seen[name] <= hi
    return inside / total if total else None


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
    producer = None
    try:
        ensure_topics(settings)
        for client in plan.clients:
            s = procs.client_settings(client)
            ensure_topics(s, [s.forecasts_topic, s.dlq_topic])
            collectors[client] = (TopicCollector(s, s.forecasts_topic, True), TopicCollector(s, s.dlq_topic, True))
        producer = make_producer(settings)
        entities = 3 * plan.sites
        # the shift starts with the month's day `shift_day` (the history's days come first)
        days = weather_days(plan.sites, plan.history_days + plan.shift_day - 1, plan.shift)
        truth: dict[tuple[str, int], dict] = {}
        sent_clean: set[tuple[str, int]] = set()

        def stream(rows, incidents: bool, midway: Callable[[], None] | None = None) -> None:
            rows = list(rows)
            out = messy(iter(rows), every=plan.messy_every) if incidents else (
                ((e.encode(), encode_reading(e, format_ts(t), v)), None, (e, t, v)) for e, t, v in rows
            )  # fmt: skip
            half, killed = len(rows) // 2, midway is None
            for n, ((key, value), incident, (entity, ts, values)) in enumerate(out):
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
        log(f"       {_said(search)}")
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
            for client in plan.clients:
                group = f"lifecycle-{client}"
                wait_until(lambda g=group: committed_everything(settings, g), 600, f"day {day}: {client} commits")
            procs.check_alive()
            outage = None
            if outage_pending and day >= plan.outage_day:
                outage = _Outage(settings, plan.outage_s, log)
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
            log(f"day {day}: {_said(retrain)}")
            procs.check_alive()
        for client in plan.clients:
            wait_until(lambda g=f"lifecycle-{client}": committed_everything(settings, g), 600, f"{client} commits")
        time.sleep(2)  # the last forecasts reach the collectors
        month.other_runs = _other_runs(settings, {r.flow_run for r in month.retrains})
        month.drift_events = sum(1 for r in month.other_runs if r.get("trigger") == "drift")
        last_ts = max(ts for _, ts in sent_clean)
        weeks = _weeks(live_from, last_ts + HOUR_MS)
        for client in plan.clients:
            forecasts, dead = collectors[client]
            docs = [d for d in forecasts.docs if isinstance(d, dict) and d.get("entity") != "junk"]
            keys = {(d["entity"], _slot(d["ts"])) for d in docs}
            month.forecasts[client] = len(keys)
            month.forecasts_total[client] = len(docs)
            unique_dead = {(d["partition"], d["offset"]): d["reason"] for d in dead.docs}
            month.dead_letters[client] = dict(Counter(unique_dead.values()))
            month.missing[client] = len(sent_clean - keys)
            scored = {name: coverage(docs, truth, a, b) for name, (a, b) in weeks.items()}
            month.coverage_by_week[client] = {name: round(got, 4) for name, got in scored.items() if got is not None}
            day_ms = 24 * HOUR_MS
            by_day = {
                f"day {2 + k}": coverage(docs, truth, a, a + day_ms)
                for k, a in enumerate(range(live_from, last_ts, day_ms))
            }
            month.coverage_by_day[client] = {name: round(got, 4) for name, got in by_day.items() if got is not None}
            a, b = weeks["last week"]
            per_channel = {ch: coverage(docs, truth, a, b, ch) for ch in truth[next(iter(truth))]}
            month.coverage_by_channel[client] = {
                ch: round(got, 4) for ch, got in per_channel.items() if got is not None
            }
        month.monitor_coverage = _monitor_coverage(settings)
        month.process_exits = dict(procs.deaths)
    finally:
        month.exit_codes = procs.stop()
        for pair in collectors.values():
            for c in pair:
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

    from flows.monitor import MlflowLog

    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(MlflowLog.EXPERIMENT)
    prefix = f"coverage_{float(LEVEL) * 100:g}_"
    out = {}
    for run in client.search_runs([experiment.experiment_id]) if experiment else []:
        got = {k.removeprefix(prefix): round(v, 4) for k, v in run.data.metrics.items() if k.startswith(prefix)}
        if got:
            out[f"v{run.data.tags.get('champion_version', '?')}"] = dict(sorted(got.items()))
    return dict(sorted(out.items()))


def _weeks(start_ms: int, end_ms: int) -> dict[str, tuple[int, int]]:
    """The live month's weeks from its first day (the last one may be short), and its last seven days
    (all of it, when shorter)."""
    week = 7 * 24 * HOUR_MS
    out = {f"week {k + 1}": (a, min(a + week, end_ms)) for k, a in enumerate(range(start_ms, end_ms, week))}
    return out | {"last week": (max(start_ms, end_ms - week), end_ms)}


def _said(r: Retrain) -> str:
    served = ", ".join(f"{c} in {s} s" for c, s in r.served_after_s.items())
    verdict = "PROMOTED" if r.promoted else "not promoted"
    return (
        f"{r.kind} retrain {r.state} in {r.seconds:.0f} s → v{r.version or '-'} {verdict} ({r.gate}); "
        f"{r.config_source or '-'}, warm start {r.warm_started}" + (f"; served by {served}" if served else "")
    )


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


class _Outage(threading.Thread):
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


def print_report(report: dict, log: Callable[[str], None] = print) -> None:
    """The month in a few lines: retrains, readings, coverage, time to serve."""
    rs = report["retrains"]
    log(f"{len(rs)} retrains ({report['promoted']} promoted), {len(report['other_runs'])} other deployment runs "
        f"({report['drift_events']} on drift), in {report['wall_s']:.0f} s")  # fmt: skip
    for r in rs:
        log(f"  day {r['day']:2d} {_said(Retrain(**r))}")
    junk = sum(report["internal_junk"].values())
    log(f"readings {report['readings']}, incidents {dict(report['incidents'])} "
        f"({report['refusals_expected']} meant to be refused), internal junk {junk}")  # fmt: skip
    for client in report["forecasts"]:
        log(f"  {client}: {report['forecasts'][client]} forecast readings ({report['forecasts_total'][client]} "
            f"forecasts), {report['missing'][client]} without one, dead letters {report['dead_letters'][client]}, "
            f"{LEVEL} coverage by week {report['coverage_by_week'][client]}")  # fmt: skip
    for client in report["forecasts"]:
        log(f"  {client}: {LEVEL} coverage by day {report['coverage_by_day'][client]}; "
            f"by channel over the last week {report['coverage_by_channel'][client]}")  # fmt: skip
    for version, per_channel in report["monitor_coverage"].items():
        log(f"  the monitor, {version}'s {LEVEL} intervals as it adapted them: coverage {per_channel}")
    log(f"processes that died unasked: {report['process_exits'] or 'none'}; exit codes {report['exit_codes']}")
