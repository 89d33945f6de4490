"""The retraining flow, as its steps: window → fit → gate → register → promote → announce.

    pull_window ─▶ fit (flows/candidate.py: one cut in time for every entity; the champion's configuration,
        warm-started from its weights, or with `trials` one searched for on rolling origins; intervals
        calibrated on windows its weights never saw)
        ─▶ gate (flows/gate.py: candidate, champion, persistence and window mean on the same holdout,
           only readings after the champion's own training data; a champion of another shape leaves
           the naive baselines to judge, a new lineage)
        ─▶ register (flows/registry.py: one MLflow run and version, tagged with the verdict and its
           data ranges; a retry never registers a second) ─▶ promote (compare-and-set on @champion;
           the run fails if it moved meanwhile) ─▶ announce on the models topic

Each step is a Prefect task; the ones that talk to Kafka or MLflow retry. Settings come from the
environment (`pipeline.settings.Settings`), parameters say what this run is for.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.candidate import Candidate, fit, holdout_sample
from flows.registry import (
    ChampionMoved,
    announce,
    champion_trained_until,
    champion_trigger,
    current_champion,
    data_ranges,
    promote,
    register,
)
from flows.window import TrainingWindow, WindowError, pull_window
from pipeline.messages import format_ts
from pipeline.settings import Settings

if TYPE_CHECKING:
    from flows.gate import GateDecision
    from models.forecaster import Forecaster

TRIGGERS = ("schedule", "manual", "drift")


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


@task(cache_policy=NO_CACHE)
def score(
    candidate: Candidate,
    champion: Forecaster | None,
    holdout,
    margin: float,
    channels: list[str],
    grid: dict | None = None,
    seasonal_period: int | None = None,
) -> GateDecision:
    """Every contender on the same holdout windows, each channel's MSE in units of its variance on the
    holdout (flows.gate.holdout_scores), raw-unit MAE beside it. A champion of
    another lookback, horizon, channels or cadence cannot be scored on them: the candidate then starts
    a new lineage, compared with the naive baselines only, and the reason says so."""
    from dataclasses import replace

    from flows.gate import decide, holdout_scores
    from flows.lineage import lineage_break
    from models.nets import NAIVE, SeasonalNaive

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
    if seasonal_period is not None and seasonal_period <= holdout.lookback:
        contenders["seasonal"] = SeasonalNaive(horizon, seasonal_period)
    scores, mae = holdout_scores(contenders, holdout, channels)
    decision = decide(scores, margin)  # the best naive, seasonal included, is the bar
    if broken is not None:
        decision = replace(decision, reason=f"{broken}: compared with the naive baselines only; {decision.reason}")
    period = seasonal_period if "seasonal" in contenders else None
    return replace(decision, candidate_mae=mae["candidate"], raw_mae=mae, seasonal_period=period)


def seasonal_period(window, holdout_start: int | None, lookback: int) -> int | None:
    """The seasonal naive's period, from the training part of the window (before the holdout): its
    strongest cycle that fits in the lookback (models.search.strongest_cycle)."""
    from models.search import cadence_of, strongest_cycle

    parts = [v if holdout_start is None else v[ts < holdout_start] for ts, v in window.timed_series()]
    train = max(parts, key=len, default=None)
    if train is None or len(train) < 3 * 3:
        return None
    grid = window.grid or {}
    return strongest_cycle(train, cadence_of(grid.get("interval_ms", 0) / 1000), lookback)


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
            from flows.gate import holdout_after_champion

            holdout, decision = holdout_after_champion(
                window.timed_series(), window.grid, holdout, until, margin, champion.version
            )
            if decision is None:  # in the run's params: what the gate scored
                info["holdout_after"], info["holdout_windows_scored"] = format_ts(until), len(holdout)
                logger.info(
                    "the champion v%s trained on data up to %s: every contender is scored on the %d holdout "
                    "windows after it", champion.version, format_ts(until), len(holdout)
                )  # fmt: skip
        period = seasonal_period(window, holdout_start, holdout.lookback)
        info["seasonal_period"] = period if period is not None else "none"  # in the run's params
        decision = decision or score(candidate, champion, holdout, margin, window.channels, window.grid, period)
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
