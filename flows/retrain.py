"""The retraining flow: Kafka window → split → fit → track in MLflow → gate → promote → announce.

    pull_window ─▶ time_split (one cut in time for every entity) ─▶ fit (warm start from @champion
        when shapes allow; or, with `trials`, the configuration searched for on the validation split,
        models/search.py) ─▶ log run (each search trial a child run) + register version (pyfunc with
        signature, input example, code_paths, its data ranges as tags)
        ─▶ score candidate, champion, persistence, window mean on the same holdout: only readings
           after the champion's own training data, and a champion the service could not swap to
           (other channels or lookback) refuses the promotion instead of dropping out
        ─▶ @champion moves only if the gate says so, and only if it still points at the version the
           gate scored (compare-and-set; else the run fails) ─▶ announce on the models topic

Each step is a Prefect task; the ones that talk to Kafka or MLflow retry. Settings come from the
environment (`pipeline.settings.Settings`), parameters say what this run is for.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.window import TrainingWindow, WindowError, pull_window
from pipeline.settings import Settings

if TYPE_CHECKING:  # torch, MLflow and the models load inside the tasks: a superseded run never pays for them
    import torch

    from flows.gate import GateDecision
    from models.data import Scaler
    from models.forecaster import Forecaster
    from models.search import SearchResult
    from models.train import TrainResult

TRIGGERS = ("schedule", "manual", "drift")
EXPERIMENT = "sensorcast-retrain"
FLOW_RUN_TAG = "prefect_flow_run_id"
ATTEMPT_TAG = "sensorcast_registration"  # one value per registration, shared by its retries


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


@dataclass
class RetrainReport:
    """What one run did, JSON-able (the flow's return value, and what `sensorcast retrain` prints)."""

    trigger: str
    reason: str
    promoted: bool
    gate: str
    scores: dict[str, float]
    version: str | None = None
    run_id: str | None = None
    warm_started: bool = False
    train_seconds: float = 0.0
    epochs: int = 0
    trials: int = 0  # configurations tried by the search (0: the serving preset)
    readings: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    waited_s: float = 0.0  # for another retrain of the same model to end first
    configuration: str = ""  # where the candidate's configuration came from (flows/lineage.py), and why
    warm_start_reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def pull(hours: float | None, channels: list[str] | None) -> TrainingWindow | WindowError:
    """The window, or why there is none: too little data is an answer, not a failure to retry."""
    try:
        return pull_window(Settings.load(), hours, channels, progress=sys.stderr.isatty())
    except WindowError as e:
        return e


def use_tracking(settings: Settings) -> Settings:
    """Point MLflow's process-wide tracking and registry URIs at the settings' server: every client
    the flow builds, and the helpers it calls, then talk to it, whatever the environment or an earlier
    call in the process set (one server for both: a registry URI set earlier must not win)."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return settings


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def current_champion() -> Forecaster | None:
    """The serving model, or None when nothing is registered yet (an outage raises, and retries)."""
    from models.mlflow.registry import alias_version
    from pipeline.model_source import RegistryRef, load_version

    settings = use_tracking(Settings.load())
    version = alias_version(settings.model_name, settings.model_alias)
    if version is None:
        return None
    return load_version(RegistryRef(settings.model_name, settings.model_alias), version, "cpu")


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
            f"(to {_iso(until_ms)}) to calibrate on alone, so the intervals may be narrow"
        )
    return unseen, f"the {len(unseen)} holdout windows after the champion's training data (to {_iso(until_ms)})"


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


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def champion_trigger(version: str) -> str | None:
    """What started the retrain that made this version (its run's `trigger` tag)."""
    from mlflow import MlflowClient

    settings = use_tracking(Settings.load())
    client = MlflowClient(settings.tracking_uri)
    run_id = client.get_model_version(settings.model_name, version).run_id
    return client.get_run(run_id).data.tags.get("trigger") if run_id else None


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def champion_trained_until(version: str) -> int | None:
    """The last reading time (epoch ms) of the champion's training and validation data, from its
    `data_ranges` tag (None: a version registered before the tag existed)."""
    from mlflow import MlflowClient

    from pipeline.messages import parse_ts

    settings = use_tracking(Settings.load())
    tag = MlflowClient(settings.tracking_uri).get_model_version(settings.model_name, version).tags.get("data_ranges")
    if not tag:
        return None
    ranges = json.loads(tag)
    ends = [parse_ts(ranges[part][1]) for part in ("train", "validation") if ranges.get(part)]
    return max(ends) if ends else None


def data_ranges(window: TrainingWindow, ranges: dict[str, tuple[int, int]]) -> dict:
    """A version's data: topic, partition offsets read, grid, and first/last reading time per part."""
    from pipeline.messages import format_ts

    names = {"train": "train", "val": "validation", "holdout": "holdout"}
    return {
        "topic": window.provenance.topic,
        "offsets": {str(p): list(r) for p, r in window.provenance.offsets.items()},
        "grid": window.grid,
        **{names[k]: [format_ts(a), format_ts(b)] for k, (a, b) in ranges.items()},
    }


@task(cache_policy=NO_CACHE)
def score(
    candidate: Candidate,
    champion: Forecaster | None,
    holdout,
    margin: float,
    channels: list[str],
    grid: dict | None = None,
) -> GateDecision:
    """Every contender on the same holdout windows, each channel's MSE in units of its variance on the
    holdout (flows.gate.holdout_scores), raw-unit MAE beside it. A champion of
    another lookback, horizon, channels or cadence cannot be scored on them: the candidate then starts
    a new lineage, compared with the naive baselines only, and the reason says so."""
    from dataclasses import replace

    from flows.gate import decide, holdout_scores
    from flows.lineage import lineage_break
    from models.nets import NAIVE

    contenders = {"candidate": candidate.raw_net()}
    broken = None
    if champion is not None:
        broken = lineage_break(champion.meta, holdout.lookback, holdout.horizon, channels, grid)
        if broken is not None:  # windows the two cannot both be scored on: the naive baselines judge alone
            champion = None
    if champion is not None:
        contenders["champion"] = champion.net.cpu()
    horizon = holdout.horizon
    contenders.update({name: cls(horizon) for name, cls in NAIVE.items()})
    scores, mae = holdout_scores(contenders, holdout, channels)
    decision = decide(scores, margin)
    if broken is not None:
        decision = replace(decision, reason=f"{broken}: compared with the naive baselines only; {decision.reason}")
    return replace(decision, candidate_mae=mae["candidate"], raw_mae=mae)


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


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def register(
    candidate: Candidate,
    decision: GateDecision,
    window: TrainingWindow,
    trigger: str,
    reason: str,
    sizes: dict,
    sample: dict | None = None,
    ranges: dict | None = None,
    attempt: str | None = None,
) -> tuple[str, str]:
    """One MLflow run: parameters, losses, provenance, plots, the model, registered and tagged with the
    gate's verdict; the alias is not moved here (`promote` does that, after). A retry finds the version
    an earlier try made (the run's `attempt` tag) and never registers a second. Returns (version, run id)."""
    from mlflow.exceptions import MlflowException

    settings = use_tracking(Settings.load())
    done: dict[str, str] = {}
    try:
        return _register(settings, candidate, decision, window, trigger, reason, sizes, sample, done, ranges, attempt)
    except (MlflowException, OSError) as e:
        what = f"version {done['version']} was registered before it failed" if done else "nothing was registered"
        raise RegistryDown(
            f"MLflow at {settings.tracking_uri} did not take the run ({type(e).__name__}): {what}, "
            f"@{settings.model_alias} did not move"
        ) from e


class RegistryDown(RuntimeError):
    """MLflow failed mid-registration; the message says what exists and that no alias moved."""


def _register(
    settings, candidate, decision, window, trigger, reason, sizes, sample, done, ranges, attempt
) -> tuple[str, str]:
    import mlflow
    from prefect import runtime as prefect_runtime

    from models.mlflow.registry import log_checkpoint, use_experiment
    from models.mlflow.tracking import forecast_plot, log_search_trials, loss_plot

    use_experiment(EXPERIMENT)
    # MLflow's own "View run" links open its GenAI view; the flow logs links to the training view instead
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    found = _registered_by(settings.model_name, attempt) if attempt else None
    if found is not None:  # a retry after the version was made: tag it, never register a second one
        done["version"] = found[0]
        return _tag_version(settings, found[0], found[1], decision, window, ranges)
    with mlflow.start_run(run_name=f"retrain-{trigger}") as run:
        mlflow.set_tags(
            {
                "trigger": trigger,
                "trigger_reason": reason or trigger,
                "promoted": str(decision.promote),
                "gate": decision.reason,
                FLOW_RUN_TAG: str(prefect_runtime.flow_run.id or ""),  # `sensorcast retrain --wait` finds it
                ATTEMPT_TAG: attempt or "",  # a retry of this task finds what it already made
                **candidate.lineage,  # where its configuration came from, and why it was or was not warm-started
            }
        )
        mlflow.log_params(
            {
                "lookback": settings.lookback,
                "horizon": settings.horizon,
                "channels": ",".join(window.channels),
                "warm_start": candidate.warm_started,
                "topic": window.provenance.topic,
                "grid_interval_ms": (window.grid or {}).get("interval_ms"),
                "grid_anchor_ms": (window.grid or {}).get("anchor_ms"),
                **{k: v for k, v in candidate.model.cfg.to_dict().items() if k not in ("lookback", "horizon")},
                "search_trials": len(candidate.search.trials) if candidate.search else 0,
                **sizes,
            }
        )
        if candidate.search is not None:  # the trials as child runs, the choice and its budget on this run
            log_search_trials(candidate.search)
        for rec in candidate.result.history:
            mlflow.log_metrics({k: rec[k] for k in ("train_loss", "val_loss", "lr")}, step=rec["epoch"])
        mlflow.log_metrics({f"holdout_mse_{k}": v for k, v in decision.scores.items()})  # in holdout-variance units
        mlflow.log_metrics(
            {f"holdout_mae_{k}_{_metric_name(c)}": v for k, per in decision.raw_mae.items() for c, v in per.items()}
        )
        mlflow.log_metric("train_seconds", candidate.result.seconds)
        mlflow.log_dict(window.provenance.to_dict(), "provenance.json")
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(loss_plot(candidate.result.history, Path(tmp) / "loss.png")))
            if sample is not None:
                mlflow.log_artifact(str(forecast_plot(sample, window.channels, Path(tmp) / "forecast.png")))
        mlflow.log_text(decision.reason, "gate.txt")
        intervals = candidate.intervals or {}
        mlflow.log_dict(intervals, "intervals.json")  # the split-conformal half-widths the version serves with
        mlflow.log_params({"interval_levels": ",".join(intervals.get("half_width", {})) or "none"})
        version = done["version"] = log_checkpoint(candidate.checkpoint, settings.model_name)
    return _tag_version(settings, version, run.info.run_id, decision, window, ranges)


def _metric_name(channel: str) -> str:
    """A channel name as MLflow takes it in a metric key (letters, digits, _ - . / and spaces)."""
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in channel)


def _registered_by(name: str, attempt: str) -> tuple[str, str] | None:
    """(version, run id) that an earlier try of this registration made, if it got that far."""
    import mlflow
    from mlflow import MlflowClient

    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    client = MlflowClient()
    for run in client.search_runs([experiment.experiment_id], filter_string=f"tags.{ATTEMPT_TAG} = '{attempt}'"):
        for v in client.search_model_versions(f"run_id = '{run.info.run_id}'"):
            if v.name == name:
                return v.version, run.info.run_id
    return None


def _tag_version(settings, version: str, run_id: str, decision, window, ranges) -> tuple[str, str]:
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_model_version_tag(settings.model_name, version, "gate", decision.reason)
    client.set_model_version_tag(settings.model_name, version, "holdout_mse", json.dumps(decision.scores))
    client.set_model_version_tag(settings.model_name, version, "holdout_mae", json.dumps(decision.candidate_mae))
    if ranges:  # what it was trained, validated and held out on: a later gate scores it only after these
        client.set_model_version_tag(settings.model_name, version, "data_ranges", json.dumps(ranges))
    if window.grid:  # the cadence and phase it was trained at: the service slots readings on them
        client.set_model_version_tag(settings.model_name, version, "grid", json.dumps(window.grid))
    return version, run_id


class ChampionMoved(RuntimeError):
    """@champion moved to another version while this run was gating: its verdict is about a champion
    that no longer serves, so the alias is left where it is and the run fails."""


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def promote(version: str, scored_against: str | None) -> str | None:
    """Move the alias to `version` only if it still points where the gate looked (compare-and-set:
    re-read just before the move). Returns None when moved, else the version the alias points to now."""
    from mlflow import MlflowClient

    from models.mlflow.registry import alias_version

    settings = use_tracking(Settings.load())
    client = MlflowClient(settings.tracking_uri)
    now = alias_version(settings.model_name, settings.model_alias)
    if now == version:  # a retry after the move was applied and its answer lost: done, not refused
        return None
    if now != scored_against:
        client.set_model_version_tag(
            settings.model_name,
            version,
            "promotion",
            f"refused: @{settings.model_alias} moved to v{now} during the gate",
        )
        return now
    client.set_registered_model_alias(settings.model_name, settings.model_alias, version)
    return None


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def announce(version: str, run_id: str) -> None:
    """Tell running services at once (they also poll the registry, as the fallback)."""
    from pipeline.kafka import ensure_topics, make_producer

    settings = Settings.load()
    ensure_topics(settings, [settings.models_topic])
    producer = make_producer(settings)
    doc = {"name": settings.model_name, "alias": settings.model_alias, "version": version, "run_id": run_id}
    producer.send(settings.models_topic, key=settings.model_name.encode(), value=json.dumps(doc).encode()).get(30)
    producer.close()


def _iso(ts_ms: int) -> str:
    from pipeline.messages import format_ts

    return format_ts(ts_ms)


@flow(name="retrain", log_prints=True)
def retrain(
    trigger: str = "manual",
    reason: str = "",
    hours: float | None = None,
    warm_start: bool = True,
    margin: float = 0.0,
    epochs: int = 5,
    trials: int = 0,
) -> dict:
    """Retrain the serving model on the readings topic and promote it only if it wins on the holdout.
    `trials` > 0 searches for the model's configuration on the validation split first (0: the preset).
    One retrain of a model at a time, however it was started (schedule, drift, a deployment run or
    `sensorcast retrain` in a process of its own): a second one waits for the first."""
    if trigger not in TRIGGERS:
        raise ValueError(f"trigger must be one of {TRIGGERS}, got {trigger!r}")
    logger = get_run_logger()
    if trigger == "schedule":
        from flows.slots import later_slot_is_due

        if later_slot_is_due():  # missed slots collapse into the latest one
            logger.info("superseded: a later scheduled slot is already due and will retrain")
            return RetrainReport(
                trigger, reason or trigger, False, "superseded by a later scheduled slot", {}
            ).to_dict()
    from flows.slots import one_retrain_at_a_time

    started = time.monotonic()
    with one_retrain_at_a_time(Settings.load().model_name, logger):
        waited = time.monotonic() - started
        report = _retrain(trigger, reason, hours, warm_start, margin, epochs, logger, trials)
    report.waited_s = round(waited, 3)
    logger.info(
        "retrain done in %.0f s: version %s, promoted %s", time.monotonic() - started, report.version, report.promoted
    )
    return report.to_dict()


def _retrain(trigger, reason, hours, warm_start, margin, epochs, logger, trials=0) -> RetrainReport:
    from models.data import DataError
    from models.mlflow.registry import run_url
    from models.search import NothingEligible

    champion = current_champion()
    if trigger == "drift" and trials == 0 and champion is not None and Settings.load().search_every_s:
        if champion_trigger(champion.version) == "drift":  # a drift retrain made it, and the drift is back
            trials = Settings.load().search_trials
            logger.info("drift persists after the drift retrain that made v%s: searching (%d trials)",
                        champion.version, trials)  # fmt: skip
    window = pull(hours, champion.channels if champion is not None else None)
    if isinstance(window, WindowError):  # nothing to train on: no run, no version, and the reason said
        logger.warning("not retrained: %s", window)
        return RetrainReport(trigger, reason or trigger, False, f"not retrained: {window}", {})
    prov = window.provenance
    logger.info("window: %d readings, refused %s, %d series", prov.readings, prov.refused, prov.segments)
    settings, why = Settings.load(), ""
    if trials == 0 and champion is not None and settings.search_every_s:  # the search is on
        from flows.lineage import trials_for_new_lineage

        dims = (settings.lookback, settings.horizon, window.channels, window.grid)
        trials, why = trials_for_new_lineage(champion.meta, *dims, search_trials=settings.search_trials)
        if trials:
            logger.info(why)
    with tempfile.TemporaryDirectory(prefix="sensorcast-retrain-") as tmp:
        try:
            until = champion_trained_until(champion.version) if champion is not None else None
            candidate, info = fit(window, champion, warm_start, epochs, Path(tmp) / "candidate", trials, until)
        except (DataError, NothingEligible) as e:
            logger.warning("not retrained: %s", e)
            report = RetrainReport(trigger, reason or trigger, False, f"not retrained: {e}", {})
            report.readings, report.refused = window.provenance.readings, window.provenance.refused
            return report
        if why:  # the run's tags say why it searched
            candidate.lineage["config_reason"] = why
        holdout, ranges = info.pop("holdout"), info.pop("ranges")
        decision = None
        holdout_start = ranges["holdout"][0] if "holdout" in ranges else None
        if until is not None and holdout_start is not None and until >= holdout_start:
            from flows.gate import GateDecision, windows_after

            try:  # every contender on the same windows, none holding the champion's training targets
                series, grid = window.timed_series(), window.grid
                holdout = windows_after(series, until, holdout.lookback, holdout.horizon, grid)
                info["holdout_after"] = _iso(until)  # in the run's params: what the gate scored
                info["holdout_windows_scored"] = len(holdout)
                logger.info(
                    "the champion v%s trained on data up to %s: every contender is scored on the %d holdout "
                    "windows after it", champion.version, _iso(until), len(holdout)
                )  # fmt: skip
            except DataError:
                decision = GateDecision(
                    False,
                    f"too few holdout readings after the champion v{champion.version}'s training data, which ends "
                    f"{_iso(until)}: not promoted (retrain on a window that reaches further)",
                    {},
                    margin,
                )
        decision = decision or score(candidate, champion, holdout, margin, window.channels, window.grid)
        logger.info("gate: %s", decision.reason)
        sample = holdout_sample(candidate, holdout)
        attempt = uuid.uuid4().hex  # one key for all tries of the registration: a retry finds its version
        version, run_id = register(
            candidate, decision, window, trigger, reason, info, sample, data_ranges(window, ranges), attempt
        )
        logger.info("MLflow run: %s (version %s)", run_url(Settings.load().tracking_uri, run_id), version)
    if decision.promote:
        moved_to = promote(version, champion.version if champion is not None else None)
        if moved_to is not None:
            raise ChampionMoved(
                f"@champion moved to v{moved_to} while this run gated v{version} against "
                f"{'v' + champion.version if champion is not None else 'no champion'}: v{version} is registered, "
                "not promoted; retrain again to gate against the champion that serves now"
            )
        announce(version, run_id)
    report = RetrainReport(
        trigger, reason or trigger, decision.promote, decision.reason, decision.scores, version, run_id,
        candidate.warm_started, candidate.result.seconds, candidate.result.epochs,
        len(candidate.search.trials) if candidate.search else 0, window.provenance.readings, window.provenance.refused,
    )  # fmt: skip
    report.configuration = candidate.lineage.get("config_reason", "")
    report.warm_start_reason = candidate.lineage.get("warm_start_reason", "")
    return report
