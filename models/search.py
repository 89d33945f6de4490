"""Choose the iTransformer's configuration on validation alone: a budgeted Optuna search.

TPE proposes a size and a schedule from a declared `SearchSpace`. Each trial trains on the train split
and reports its validation loss after every epoch, so the median pruner stops trials that trail the
others. With rolling origins, a trial also trains on the earlier folds (first, oldest first: the
pruner watches the first) and is judged by the mean over all of them, since one validation period
is a noisy judge. A configuration whose forward pass at batch 256 is over the serving budget is not
eligible and never trains. The test split is never seen here: the caller scores the chosen model once.

The chosen model is a trial's own weights: the model the search judged, without a second training
(which would cost as much again, and multi-threaded CPU training drifts in the last digits between
runs). Which trial is the selection rule's (`SELECT_RULES`). "one-se", the default, keeps the default
configuration (the first known point: the champion's, the preset, the paper's setting) unless the best
trial beats it by more than one standard error of their paired differences over the rolling origins
(Breiman's one-standard-error rule, after Breiman et al. 1984): validation differences smaller than
the noise between origins are noise, and choosing on them turns more trials into more overfitting.
"best" takes the lowest mean validation loss.

>>> from models.data import Windows
>>> import numpy as np
>>> series = [np.sin(np.arange(300.0))[:, None] * np.ones((1, 2))]
>>> tiny = SearchSpace(d_model=(8,), e_layers=(1, 1), d_ff=(8,), epochs=(1,), patience=(1,))
>>> found = search(Windows(series, 16, 4), Windows(series, 16, 4), 16, 4, 2, SearchBudget(trials=2),
...                space=tiny, progress=False)
>>> len(found.trials), found.best.state, found.model.cfg.d_model
(2, 'complete', 8)
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from models.data import Windows
from models.nets import ITransformer, ITransformerConfig
from models.train import TrainConfig, train

LATENCY_BATCH = 256  # the batch the serving cost is measured at: the service's batches at high rates
SELECT_RULES = ("one-se", "best")  # how the search picks among its completed trials (the module's docstring)


@dataclass(frozen=True)
class SearchSpace:
    """What the search may choose. Sizes are choices; ranges are (low, high)."""

    d_model: tuple[int, ...] = (64, 128, 256, 512)
    e_layers: tuple[int, int] = (0, 4)  # 0: embedding and projection alone, a linear model like CycleNet/Linear
    d_ff: tuple[int, ...] = (64, 128, 256, 512)
    n_heads: tuple[int, ...] = (4, 8)  # every d_model above divides by each
    dropout: tuple[float, float] = (0.0, 0.3)
    lr: tuple[float, float] = (5e-5, 1e-2)  # sampled on a log scale
    schedule: tuple[str, ...] = ("halve", "cosine")
    epochs: tuple[int, ...] = (5, 10, 20, 30)
    patience: tuple[int, ...] = (2, 3, 5)
    batch_size: tuple[int, ...] = (32, 256)
    loss: tuple[str, ...] = ("mse", "mae")  # what training minimizes (validation judges by MSE either way)
    cycle: tuple[int, ...] = (0,)  # periods to try for a cycle-aware network (0: none); see cycle_candidates
    skip: tuple[bool, ...] = (False, True)  # a correction to the last value (ITransformerConfig.skip), or not

    def suggest(self, trial) -> tuple[dict, dict]:
        """(the network's config fields, the training config's fields) for one trial."""
        net = {
            "d_model": trial.suggest_categorical("d_model", list(self.d_model)),
            "e_layers": trial.suggest_int("e_layers", *self.e_layers),
            "d_ff": trial.suggest_categorical("d_ff", list(self.d_ff)),
            "dropout": trial.suggest_float("dropout", *self.dropout),
            "n_heads": trial.suggest_categorical("n_heads", list(self.n_heads)),
        }
        if self.cycle != (0,):
            net["cycle"] = trial.suggest_categorical("cycle", list(self.cycle))
        if len(self.skip) > 1 or self.skip[0]:
            net["skip"] = trial.suggest_categorical("skip", list(self.skip))
        fit = {
            "lr": trial.suggest_float("lr", *self.lr, log=True),
            "schedule": trial.suggest_categorical("schedule", list(self.schedule)),
            "epochs": trial.suggest_categorical("epochs", list(self.epochs)),
            "patience": trial.suggest_categorical("patience", list(self.patience)),
            "batch_size": trial.suggest_categorical("batch_size", list(self.batch_size)),
            "loss": trial.suggest_categorical("loss", list(self.loss)),
        }
        return net, fit

    def cyclenet_linear(self) -> dict | None:
        """CycleNet/Linear's recipe (Lin et al., NeurIPS 2024: a linear map beside a learnable cycle,
        learning rate 0.01, batch 256, 30 epochs, patience 5) as a point of this space, with its shortest
        cycle on offer: a known good start for data with a cycle. None when the space cannot hold it."""
        cycles = [c for c in self.cycle if c]
        point = {
            "d_model": max(self.d_model), "e_layers": 0, "d_ff": self.d_ff[0], "dropout": 0.0,
            "n_heads": self.n_heads[0], "lr": 1e-2, "schedule": "halve", "epochs": 30, "patience": 5,
            "batch_size": 256, "loss": "mse", "skip": False,
        }  # fmt: skip
        fits = (
            self.e_layers[0] == 0 and self.lr[0] <= 1e-2 <= self.lr[1] and self.dropout[0] == 0.0
            and all(point[k] in getattr(self, k) for k in ("schedule", "epochs", "patience", "batch_size", "loss"))
            and False in self.skip
        )  # fmt: skip
        return {**point, "cycle": min(cycles)} if cycles and fits else None

    def with_cycles(self, train: np.ndarray, step_s: float | None) -> SearchSpace:
        """This space offering, beside no cycle, the periods the training data (T, N) and its grid's
        step suggest (`cycle_candidates`, `cadence_of`)."""
        return replace(self, cycle=(0, *cycle_candidates(train, cadence_of(step_s))))

    @staticmethod
    def point(net: dict, fit: TrainConfig) -> dict:
        """A known configuration as values of the space's parameters (to enqueue as a trial)."""
        keys = ("d_model", "e_layers", "d_ff", "dropout", "n_heads")
        fits = ("lr", "schedule", "epochs", "patience", "batch_size", "loss")
        point = {**{k: net[k] for k in keys}, **{k: getattr(fit, k) for k in fits}}
        return point | ({"cycle": net["cycle"]} if "cycle" in net else {}) | {"skip": bool(net.get("skip", False))}


@dataclass(frozen=True)
class SearchBudget:
    """How much the search may spend: trials, and wall time (checked between trials). A trial whose
    forward pass at batch 256 takes over `max_forward_ms` is not eligible (None: no limit)."""

    trials: int
    max_seconds: float | None = None
    max_forward_ms: float | None = None


@dataclass
class TrialRecord:
    """One trial, JSON-able: what it tried and how it ended (complete, pruned, ineligible, diverged)."""

    number: int
    params: dict
    state: str
    val_loss: float | None  # its best validation loss, the mean over the folds (None when it never trained)
    forward_ms: float
    seconds: float
    epochs: int
    history: list[dict] = field(default_factory=list)
    fold_val_losses: list[float] = field(default_factory=list)  # each fold's best, oldest first, the real split last
    folds: int = 1  # rolling origins judged on, the real split included

    def to_dict(self) -> dict:
        return asdict(self)

    def epochs_on(self, fold: int | None = None) -> list[dict]:
        """The per-epoch records of one fold (default: the real split, the last), without the fold key."""
        fold = self.folds - 1 if fold is None else fold
        return [{k: v for k, v in r.items() if k != "fold"} for r in self.history if r.get("fold", 0) == fold]


NET_PARAMS = ("d_model", "e_layers", "d_ff", "dropout", "n_heads", "cycle", "skip")  # the rest: TrainConfig's


def configs_of(
    params: dict, lookback: int, horizon: int, n_variates: int, base: TrainConfig
) -> tuple[ITransformerConfig, TrainConfig]:
    """A trial's parameters back to the network's and the training's configuration, to train it again
    (with another seed, say: how much of a trial's lead is its initialization).

    >>> net, fit = configs_of({"d_model": 64, "e_layers": 0, "d_ff": 64, "dropout": 0.0, "n_heads": 4,
    ...                        "cycle": 24, "lr": 0.01, "epochs": 30}, 96, 24, 7, TrainConfig(seed=3))
    >>> (net.cycle, net.n_variates, fit.lr, fit.epochs, fit.seed)
    (24, 7, 0.01, 30, 3)
    """
    net = {k: v for k, v in params.items() if k in NET_PARAMS}
    if net.get("cycle"):
        net["n_variates"] = n_variates
    fit = {k: v for k, v in params.items() if k not in NET_PARAMS}
    return ITransformerConfig(lookback, horizon, **net), replace(base, **fit)


def one_se(default: TrialRecord, best: TrialRecord) -> tuple[bool, str]:
    """Whether `best` beats `default` clearly: its mean validation loss lower by more than one standard
    error of their paired differences over the origins both were judged on (True), and why. With one
    origin there is no spread to judge by, and the best is kept.

    >>> d = TrialRecord(0, {}, "complete", 1.00, 1.0, 1.0, 1, fold_val_losses=[1.1, 0.9, 1.0], folds=3)
    >>> b = TrialRecord(5, {}, "complete", 0.98, 1.0, 1.0, 1, fold_val_losses=[1.0, 0.92, 1.02], folds=3)
    >>> one_se(d, b)[0]  # better on average, but by less than the origins disagree
    False
    """
    if len(best.fold_val_losses) < 2 or len(default.fold_val_losses) != len(best.fold_val_losses):
        return True, f"trial {best.number} is best; one origin gives no spread, so the one-SE rule cannot apply"
    diffs = [a - b for a, b in zip(default.fold_val_losses, best.fold_val_losses, strict=True)]
    gain, se = statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
    if gain > se:
        return True, f"trial {best.number} beats the default by {gain:.5f}, more than one SE ({se:.5f})"
    return False, f"the default kept: trial {best.number} beats it by {gain:.5f}, not more than one SE ({se:.5f})"


@dataclass
class SearchResult:
    best: TrialRecord  # the chosen trial (the rule's choice: the default unless clearly beaten)
    model: ITransformer  # the chosen trial's network with its best validation weights, in eval mode
    train_config: TrainConfig
    trials: list[TrialRecord]
    budget: SearchBudget
    wall_seconds: float
    select: str = "best"  # the rule (SELECT_RULES)
    selection: str = ""  # why this trial: what the rule found
    lowest: TrialRecord | None = None  # the trial of the lowest validation loss, chosen or not

    def to_dict(self) -> dict:
        """What a benchmark row or an MLflow run records about the search."""
        return {
            "chosen": self.best.params,
            "chosen_val_loss": self.best.val_loss,
            "chosen_trial": self.best.number,
            "select": self.select,
            "selection": self.selection,
            "lowest_trial": None if self.lowest is None else self.lowest.number,
            "lowest_val_loss": None if self.lowest is None else self.lowest.val_loss,
            "folds": self.best.folds,  # rolling origins each trial was judged on, the validation split included
            "trials": len(self.trials),
            "states": {s: sum(t.state == s for t in self.trials) for s in sorted({t.state for t in self.trials})},
            "budget_trials": self.budget.trials,
            "budget_seconds": self.budget.max_seconds,
            "max_forward_ms": self.budget.max_forward_ms,
            "wall_seconds": round(self.wall_seconds, 1),
        }


def cadence_of(step_s: float | None) -> int | None:
    """The natural cycle in steps of a grid with this step: a day for steps that divide it, a week for
    daily readings, else None."""
    if not step_s or step_s <= 0:
        return None
    if abs(step_s - 86_400) < 1:
        return 7
    per_day = 86_400 / step_s
    return int(round(per_day)) if step_s < 86_400 and abs(per_day - round(per_day)) < 1e-6 else None


def cycle_candidates(train: np.ndarray, cadence: int | None = None, most: int = 2, max_lag: int = 400) -> list[int]:
    """Periods worth trying for a cycle, from the training split alone: the strongest peaks of the
    channels' mean autocorrelation (a local maximum above 0.2), then the grid's natural `cadence` (24
    for hourly readings, 7 for daily) if given. `train` is (T, N)."""
    found = acf_peaks(train, max_lag)[:most]
    if cadence and cadence not in found:
        found.append(cadence)
    return sorted(found)


PEAK_PROMINENCE = 0.05  # a cycle's peak rises this far above the autocorrelation's dip in the half cycle before it


def acf_peaks(train: np.ndarray, max_lag: int = 400) -> list[int]:
    """The lags where the channels' mean autocorrelation of `train` (T, N) peaks above 0.2, strongest
    first. A peak must rise `PEAK_PROMINENCE` above the lowest value in the half cycle before it: a
    slowly decaying autocorrelation (pressure, temperature: persistent, not cyclic) has noise-level
    local maxima that are no cycle (on the weather, 18 h at 0.424 against 0.424 an hour before).

    >>> t = np.arange(3000.0)
    >>> acf_peaks(np.sin(2 * np.pi * t / 24)[:, None], max_lag=60)
    [24, 48]
    >>> walk = np.cumsum(np.random.default_rng(0).normal(size=(3000, 3)), axis=0)  # persistent, no cycle
    >>> acf_peaks(walk, max_lag=60)
    []
    """
    x = train - train.mean(axis=0)
    n = len(x)
    lags = min(max_lag, n // 3)
    if lags < 3:
        return []
    spectrum = np.fft.rfft(x, n=2 * n, axis=0)
    acf = np.fft.irfft(spectrum * np.conj(spectrum), axis=0)[: lags + 1]  # (lags + 1, N)
    acf = (acf / np.maximum(acf[0], 1e-12)).mean(axis=1)
    peaks = [
        k
        for k in range(2, lags)
        if acf[k] > 0.2
        and acf[k] >= acf[k - 1]
        and acf[k] > acf[k + 1]
        and acf[k] - acf[k // 2 : k].min() >= PEAK_PROMINENCE
    ]
    return sorted(peaks, key=lambda k: -acf[k])


def strongest_cycle(train: np.ndarray, cadence: int | None, lookback: int) -> int | None:
    """The seasonal naive's period: the strongest autocorrelation peak of the training split that fits in
    the lookback, else the grid's natural cadence if it fits, else None (no seasonal baseline).

    >>> t = np.arange(2000.0)
    >>> strongest_cycle(np.sin(2 * np.pi * t / 24)[:, None], cadence=24, lookback=48)
    24
    >>> strongest_cycle(np.sin(2 * np.pi * t / 168)[:, None], cadence=None, lookback=48) is None  # a week: too long
    True
    """
    fits = [p for p in acf_peaks(train) if p <= lookback]
    if fits:
        return fits[0]
    return cadence if cadence and cadence <= lookback else None


class NothingEligible(RuntimeError):
    """Every trial was pruned, diverged or over the serving budget: there is no configuration to choose."""


@torch.no_grad()
def forward_ms(model: torch.nn.Module, n_variates: int, batch: int = LATENCY_BATCH, repeats: int = 5) -> float:
    """Median wall time of one forward pass at `batch` on the CPU, after one warm-up."""
    model = model.eval()
    x = torch.randn(batch, model.cfg.lookback, n_variates)
    inputs = (x, None, torch.zeros(batch, dtype=torch.long)) if getattr(model.cfg, "cycle", 0) else (x,)
    model(*inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(*inputs)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def search(
    train_set: Windows,
    val_set: Windows,
    lookback: int,
    horizon: int,
    n_variates: int,
    budget: SearchBudget,
    *,
    space: SearchSpace | None = None,
    base: TrainConfig | None = None,
    start_from: dict | list[dict] | None = None,
    folds: Sequence[tuple[Windows, Windows]] = (),
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    select: str = "one-se",
) -> SearchResult:
    """Run the search; raise `NothingEligible` when no trial completed. `start_from` (values for the
    space's parameters, such as today's preset, or a list of such points) are the first trials, always
    eligible, so the choice is never worse on validation than they are. With `folds` (earlier origins,
    `models.data.rolling_origins`), a trial trains once per fold and then on the real split, and is
    judged by the mean of the folds' validation losses: rolling-origin validation. The chosen model is
    still the one trained on the whole training split. `select` picks among the completed trials
    (`SELECT_RULES`); without a known point, trial 0 is a random draw, not a default, and "one-se" has
    nothing to keep: the best is chosen."""
    import optuna

    if select not in SELECT_RULES:
        raise ValueError(f"select is one of {', '.join(SELECT_RULES)}, got {select!r}")

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from `log` instead
    space, base = space or SearchSpace(), base or TrainConfig()
    log = log or logging.getLogger("sensorcast.search").info
    starts = [start_from] if isinstance(start_from, dict) else list(start_from or [])
    records: list[TrialRecord] = []
    kept: dict = {}  # the best completed trial's network and training config
    default: dict = {}  # trial 0's, when it is a known point and completed

    def objective(trial: optuna.Trial) -> float:
        net_fields, fit_fields = space.suggest(trial)
        if net_fields.get("cycle"):
            net_fields["n_variates"] = n_variates
        model = ITransformer(ITransformerConfig(lookback, horizon, **net_fields))
        cost = forward_ms(model, n_variates)
        record = TrialRecord(
            trial.number, dict(trial.params), "ineligible", None, round(cost, 3), 0.0, 0, folds=len(folds) + 1
        )
        records.append(record)
        known = trial.number < len(starts)  # the known points stay eligible, however busy the CPU
        if budget.max_forward_ms is not None and cost > budget.max_forward_ms and not known:
            log(f"trial {trial.number}: {cost:.1f} ms at batch {LATENCY_BATCH} > {budget.max_forward_ms:g} ms, skipped")
            raise optuna.TrialPruned()
        cfg = replace(base, **fit_fields, progress=False)
        started = time.perf_counter()
        runs = [*folds, (train_set, val_set)]  # the earlier origins, oldest first, then the real split
        initial = copy.deepcopy(model)  # every fold starts from the same weights

        def on_epoch(rec: dict, fold: int) -> None:
            record.history.append(rec if len(runs) == 1 else {**rec, "fold": fold})
            record.epochs = rec["epoch"]
            if not math.isfinite(rec["val_loss"]):
                record.state = "diverged"
                raise optuna.TrialPruned()
            if fold == 0:  # the pruner compares trials on the first fold they all train on
                trial.report(rec["val_loss"], rec["epoch"])
                if trial.should_prune():
                    record.state = "pruned"
                    raise optuna.TrialPruned()

        try:
            for j, (fit_w, val_w) in enumerate(runs):
                net = model if j == len(runs) - 1 else copy.deepcopy(initial)
                result = train(
                    net, fit_w, val_w, cfg, on_epoch=lambda rec, j=j: on_epoch(rec, j), desc=f"trial {trial.number}"
                )
                record.fold_val_losses.append(result.best_val_loss)
        finally:
            record.seconds = round(time.perf_counter() - started, 2)
            losses = [r["val_loss"] for r in record.history if math.isfinite(r["val_loss"])]
            record.val_loss = min(losses) if losses else None
            if record.state != "ineligible":
                log(f"trial {trial.number}: {record.state}, val {record.val_loss} after {record.epochs} epochs")
        record.state, record.val_loss = "complete", statistics.fmean(record.fold_val_losses)
        log(f"trial {trial.number}: val {record.val_loss:.5f} in {record.seconds:.0f} s, {trial.params}")
        if "record" not in kept or record.val_loss < kept["record"].val_loss:
            kept.update(record=record, model=copy.deepcopy(model).cpu().eval(), cfg=cfg)
        if trial.number == 0 and starts:  # the first to complete: `kept` holds its copy already
            default.update(kept)
        return record.val_loss

    sampler = optuna.samplers.TPESampler(seed=base.seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)  # never on epoch 1 alone
    study = optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner)
    for point in starts:
        study.enqueue_trial(point)
    started = time.perf_counter()
    with tqdm(total=budget.trials, desc="search", unit="trial", disable=not progress) as bar:
        study.optimize(
            objective, n_trials=budget.trials, timeout=budget.max_seconds, callbacks=[lambda *_: bar.update()]
        )
    wall = time.perf_counter() - started
    if "record" not in kept:
        raise NothingEligible(
            f"none of {len(records)} trials completed ({', '.join(sorted({r.state for r in records}))}): "
            "raise the budget or widen max_forward_ms"
        )
    chosen, why = kept, f"trial {kept['record'].number} has the lowest validation loss"
    if select == "one-se" and default and default["record"] is not kept["record"]:
        clearly, why = one_se(default["record"], kept["record"])
        chosen = kept if clearly else default
    elif select == "one-se" and not default:
        why += " (no default completed for the one-SE rule to keep)"
    log(f"search chose trial {chosen['record'].number}: {why}")
    return SearchResult(
        chosen["record"], chosen["model"], chosen["cfg"], records, budget, wall, select, why, kept["record"]
    )
