"""`sensorcast plot ENTITY --out FILE.png`: an entity's forecasts against what actually arrived, read
back from the topics (group-less readers: the service's offsets are never touched).

Per channel: the readings as they arrived; the one-step-ahead forecast made at each reading, drawn at
the step it forecast; and the latest forecast's whole horizon. The title gives the one-step MAE
beside persistence's (the last reading carried forward) over the same steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from pipeline.messages import parse_ts
from pipeline.settings import Settings
from pipeline.timegrid import Grid


@dataclass
class EntityHistory:
    entity: str
    channels: list[str]
    ts_ms: np.ndarray  # (T,) the readings' times, sorted
    values: np.ndarray  # (T, C) float, NaN where a channel was missing
    forecasts: list[dict]  # the forecast documents, sorted by ts

    def step_ms(self) -> int:
        """The grid's interval, as the forecasts state it (`step_ms`), else the readings' median gap."""
        stated = next((d.get("step_ms") for d in reversed(self.forecasts) if isinstance(d.get("step_ms"), int)), None)
        if stated and stated > 0:
            return stated
        gaps = np.diff(self.ts_ms)
        return int(np.median(gaps)) if len(gaps) else 3_600_000


def history_from_docs(entity: str, readings: list[dict], forecasts: list[dict]) -> EntityHistory:
    """The entity's readings and forecasts from decoded JSON documents (pure: the unit tests' way in)."""
    mine = [d for d in readings if d.get("entity") == entity and isinstance(d.get("values"), dict)]
    fc = sorted((d for d in forecasts if d.get("entity") == entity), key=lambda d: parse_ts(d["ts"]))
    if not mine:
        raise ValueError(f"no readings of {entity!r} on the readings topic in that time")
    channels = fc[-1]["channels"] if fc else sorted(mine[-1]["values"])
    by_ts = {parse_ts(d["ts"]): d["values"] for d in mine}
    ts = np.array(sorted(by_ts), dtype=np.int64)
    values = np.array([[_num(by_ts[t].get(c)) for c in channels] for t in ts], dtype=np.float64)
    return EntityHistory(entity, channels, ts, values, fc)


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def read_history(settings: Settings, entity: str, hours: float) -> EntityHistory:
    from pipeline.kafka.reader import read_since

    since = int((time.time() - hours * 3600) * 1000)

    def docs(topic: str) -> list[dict]:
        out = []
        for r in read_since(settings, topic, since).records:
            if r.key is not None and r.key != entity.encode():
                continue
            try:
                out.append(orjson.loads(r.value))
            except (orjson.JSONDecodeError, TypeError):
                continue  # a dead letter's business, not the plot's
        return out

    return history_from_docs(entity, docs(settings.readings_topic), docs(settings.forecasts_topic))


def one_step(history: EntityHistory) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times forecast, forecast, actual) for every one-step-ahead forecast whose step has arrived."""
    step = history.step_ms()
    # the forecast's ts is its slot on the grid: readings meet it by slot, however their clocks jitter
    anchor = parse_ts(history.forecasts[-1]["ts"]) % step if history.forecasts else int(history.ts_ms[0]) % step
    grid = Grid(step, anchor)
    index = {grid.slot(int(t)): i for i, t in enumerate(history.ts_ms)}
    times, pred, actual = [], [], []
    for d in history.forecasts:
        target = grid.slot(parse_ts(d["ts"])) + 1
        if target in index:
            times.append(grid.ts_of(target))
            pred.append([d["forecast"][c][0] for c in history.channels])
            actual.append(history.values[index[target]])
    shape = (0, len(history.channels))
    return (
        np.array(times, dtype=np.int64),
        np.array(pred, dtype=np.float64).reshape(shape if not pred else (-1, len(history.channels))),
        np.array(actual, dtype=np.float64).reshape(shape if not actual else (-1, len(history.channels))),
    )


def plot(history: EntityHistory, out: Path, last_steps: int = 240) -> dict:
    """Write the PNG; returns the one-step MAE of the model and of persistence per channel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = history.step_ms()
    t_fc, pred, actual = one_step(history)
    index = {int(t): i for i, t in enumerate(history.ts_ms)}
    before = np.array([history.values[index[int(t) - step]] for t in t_fc]) if len(t_fc) else actual
    scores = {
        c: {
            "model_mae": float(np.nanmean(np.abs(pred[:, j] - actual[:, j]))) if len(t_fc) else None,
            "persistence_mae": float(np.nanmean(np.abs(before[:, j] - actual[:, j]))) if len(t_fc) else None,
            "steps": int(len(t_fc)),
        }
        for j, c in enumerate(history.channels)
    }
    n = len(history.channels)
    fig, axes = plt.subplots(n, 1, figsize=(11, 2.6 * n), sharex=True, squeeze=False)
    shown = history.ts_ms[-last_steps:]
    start = shown[0] if len(shown) else 0
    as_dt = lambda ts: np.asarray(ts, dtype="datetime64[ms]")  # noqa: E731
    latest = history.forecasts[-1] if history.forecasts else None
    for j, (c, ax) in enumerate(zip(history.channels, axes[:, 0], strict=True)):
        keep = history.ts_ms >= start
        ax.plot(as_dt(history.ts_ms[keep]), history.values[keep, j], color="black", lw=1.2, label="arrived")
        k = t_fc >= start
        if k.any():
            ax.plot(as_dt(t_fc[k]), pred[k, j], ".", color="tab:blue", ms=3, label="one step ahead")
        if latest is not None:
            t0 = parse_ts(latest["ts"])
            horizon = np.arange(1, len(latest["forecast"][c]) + 1) * step + t0
            ax.plot(as_dt(horizon), latest["forecast"][c], "--", color="tab:orange", label="latest forecast")
            bands = latest.get("intervals") or {}
            for level in sorted(bands, key=float, reverse=True):  # the widest first, the narrower over it
                band = bands[level]
                alpha = 0.12 if float(level) >= 0.9 else 0.25
                ax.fill_between(
                    as_dt(horizon), band["lower"][c], band["upper"][c], color="tab:orange", alpha=alpha,
                    lw=0, label=f"{float(level):.0%} interval",
                )  # fmt: skip
        s = scores[c]
        title = f"{c}"
        if s["model_mae"] is not None:
            model, naive = s["model_mae"], s["persistence_mae"]
            title += f": one-step MAE {model:.3g} vs persistence {naive:.3g} ({s['steps']} steps)"
        ax.set_title(title, fontsize=9, loc="left")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper left", fontsize=8)
    version = latest["model"]["version"] if latest else "-"
    fig.suptitle(f"{history.entity}: forecasts against what arrived (model v{version})")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return scores
