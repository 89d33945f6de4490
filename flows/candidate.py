"""A retrain's candidate: trained on the window's train split with early stopping on its validation
split, its configuration carried from the champion (warm-started from its weights when they load) or
searched for over rolling origins, and its split-conformal intervals calibrated on holdout windows its
weights never saw."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.window import TrainingWindow
from pipeline.messages import format_ts
from pipeline.settings import Settings

if TYPE_CHECKING:  # torch and the models load inside the tasks: a superseded run never pays for them
    import torch

    from models.data import Scaler
    from models.forecaster import Forecaster
    from models.search import SearchResult
    from models.train import TrainResult


@dataclass
class Candidate:
    model: torch.nn.Module
    scaler: Scaler
    result: TrainResult
    warm_started: bool
    checkpoint: Path
    search: SearchResult | None = None  # how the configuration was chosen, when it was searched for
    intervals: dict | None = None  # split-conformal half-widths from the holdout (models/conformal.py)
    lineage: dict = field(default_factory=dict)  # where its configuration came from, and its warm start

    def raw_net(self) -> torch.nn.Module:
        """The candidate between its scaler's two halves: raw readings in, raw forecasts out."""
        import numpy as np
        import torch

        from models.forecaster import Scaled

        mean = torch.as_tensor(np.asarray(self.scaler.mean, dtype=np.float32))
        std = torch.as_tensor(np.asarray(self.scaler.std, dtype=np.float32))
        return Scaled(self.model.cpu().eval(), mean, std).eval()


@task(cache_policy=NO_CACHE)
def fit(
    window: TrainingWindow,
    champion: Forecaster | None,
    warm_start: bool,
    epochs: int,
    out: Path,
    trials: int = 0,
    champion_until: int | None = None,
) -> tuple[Candidate, dict]:
    """Train on the window's train split; early stopping on its validation split. With `trials`, the
    configuration is searched for on the validation split first (the serving preset is the first
    trial), and the candidate is the chosen trial's model: the gate sees only it. A candidate
    warm-started from the champion, whose training data ended at `champion_until` (epoch ms), has its
    intervals calibrated only on the holdout windows after that: its inherited weights saw the rest."""
    import numpy as np

    from flows.gate import time_split, windows
    from flows.lineage import RECIPE_KEYS, next_configuration
    from models.checkpoint import save
    from models.data import Scaler
    from models.nets import build
    from models.train import TrainConfig, train

    settings = Settings.load()
    L, H = settings.lookback, settings.horizon
    splits = time_split(window.timed_series(), L)
    scaler = Scaler.fit(np.concatenate([s for s in splits.train if len(s)]))
    grid, first = window.grid, splits.first_ts  # each window's phase on the grid, for a model with a cycle
    train_w = windows([scaler.transform(s) for s in splits.train], L, H, "training", first["train"], grid)
    val_w = windows([scaler.transform(s) for s in splits.val], L, H, "validation", first["val"], grid)
    # raw units: every contender is scored the same way
    holdout = windows(splits.holdout, L, H, "holdout", first["holdout"], grid)
    found, warm, plan = None, False, None
    if trials > 0:
        cfg = TrainConfig(epochs=epochs, lr=1e-3, schedule="cosine", patience=3, progress=False)
        train_parts = [scaler.transform(s) for s in splits.train]
        origins = _origins(settings, train_parts, first["train"], grid)
        model, result, found = _searched(settings, train_w, val_w, train_parts, grid, cfg, trials, origins)
        recipe = {k: getattr(cfg, k) for k in RECIPE_KEYS} | {
            k: found.best.params[k] for k in RECIPE_KEYS if k in found.best.params
        }
        lineage = {"config_source": "search", "config_reason": f"searched over {trials} trials"}
    else:
        plan = next_configuration(champion.meta if champion is not None else None, L, H, window.channels, window.grid)
        recipe = plan.recipe
        cfg = TrainConfig(epochs=epochs, progress=False, **{k: v for k, v in recipe.items() if k in RECIPE_KEYS})
        model = build(plan.architecture, lookback=L, horizon=H, **plan.config)
        warm_reason = "warm start off" if not warm_start else plan.reason
        if warm_start and plan.carried:
            warm, warm_reason = _warm_start(model, champion)
        elif warm_start and champion is not None:
            warm_reason = "trained from scratch: a new lineage"
        lineage = {
            "config_source": f"champion v{champion.version}" if plan.carried else "preset",
            "config_reason": plan.reason,
            "warm_start_reason": warm_reason,
        }
        get_run_logger().info("configuration: %s; %s", plan.reason, warm_reason)
        result = train(model, train_w, val_w, cfg, desc="retrain")
    extra = {"train_seconds": result.seconds, "epochs": result.epochs, "warm_started": warm, "grid": window.grid}
    extra["recipe"] = dict(recipe)  # what the next retrain trains this configuration with
    extra["lineage"] = lineage
    if found is not None:
        extra["search"] = found.to_dict()
    unseen = holdout
    if warm and champion_until is not None and splits.ranges.get("holdout", (champion_until + 1,))[0] <= champion_until:
        unseen, said = _unseen_by(window, champion_until, holdout, L, H)
        lineage["intervals_calibrated_on"] = said
        get_run_logger().info("intervals: %s", said)
    intervals = calibrate(Candidate(model, scaler, result, warm, out), unseen, settings.interval_level_list)
    extra["intervals"] = intervals
    save(out, model, window.channels, scaler, name=settings.model_name, extra=extra)
    sizes = {"train_windows": len(train_w), "val_windows": len(val_w), "holdout_windows": len(holdout)}
    candidate = Candidate(model, scaler, result, warm, out, found, intervals, lineage)
    return candidate, {"holdout": holdout, "ranges": splits.ranges, **sizes}


def _unseen_by(window: TrainingWindow, until_ms: int, holdout, lookback: int, horizon: int):
    """The holdout windows after `until_ms` (what a warm start's inherited weights never trained on),
    and what the run says of them; the whole holdout, said so, when too few are left."""
    from flows.gate import windows_after
    from models.data import DataError

    try:
        unseen = windows_after(window.timed_series(), until_ms, lookback, horizon, window.grid, "calibration")
    except DataError:
        return holdout, (
            f"all {len(holdout)} holdout windows: too few after the champion's training data "
            f"(to {format_ts(until_ms)}) to calibrate on alone, so the intervals may be narrow"
        )
    return unseen, f"the {len(unseen)} holdout windows after the champion's training data (to {format_ts(until_ms)})"


def _warm_start(model: torch.nn.Module, champion: Forecaster) -> tuple[bool, str]:
    """Load the champion's weights into `model` of its configuration; when they do not load (a
    checkpoint of another shape), train from scratch and say why: a retrain never crashes on it."""
    theirs, ours = champion.model.state_dict(), model.state_dict()
    why = ""
    if set(theirs) != set(ours):
        why = f"other parameters: {sorted(set(theirs) ^ set(ours))[:4]}"
    elif bad := [k for k in ours if theirs[k].shape != ours[k].shape]:  # load_state_dict would copy the rest first
        why = f"{bad[0]} is {tuple(theirs[bad[0]].shape)}, this configuration's {tuple(ours[bad[0]].shape)}"
    else:
        try:
            model.load_state_dict(theirs)
        except (RuntimeError, ValueError) as e:
            why = str(e).strip().splitlines()[0][:300]
    if why:
        return False, f"trained from scratch: the champion v{champion.version}'s weights did not load ({why})"
    return True, f"warm-started from the champion v{champion.version}"


def calibrate(candidate: Candidate, holdout, levels: list[float]) -> dict:
    """Split-conformal half-widths per channel and step from the candidate's holdout errors (windows it
    never trained on), in its scaled units: what the service's intervals stand on until the monitor
    adapts them."""
    import numpy as np
    import torch

    from flows.gate import forecast_windows
    from models.conformal import calibration, window_scale
    from models.metrics import window_std

    std = np.asarray(candidate.scaler.std, dtype=np.float32)
    net, errors = candidate.raw_net(), []
    with torch.no_grad():
        for start in range(0, len(holdout), 512):
            pred, y = forecast_windows(net, holdout, torch.arange(start, min(start + 512, len(holdout))))
            errors.append((pred.float() - y).abs().numpy() / std)  # (B, H, N)
    scale = window_scale(window_std(holdout) / std)  # (n, N): the holdout is raw, the scale in training σ
    return calibration(np.concatenate(errors), scale, levels)


def _origins(settings: Settings, train_parts, first_ts: list[int], grid: dict | None) -> list:
    """The earlier rolling origins the search also judges on (`settings.search_folds` in all, the real
    split included), cut from the training rows: each validation block as long as the real one (in
    the time split's proportion to the training rows). Fewer when the data is too short; none at 1."""
    from flows.gate import HOLDOUT_SHARE, VAL_SHARE
    from models.data import DataError, rolling_origins

    L, H = settings.lookback, settings.horizon
    per_train_row = VAL_SHARE / (1 - VAL_SHARE - HOLDOUT_SHARE)
    rows: int | list[int] = [max(H, round(len(p) * per_train_row)) for p in train_parts]
    starts = [(t - grid["anchor_ms"]) // grid["interval_ms"] for t in first_ts] if grid else None
    if starts is not None:  # one cut in time for every series per fold, each block as long as the real one
        span = max(s + len(p) for p, s in zip(train_parts, starts, strict=True)) - min(starts)
        rows = max(H, round(span * per_train_row))
    for folds in range(settings.search_folds, 1, -1):
        try:
            made = rolling_origins(train_parts, rows, L, H, folds, starts)
        except DataError:
            continue
        if folds < settings.search_folds:
            get_run_logger().warning(f"the training data holds {folds} rolling origins, not {settings.search_folds}")
        return made
    if settings.search_folds > 1:
        get_run_logger().warning("the training data is too short for rolling origins: judged on validation alone")
    return []


def _searched(settings: Settings, train_w, val_w, train_parts, grid: dict | None, cfg, trials: int, origins=()):
    """(model, its training result, the search) for the configuration chosen on validation, over the
    rolling `origins` too. With a grid, the space holds a cycle: the periods the longest training
    series' autocorrelation and the grid's cadence suggest."""
    from dataclasses import replace

    from models.device import pick_device
    from models.nets import PRESETS
    from models.search import SearchBudget, SearchSpace, search
    from models.train import TrainResult

    space = SearchSpace()
    space = replace(space, epochs=tuple(sorted({*space.epochs, cfg.epochs})))
    if grid:
        space = space.with_cycles(max(train_parts, key=len), grid["interval_ms"] / 1000)
    n_variates = train_parts[0].shape[1]
    preset = {"dropout": 0.1, **PRESETS["serving"]}  # the preset's dropout is the config's default
    if space.cycle != (0,):
        preset["cycle"] = 0  # trial 0 is the preset exactly: no cycle
    budget = SearchBudget(trials, settings.search_max_seconds, settings.search_max_forward_ms)
    found = search(
        train_w, val_w, settings.lookback, settings.horizon, n_variates, budget,
        space=space, base=cfg, start_from=SearchSpace.point(preset, cfg), folds=origins,
        progress=sys.stderr.isatty(), log=get_run_logger().info,
    )  # fmt: skip
    best = found.best
    device = str(pick_device(cfg.device))
    result = TrainResult(best.val_loss, best.epochs, best.seconds, device, best.epochs_on(), "search")
    return found.model, result, found


def holdout_sample(candidate: Candidate, holdout) -> dict:
    """The last holdout window, its actual future and the candidate's forecast, in raw units: the
    forecast plot of the run."""
    import torch

    from flows.gate import forecast_windows

    last = torch.tensor([len(holdout) - 1])
    with torch.no_grad():
        pred, y = forecast_windows(candidate.raw_net(), holdout, last)
    x, y, pred = holdout.batch(last)[0][0], y[0], pred[0]
    return {"history": x.numpy(), "actual": y.numpy(), "forecast": pred.numpy()}
