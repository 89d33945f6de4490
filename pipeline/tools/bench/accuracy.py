"""The accuracy benchmark's two protocols (`sensorcast bench accuracy`).

`seed`: lookback 10, horizon 1, first 80% of rows to train, last 20% to test, raw values.
`standard`: the Time-Series-Library protocol, lookback 96, horizons 96/192/336/720, standardized by
the training split. Every row of results carries the naive baselines beside the networks.

With `search` set, the iTransformer's configuration is chosen on the validation split by
models/search.py, and the chosen model is scored on the test split once; the row records the choice,
its validation loss, the budget and the search's wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from models.conformal import WINDOW_POWER, interval_report
from models.data import Prepared, Split, prepare, rolling_origins, split_for
from models.device import pick_device
from models.metrics import abs_errors, evaluate, window_std
from models.nets import NAIVE, ITransformer, ITransformerConfig, SeasonalNaive, Transformer, TransformerConfig
from models.search import SearchBudget, SearchSpace, cadence_of, search, strongest_cycle
from models.sources import guess_time_column, load_table
from models.train import TrainConfig, train

NETWORKS = ("itransformer", "transformer")
MODELS = (*NETWORKS, *NAIVE, "seasonal")  # what `--models` may name; seasonal: the data's strongest cycle


def default_models(device_type: str) -> tuple[str, ...]:
    """Everything on a GPU; on a CPU, the Transformer at its published size (about 90 min on ETTh1 on two
    cores) only when asked for by name."""
    return MODELS if device_type == "cuda" else tuple(m for m in MODELS if m != "transformer")


# -- model sizes. The iTransformer at the paper's setting for these data sets; the Transformer at the
# Time-Series-Library's published configuration for its vanilla Transformer (d_model 512, d_ff 2048,
# 8 heads, 2 encoder and 1 decoder layers, label length 48, timeF calendar features).


def itransformer_for(
    lookback: int, horizon: int, n_variates: int, protocol: str, n_time_features: int = 0
) -> ITransformer:
    if protocol == "seed":
        cfg = ITransformerConfig(lookback, horizon, d_model=64, n_heads=4, e_layers=2, d_ff=128, dropout=0.1)
    else:
        cfg = ITransformerConfig(lookback, horizon, d_model=256, n_heads=8, e_layers=2, d_ff=256, dropout=0.1)
    return ITransformer(cfg)


def transformer_for(
    lookback: int, horizon: int, n_variates: int, protocol: str, n_time_features: int = 0
) -> Transformer:
    label = min(48, lookback // 2)
    cfg = TransformerConfig(
        lookback, horizon, n_variates, label, d_model=512, n_heads=8, e_layers=2, d_layers=1, d_ff=2048,
        dropout=0.1, n_time_features=n_time_features,
    )  # fmt: skip
    return Transformer(cfg)


@dataclass
class BenchRow:
    model: str
    horizon: int
    mse: float
    mae: float
    train_seconds: float
    epochs: int
    stopped_by: str | None = None  # epochs | patience | time_cap | search (None for the naive forecasts)
    time_cap_s: float | None = None  # the explicit training budget, when one was set
    config: dict | None = None  # the network's size
    search: dict | None = None  # how the configuration was chosen (models.search.SearchResult.to_dict)
    intervals: dict | None = None  # level → test coverage and mean half-width, calibrated on validation
    windows: int | None = None  # test windows scored: None, all of them; a peer's row, the shared subset
    subset: dict | None = None  # with peers: this model on the peers' subset (windows, mse, mae, predict_seconds)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "horizon": self.horizon,
            "mse": float(f"{self.mse:.6g}"),  # significant digits: seed-protocol MSEs are ~1e-5
            "mae": float(f"{self.mae:.6g}"),
            "train_seconds": round(self.train_seconds, 2),
            "epochs": self.epochs,
            "stopped_by": self.stopped_by,
            "time_cap_s": self.time_cap_s,
            "config": self.config,
            "search": self.search,
            "intervals": self.intervals,
            "windows": self.windows,
            "subset": self.subset,
        }


def seed_split(n: int, lookback: int) -> Split:
    """First 80% to train (its last tenth held out for early stopping), last 20% to test."""
    n_train = int(n * 0.8)
    n_fit = int(n_train * 0.9)
    return Split((0, n_fit), (n_fit - lookback, n_train), (n_train - lookback, n))


def run_accuracy(
    path: Path,
    protocol: str,
    horizons: list[int] | None = None,
    models: tuple[str, ...] = MODELS,
    split_override: str | None = None,
    rows_limit: int | None = None,
    train_cfg: TrainConfig | None = None,
    max_seconds: float | None = None,
    log: Callable[[str], None] = print,
    search_budget: SearchBudget | None = None,
    search_space: SearchSpace | None = None,
    folds: int = 1,
    select: str = "one-se",
    seeds: int = 0,
    peers: tuple[str, ...] = (),
    peer_windows: int = 500,
    peers_python: Path | None = None,
) -> list[BenchRow]:
    """Each network trains for its protocol's full schedule (epochs, patience), so a busy machine takes
    longer but scores the same; `max_seconds` is an explicit budget, reported in every row it applies to.
    With `search_budget`, the iTransformer's configuration is searched for on validation instead, over
    `folds` rolling origins (1: the validation split alone), the trial chosen by the `select` rule
    (`models.search.SELECT_RULES`); with `seeds`, the lowest trial and the default are trained again
    from that many seeds and scored on test (the row's `search.seed_repeats`). Seasonal naive repeats
    the training split's strongest cycle that fits the lookback (`models.search.strongest_cycle`); with
    none, it has no row, and the log says so.
    `peers` (`pipeline.tools.bench.peers.PEERS`) run in their own environment on `peer_windows` evenly
    spaced test windows, and every model is scored on those windows too (each row's `subset`)."""
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    frame = load_table(path)
    if rows_limit:
        frame = frame.head(rows_limit)
    if protocol == "seed":
        lookback, horizons, scale = 10, horizons or [1], False
    elif protocol == "standard":
        lookback, horizons, scale = 96, horizons or [96, 192, 336, 720], True
    else:
        raise ValueError(f"unknown protocol {protocol!r}; choose seed or standard")
    device = pick_device(train_cfg.device if train_cfg else "auto")
    step_s = _step_s(frame)
    rows: list[BenchRow] = []
    for h in horizons:
        scored: dict[str, tuple[BenchRow, torch.nn.Module]] = {}  # for the peers' subset
        split = (
            seed_split(frame.height, lookback)
            if protocol == "seed"
            else split_for(path, frame.height, lookback, split_override)
        )
        data: Prepared = prepare(
            frame, lookback, h, split, scale=scale, path_hint=path, with_time_features="transformer" in models
        )
        n_time = data.train.mark_views[0].shape[1] if data.train.mark_views else 0
        n = len(data.channels)
        for name, cls in NAIVE.items():
            if name in models:
                m = evaluate(cls(h), data.test)
                rows.append(BenchRow(name, h, m.mse, m.mae, 0.0, 0))
                scored[name] = (rows[-1], cls(h))
        raw_train = frame.select(data.channels).to_numpy()[: split.train[1]]
        train_rows = data.scaler.transform(raw_train)  # the standardized training rows: the search's and the peers'
        period = strongest_cycle(raw_train, cadence_of(step_s), lookback)
        if "seasonal" in models:
            if period is None:
                log(f"  seasonal naive: no cycle of the training split fits a lookback of {lookback}: no row")
            else:
                m = evaluate(SeasonalNaive(h, period), data.test)
                rows.append(BenchRow("seasonal", h, m.mse, m.mae, 0.0, 0, config={"period": period}))
                scored["seasonal"] = (rows[-1], SeasonalNaive(h, period))
                log(f"  seasonal naive (period {period}): MSE {m.mse:.4f} MAE {m.mae:.4f}")
        if search_budget is not None and "itransformer" in models:
            val_rows = split.val[1] - split.val[0] - lookback
            origins = rolling_origins([train_rows], val_rows, lookback, h, folds)
            row, chosen = _searched(
                data, lookback, h, search_budget, search_space, train_cfg, max_seconds, protocol, device, path, log,
                (train_rows, step_s), origins, select, seeds,
            )  # fmt: skip
            rows.append(row)
            scored["itransformer"] = (row, chosen)
        for name in models:
            if name not in NETWORKS or (name == "itransformer" and search_budget is not None):
                continue
            build = itransformer_for if name == "itransformer" else transformer_for
            model = build(lookback, h, n, protocol, n_time)
            cfg = replace(train_cfg or default_train_config(name, protocol), max_seconds=max_seconds)
            log(f"training {name} for horizon {h} on {path.name} ({len(data.train)} windows, {n} channels)")
            result = train(model, data.train, data.val, cfg, desc=f"{name} H={h}")
            m = evaluate(model, data.test, device)
            bands = interval_coverage(model, data, device)
            size = {k: v for k, v in model.cfg.to_dict().items() if k not in ("lookback", "horizon")}
            rows.append(
                BenchRow(
                    name,
                    h,
                    m.mse,
                    m.mae,
                    result.seconds,
                    result.epochs,
                    result.stopped_by,
                    max_seconds,
                    size,
                    intervals=bands,
                )  # fmt: skip
            )
            scored[name] = (rows[-1], model)
            log(
                f"  {name}: MSE {m.mse:.4f} MAE {m.mae:.4f} in {result.seconds:.0f} s, {result.epochs} epochs "
                f"(stopped by {result.stopped_by})"
            )
        if peers:
            found = _with_peers(peers, scored, data, train_rows, h, period, peer_windows, peers_python, device, log)
            rows.extend(found)
    return rows


def _with_peers(peers, scored, data: Prepared, train_rows, h, period, count, python, device, log) -> list[BenchRow]:
    """The peers' rows on `count` evenly spaced test windows, and each of our rows' score on the same ones."""
    from pipeline.tools.bench.peers import run_peers, scores, subset_indices

    index = subset_indices(len(data.test), count)
    x, y = data.test.batch(torch.as_tensor(index))
    log(f"peers {', '.join(peers)} for horizon {h}: {len(index)} of {len(data.test)} test windows, evenly spaced")
    for row, model in scored.values():
        started = time.perf_counter()
        m = evaluate(model, data.test, device, indices=index)
        seconds = time.perf_counter() - started
        row.subset = {"windows": len(index), "mse": m.mse, "mae": m.mae, "predict_seconds": seconds}
    found = run_peers(peers, train_rows, x.numpy(), h, period, python=python, log=log)
    out = []
    for name, peer in found.items():
        mse, mae = scores(peer.forecasts, y.numpy())
        out.append(
            BenchRow(
                f"peer:{name}",
                h,
                mse,
                mae,
                peer.train_seconds,
                0,
                config=peer.config,
                windows=len(index),
                subset={"windows": len(index), "mse": mse, "mae": mae, "predict_seconds": peer.predict_seconds},
            )  # fmt: skip
        )
        took = f"train {peer.train_seconds:.0f} s, predict {peer.predict_seconds:.0f} s"
        log(f"  {name}: MSE {mse:.4f} MAE {mae:.4f} ({took})")
    return out


def _searched(
    data,
    lookback,
    h,
    budget,
    space,
    train_cfg,
    max_seconds,
    protocol,
    device,
    path,
    log,
    cycle_from=None,
    origins=(),
    select="one-se",
    seeds=0,
) -> tuple[BenchRow, ITransformer]:
    """The iTransformer chosen on validation (over the rolling `origins` too), scored on the test split
    once. `max_seconds` caps each trial. The search starts from the paper's setting and, with a cycle
    on offer, CycleNet/Linear's recipe."""
    log(
        f"searching the iTransformer's configuration for horizon {h} on {path.name}: {budget.trials} trials, "
        f"{len(origins) + 1} rolling origin(s)"
    )
    base = replace(train_cfg or default_train_config("itransformer", protocol), max_seconds=max_seconds)
    space = space or SearchSpace()
    if space.cycle == (0,) and cycle_from is not None:  # the periods worth trying, from the train split alone
        space = space.with_cycles(*cycle_from)
        log(f"  cycle periods to try: {space.cycle[1:] or 'none'} (0: no cycle)")
    paper = itransformer_for(lookback, h, len(data.channels), protocol).cfg.to_dict()
    starts = [SearchSpace.point(paper, base)] if base.epochs in space.epochs else []  # the paper's, first
    if (recipe := space.cyclenet_linear()) is not None:
        starts.append(recipe)
    found = search(
        data.train, data.val, lookback, h, len(data.channels), budget, space=space, base=base, start_from=starts,
        folds=origins, log=log, select=select,
    )  # fmt: skip
    m = evaluate(found.model.to(device), data.test, device)
    bands = interval_coverage(found.model, data, device)
    size = {k: v for k, v in found.model.cfg.to_dict().items() if k not in ("lookback", "horizon")}
    log(
        f"  itransformer (searched): MSE {m.mse:.4f} MAE {m.mae:.4f}; chosen {found.best.params} "
        f"(val {found.best.val_loss:.5f}) after {len(found.trials)} trials in {found.wall_seconds:.0f} s; "
        f"{found.select}: {found.selection}"
    )
    row = BenchRow(
        "itransformer", h, m.mse, m.mae, found.best.seconds, found.best.epochs, "search", max_seconds, size,
        {**found.to_dict(), "trial_log": [t.to_dict() for t in found.trials]}, bands,
    )  # fmt: skip
    if seeds:
        row.search["seed_repeats"] = seed_repeats(found, data, lookback, h, base, seeds, device, log)
    return row, found.model


def seed_repeats(found, data: Prepared, lookback, h, base: TrainConfig, seeds: int, device, log) -> dict:
    """Both rules' candidates, the lowest trial and the default (trial 0), each trained again from
    `seeds` fresh initializations on the whole training split and scored on test: whether a trial's
    lead on validation survives its seed, and what each rule's choice is worth on average."""
    import statistics

    from models.search import configs_of, one_se

    default = found.trials[0] if found.trials and found.trials[0].state == "complete" else None
    candidates = {"lowest": found.lowest, "default": default}
    out: dict = {"seeds": [base.seed + k for k in range(1, seeds + 1)]}
    for label, record in candidates.items():
        if record is None:
            continue
        if label == "default" and record is found.lowest:
            out["default"] = out["lowest"]  # the default was the lowest: the same configuration
            continue
        scores = []
        for seed in out["seeds"]:
            net_cfg, fit = configs_of(record.params, lookback, h, len(data.channels), replace(base, seed=seed))
            torch.manual_seed(seed)
            model = ITransformer(net_cfg)
            train(model, data.train, data.val, replace(fit, progress=False))
            scores.append(evaluate(model.to(device), data.test, device).mse)
            log(f"  trial {record.number} ({label}), seed {seed}: test MSE {scores[-1]:.4f}")
        sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
        out[label] = {"trial": record.number, "mse": scores, "mean": statistics.fmean(scores), "sd": sd}
    if default is not None and found.lowest is not None:
        clearly, why = one_se(default, found.lowest) if default is not found.lowest else (False, "the same trial")
        out["one_se_keeps"] = "lowest" if clearly else "default"
        out["one_se_why"] = why
    return out


def interval_coverage(model, data: Prepared, device, levels=(0.8, 0.9, 0.95)) -> dict:
    """The intervals a version ships (the window-scaled score), calibrated on the validation split and
    measured on the test split, per level (`models.conformal.interval_report`: coverage, mean
    half-width in scaled units, interval score, coverage by the windows' volatility). Validation also
    chose the epoch (and, searched, the configuration), so this is a slightly optimistic calibration."""
    val = (abs_errors(model, data.val, device), window_std(data.val))
    test = (abs_errors(model, data.test, device), window_std(data.test))
    return interval_report(val, test, levels, WINDOW_POWER)


def _step_s(frame) -> float | None:
    """The median step of the data's time column in seconds (None without one)."""
    column = guess_time_column(frame)
    if column is None or frame.height < 2:
        return None
    times = frame[column]
    if times.dtype.is_temporal():
        return times.diff().dt.total_seconds().median()
    return None


def default_train_config(model: str, protocol: str) -> TrainConfig:
    if protocol == "seed":
        return TrainConfig(epochs=10, batch_size=32, lr=1e-3, schedule="cosine", patience=3)
    # the Time-Series-Library's schedule for both: 10 epochs, patience 3, lr 1e-4 halving each epoch
    return TrainConfig(epochs=10, batch_size=32, lr=1e-4, schedule="halve", patience=3)
