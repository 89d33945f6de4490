"""What the demo shows a person: the live table (last reading, next forecast, rolling error beside
persistence's, model version, rate, latency, incidents and dead letters), the interval coverage line,
and a retrain's verdict in one line."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

VIEW_CHANNEL = "temp"


@dataclass
class LiveState:
    """What the live view shows, fed from the forecasts and dead-letter topics as they arrive."""

    sent_at: dict[tuple[str, str], float] = field(default_factory=dict)
    last_reading: dict[str, float] = field(default_factory=dict)
    next_forecast: dict[str, float] = field(default_factory=dict)
    version: dict[str, str] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    versions_served: Counter = field(default_factory=Counter)
    incidents: Counter = field(default_factory=Counter)  # messy-stream incidents sent, by kind
    refusals_expected: int = 0  # incidents meant to be refused (each one dead letter)
    sent: int = 0
    started: float = field(default_factory=time.monotonic)

    def p99(self) -> float | None:
        lat = sorted(self.latencies_ms[-2000:])
        return round(lat[int(len(lat) * 0.99)], 1) if lat else None


def live_table(state: LiveState, tracker, dead: Counter, note: str):
    from rich.table import Table

    elapsed = max(time.monotonic() - state.started, 1e-9)
    table = Table(
        title=f"sensorcast live: {state.sent / elapsed:,.0f} readings/s, p99 {state.p99()} ms\n"
        f"incidents sent {sum(state.incidents.values())} {dict(state.incidents) or ''}\n"
        f"dead letters by reason {sum(dead.values())} {dict(dead) or ''}\n"
        f"{coverage_line(tracker.coverage)}",
        caption=note,
    )
    columns = ("entity", f"last {VIEW_CHANNEL}", "next-step forecast", "rolling MAE", "persistence MAE", "seasonal MAE")
    for col in (*columns, "model"):
        table.add_column(col, justify="right" if col != "entity" else "left")
    for entity in sorted(state.last_reading)[:12]:
        fc = state.next_forecast.get(entity)
        mae, naive = tracker.mae(entity, VIEW_CHANNEL), tracker.mae(entity, VIEW_CHANNEL, naive=True)
        seasonal = tracker.mae(entity, VIEW_CHANNEL, of="seasonal")
        table.add_row(
            entity,
            f"{state.last_reading[entity]:.1f}",
            f"{fc:.1f}" if fc is not None else "warming up",
            f"{mae:.2f}" if mae else "-",
            f"{naive:.2f}" if naive else "-",
            f"{seasonal:.2f}" if seasonal else "-",
            f"v{state.version.get(entity, '-')}",
        )
    return table


def coverage_of(cov) -> dict[str, dict[str, float]]:
    """{level: {"since_start", "rolling"}}: the share of the view channel's readings, over all sites
    and steps, that fell inside the interval published for them (empty until one was scored)."""
    if cov is None or not cov.seen.any():
        return {}
    total, rolling = cov.coverage(), cov.coverage(rolling=True)
    scored = cov.seen > 0
    return {
        level: {"since_start": round(float(total[level][scored].mean()), 3),
                "rolling": round(float(rolling[level][scored].mean()), 3)}
        for level in cov.levels
    }  # fmt: skip


def coverage_line(cov) -> str:
    """The share of readings inside their interval, per level: lately (its last 500 per step) and since start."""
    levels = coverage_of(cov)
    if not levels:
        return f"{VIEW_CHANNEL} inside its intervals: waiting for the first scored step"
    pct = " / ".join(f"{float(k):.0%}" for k in levels)
    lately = " / ".join(f"{v['rolling']:.1%}" for v in levels.values())
    since = " / ".join(f"{v['since_start']:.1%}" for v in levels.values())
    return f"{VIEW_CHANNEL} inside its {pct} intervals: {lately} lately, {since} since start"


def verdict(report: dict) -> str:
    """One line a person reads at a glance: won or lost, against what, by the holdout's numbers."""
    scores = report.get("scores") or {}
    if not scores:
        return f"v{report.get('version') or '-'}: not gated ({report['gate']})"
    cand, pers, champ = scores["candidate"], scores["persistence"], scores.get("champion")
    against = f"the champion's {champ:.3f}" if champ is not None else "no champion yet"
    figures = f"holdout MSE {cand:.3f} against {against}, persistence {pers:.3f}"
    if report["promoted"]:
        return f"v{report['version']} WINS and is promoted: {figures}"
    return f"v{report['version']} loses and is not promoted: {figures} ({report['gate']})"
