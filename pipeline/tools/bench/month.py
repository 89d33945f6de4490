"""The lifecycle month's plan and report: when each incident happens (`Plan`), what the driver saw
(`Retrain`, `Month`), interval coverage scored from the forecasts and the readings, and the report
in a few lines. Pure: `pipeline.tools.bench.lifecycle` drives the month and fills these in."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

HOUR_MS = 3_600_000
LEVEL = "0.9"  # the interval level whose coverage the month is judged on


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
    paced: bool = False  # each live day hour by hour: an hour once the services committed the last (below)
    pace_wait_s: float = 5.0  # and the monitor published a calibration since, or this long passed (pacing only)

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


def on_the_hour(ts: str | int) -> int:
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
        ts = on_the_hour(doc["ts"])
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


def weeks(start_ms: int, end_ms: int) -> dict[str, tuple[int, int]]:
    """The live month's weeks from its first day (the last one may be short), and its last seven days
    (all of it, when shorter)."""
    week = 7 * 24 * HOUR_MS
    out = {f"week {k + 1}": (a, min(a + week, end_ms)) for k, a in enumerate(range(start_ms, end_ms, week))}
    return out | {"last week": (max(start_ms, end_ms - week), end_ms)}


def said_of(r: Retrain) -> str:
    served = ", ".join(f"{c} in {s} s" for c, s in r.served_after_s.items())
    verdict = "PROMOTED" if r.promoted else "not promoted"
    return (
        f"{r.kind} retrain {r.state} in {r.seconds:.0f} s → v{r.version or '-'} {verdict} ({r.gate}); "
        f"{r.config_source or '-'}, warm start {r.warm_started}" + (f"; served by {served}" if served else "")
    )


def print_report(report: dict, log: Callable[[str], None] = print) -> None:
    """The month in a few lines: retrains, readings, coverage, time to serve."""
    rs = report["retrains"]
    log(f"{len(rs)} retrains ({report['promoted']} promoted), {len(report['other_runs'])} other deployment runs "
        f"({report['drift_events']} on drift), in {report['wall_s']:.0f} s")  # fmt: skip
    for r in rs:
        log(f"  day {r['day']:2d} {said_of(Retrain(**r))}")
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
