"""`sensorcast bench ...`: the benchmarks, each writing JSON results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from pipeline.settings import Settings
from pipeline.tools.cli.common import (
    a_broker,
    bench_app,
    console,
    fail,
    setup_logging,
    write_json,
)


@bench_app.command("intervals")
def bench_intervals(
    dataset: str = typer.Option("etth1", help="etth1, exchange, weather or a PATH"),
    shift_sigma: float = typer.Option(2.0, help="the level shift from the test split's middle on, in training σ"),
    gamma: float = typer.Option(0.05, help="the adaptive method's step size"),
    window: int = typer.Option(500, help="the rolling method's window of outcomes"),
    epochs: int = typer.Option(10, help="training epochs of the iTransformer"),
    horizon: int = typer.Option(24),
    entity: Optional[str] = typer.Option(None, help="of the weather, the airport whose hours make the stream"),
    per_entity: bool = typer.Option(
        False, "--per-entity", help="instead: the weather's airports, one shifted; adaptation shared or per airport"
    ),
    shared_data: Optional[Path] = typer.Option(None, envvar="SENSORCAST_SHARED_DATA"),
    plot: Path = typer.Option(Path("bench-results/interval-coverage.png"), help="the coverage-over-time plot"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write results here"),
) -> None:
    """Static, rolling and adaptive conformal intervals side by side on one replayed stream with a level shift."""
    from models.data import DataError
    from models.sources import resolve_dataset, shared_data_dir
    from pipeline.tools.bench.intervals import run_entity_state, run_intervals

    if per_entity:
        try:
            doc = run_entity_state(
                resolve_dataset("weather" if dataset == "etth1" else dataset, Path(".")), horizon=horizon,
                shift_sigma=shift_sigma, gamma=gamma, epochs=epochs, log=lambda m: console.print(m),
            )  # fmt: skip
        except DataError as e:
            fail(str(e))
        table = Table(title=f"adaptation state: {doc['shifted']} shifted by {shift_sigma:g} σ, level {doc['level']}")
        for col in ("state", "floats", "coverage", *(f"{e}" for e in doc["entities"]), "first week after, each",
                    "interval score"):  # fmt: skip
            table.add_column(col)
        for name in ("shared", "per_entity"):
            r = doc[name]
            after = " / ".join(f"{v:.3f}" for v in r["first_week_after_shift_by_entity"].values())
            by = (f"{v:.3f}" for v in r["coverage_by_entity"].values())
            table.add_row(
                name, str(r["state_floats"]), f"{r['coverage']:.3f}", *by, after, f"{r['interval_score']:.3f}"
            )
        Console().print(table)
        if json_path:
            from pipeline.tools.bench.report import machine

            write_json(json_path, {"machine": machine(), **doc})
        return
    try:
        path = resolve_dataset(dataset, shared_data or shared_data_dir())
        doc = run_intervals(
            path, horizon=horizon, shift_sigma=shift_sigma, gamma=gamma, window=window, epochs=epochs, plot=plot,
            log=lambda m: console.print(m), entity=entity,
        )  # fmt: skip
    except DataError as e:
        fail(str(e))
    table = Table(
        title=f"intervals on {path.name}, a {shift_sigma:g} σ level shift at window {doc['shift_onset_window']}"
    )
    for col in ("method", "level", "coverage", "before", "after", "first week after", "back within ±5", "half-width"):
        table.add_column(col)
    for method, by_level in doc["results"].items():
        for level, r in by_level.items():
            back = r["windows_to_within_5_points"]
            cells = (
                r["coverage"],
                r["coverage_before_shift"],
                r["coverage_after_shift"],
                r["coverage_first_week_after_shift"],
            )
            table.add_row(
                method, level, *(f"{c:.3f}" for c in cells), "never" if back is None else f"{back} windows",
                f"{r['mean_half_width']:.3f}",
            )  # fmt: skip
    Console().print(table)
    scores = Table(title="which score: static split-conformal on validation, on the unshifted test split")
    for col in ("score", "level", "coverage", "half-width", "interval score (lower wins)", "calm / middle / volatile"):
        scores.add_column(col)
    for name, by_level in doc["scores"].items():
        for level, r in by_level.items():
            thirds = " / ".join(f"{c:.3f}" for c in r["coverage_calm_middle_volatile"])
            cells = (f"{r['coverage']:.3f}", f"{r['mean_half_width']:.3f}", f"{r['interval_score']:.3f}", thirds)
            scores.add_row(name, level, *cells)
    Console().print(scores)
    console.print(f"coverage plot: {doc['plot']}")
    if json_path:
        from pipeline.tools.bench.report import machine

        write_json(json_path, {"machine": machine(), **doc})


@bench_app.command("accuracy")
def bench_accuracy(
    protocol: str = typer.Option("standard", help="seed (L=10, H=1, 80/20, raw) or standard (TSLib: L=96, scaled)"),
    dataset: str = typer.Option("exchange", help="exchange, etth1, weather or a PATH"),
    horizons: Optional[str] = typer.Option(
        None, help="comma-separated, e.g. 96,192 (standard default: 96,192,336,720)"
    ),
    split: Optional[str] = typer.Option(None, help="'ett' or ratios like 7/1/2 (default by file name)"),
    rows: Optional[int] = typer.Option(None, help="use only the first ROWS rows (quick checks)"),
    epochs: Optional[int] = typer.Option(None, help="override the protocol's epochs (quick checks)"),
    shared_data: Optional[Path] = typer.Option(
        None,
        envvar="SENSORCAST_SHARED_DATA",
        help="folder of exchange_rate.txt and ETTh1.csv (default: ../shared/data)",
    ),
    max_seconds: Optional[float] = typer.Option(
        None, help="a training budget per network (default: none, the full schedule); reported in the results"
    ),
    models: Optional[str] = typer.Option(
        None,
        help="comma-separated: itransformer, transformer, persistence, mean, seasonal "
        "(default: all on a GPU; all but the Transformer, about 90 min of CPU on ETTh1, on a CPU)",
    ),
    trials: int = typer.Option(
        0, help="choose the iTransformer's configuration on validation with this many Optuna trials (0: the paper's)"
    ),
    search_seconds: Optional[float] = typer.Option(None, help="the search's wall-time budget (checked between trials)"),
    folds: int = typer.Option(
        3,
        min=1,
        help="rolling origins a searched configuration is judged on: the validation split and the "
        "FOLDS-1 blocks before it (1: the validation split alone)",
    ),
    max_forward_ms: Optional[float] = typer.Option(
        None, help="a searched configuration whose forward pass at batch 256 takes longer is not eligible"
    ),
    select: str = typer.Option(
        "one-se",
        help="how the search picks: one-se keeps the paper's setting unless a trial beats it by more than one "
        "standard error over the rolling origins; best takes the lowest validation loss",
    ),
    seeds: int = typer.Option(
        0, min=0, help="with --trials: train the lowest trial and the default again from SEEDS seeds each, on test"
    ),
    peers: Optional[str] = typer.Option(
        None,
        help="also what a user would install instead, from .venv-peers (make peers-env): statsforecast (AutoETS), "
        "mlforecast (LightGBM on lags), neuralforecast (its iTransformer at its defaults), comma-separated",
    ),
    peer_windows: int = typer.Option(
        500, min=1, help="test windows, evenly spaced, that the peers and every model are scored on alike"
    ),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write results here"),
) -> None:
    """Train and test the networks beside the naive baselines (and, asked, the peers); print a table, write JSON."""
    import torch

    from models.data import DataError
    from models.device import pick_device
    from models.search import SELECT_RULES, NothingEligible, SearchBudget, SearchSpace
    from models.sources import resolve_dataset, shared_data_dir
    from pipeline.tools.bench.accuracy import MODELS, default_models, default_train_config, run_accuracy
    from pipeline.tools.bench.peers import PEERS, PeersUnavailable, peers_python

    shared_data = shared_data or shared_data_dir()
    if protocol not in {"seed", "standard"}:
        fail(f"unknown protocol {protocol!r}; choose seed or standard")
    if select not in SELECT_RULES:
        fail(f"unknown selection rule {select!r}; choose {' or '.join(SELECT_RULES)}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if models and (unknown := sorted({m.strip() for m in models.split(",")} - set(MODELS))):
        fail(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    chosen_peers = tuple(p.strip() for p in peers.split(",") if p.strip()) if peers else ()
    if unknown := sorted(set(chosen_peers) - set(PEERS)):
        fail(f"unknown peers {unknown}; choose from {', '.join(PEERS)}")
    try:
        if chosen_peers:
            peers_python()  # before hours of training, not after
        path = resolve_dataset(dataset, shared_data)
        hs = [int(h) for h in horizons.split(",")] if horizons else None
        cfg = None
        if epochs is not None:
            cfg = default_train_config("itransformer", protocol)
            cfg.epochs = epochs
        chosen = tuple(m.strip() for m in models.split(",")) if models else default_models(pick_device("auto").type)
        if not models and "transformer" not in chosen:
            console.print("[yellow]note:[/] no GPU: the Transformer at its published size runs only when named "
                          "(--models itransformer,transformer,persistence,mean)")  # fmt: skip
        budget = SearchBudget(trials, search_seconds, max_forward_ms) if trials > 0 else None
        space = SearchSpace(epochs=(epochs,)) if trials > 0 and epochs is not None else None
        rows_out = run_accuracy(
            path,
            protocol,
            hs,
            models=chosen,
            split_override=split,
            rows_limit=rows,
            train_cfg=cfg,
            max_seconds=max_seconds,
            log=lambda m: console.print(m),
            search_budget=budget,
            search_space=space,
            folds=folds,
            select=select,
            seeds=seeds,
            peers=chosen_peers,
            peer_windows=peer_windows,
        )
    except (DataError, NothingEligible, PeersUnavailable) as e:
        fail(str(e))
    table = Table(title=f"accuracy, protocol {protocol}, {path.name} (test split)")
    subset = next((r.subset["windows"] for r in rows_out if r.subset), None)
    on_subset = (f"MSE, {subset} windows", f"MAE, {subset} windows", "predict s") if subset else ()
    for col in ("model", "horizon", "MSE", "MAE", "train s", "epochs", "stopped by", *on_subset):
        table.add_column(col)
    for r in rows_out:
        stopped = r.stopped_by or ""
        if r.stopped_by == "time_cap":
            stopped = f"time cap {r.time_cap_s:.0f} s"
        if r.search is not None:
            found = r.search
            trial = f"trial {found['chosen_trial']} of {found['trials']}"
            stopped = f"{found['select']}: {trial} in {found['wall_seconds']:.0f} s"
        if r.model == "seasonal":
            stopped = f"period {r.config['period']}"
        if r.model.startswith("peer:"):
            stopped = r.config.get("model", "")
        full = ("", "") if r.windows else (f"{r.mse:.6g}", f"{r.mae:.6g}")
        cells = (*full, f"{r.train_seconds:.1f}", str(r.epochs), stopped)
        if subset:
            s = r.subset or {}
            cells += tuple(f"{s[k]:.6g}" if k in s else "" for k in ("mse", "mae")) + (
                f"{s['predict_seconds']:.1f}" if s else "",
            )
        table.add_row(r.model, str(r.horizon), *cells)
    Console().print(table)
    notes = []
    if protocol == "seed":
        by = {(r.model, r.horizon): r for r in rows_out}
        for h in sorted({r.horizon for r in rows_out}):
            p, it = by.get(("persistence", h)), by.get(("itransformer", h))
            if p and it:
                notes.append(
                    f"seed protocol, H={h}: persistence MSE {p.mse:.3g} vs iTransformer {it.mse:.3g} "
                    f"(ratio {it.mse / p.mse:.3f}). On raw daily exchange rates one step ahead, repeating the last "
                    "value is very hard to beat; this protocol says little about the networks."
                )
    for n in notes:
        console.print(f"[yellow]note:[/] {n}")
    if json_path:
        from pipeline.tools.bench.report import machine

        doc = {
            "machine": machine(),
            "device": str(pick_device("auto")),
            "protocol": protocol,
            "dataset": str(path),
            "time_cap_s": max_seconds,
            "models": list(chosen),
            "peers": list(chosen_peers),
            "peer_windows": peer_windows if chosen_peers else None,
            "results": [r.to_json() for r in rows_out],
            "notes": notes,
        }
        write_json(json_path, doc)


@bench_app.command("latency")
def bench_latency(
    json_path: Optional[Path] = typer.Option(None, "--json", help="write results here"),
    in_memory: bool = typer.Option(False, "--in-memory", help="no Kafka: the core alone (CPU, and CUDA when present)"),
    rate: int = typer.Option(1000, help="(a) readings per second"),
    entities: int = typer.Option(100, help="(a) entities in the stream"),
    duration: float = typer.Option(30.0, help="(a) seconds at that rate"),
    ladder: str = typer.Option("2000,4000,6000,8000,10000,12000,16000,20000,25000,30000", help="(b) rates to climb"),
    step: float = typer.Option(8.0, help="(b) seconds per rung"),
    drain: int = typer.Option(20000, help="(d) backlog size for batched vs naive"),
    clients: str = typer.Option("kafka-python,confluent", help="Kafka clients to measure, side by side"),
    guarantees: str = typer.Option(
        "at-least-once", help="processing guarantees to measure per client, side by side: at-least-once,exactly-once"
    ),
    security: str = typer.Option(
        "PLAINTEXT", help="PLAINTEXT,SASL_SSL: also the service on a SASL_SSL broker of its own, side by side"
    ),
    window_states: str = typer.Option(
        "changelog", help="changelog,replay: also the service writing no window changelog, side by side (its cost)"
    ),
) -> None:
    """End-to-end latency, sustained rate, inference per batch size, batched vs naive; per Kafka
    client (and processing guarantee), beside the same loop with no model (the floor)."""
    from pipeline.kafka import KafkaUnavailable
    from pipeline.tools.bench import latency as bl

    settings = Settings.load()
    if not in_memory:
        a_broker(settings)
    try:
        doc = bl.run(
            settings,
            in_memory_only=in_memory,
            clients=tuple(c.strip() for c in clients.split(",") if c.strip()),
            guarantees=tuple(g.strip() for g in guarantees.split(",") if g.strip()),
            securities=tuple(x.strip().upper() for x in security.split(",") if x.strip()),
            window_states=tuple(w.strip() for w in window_states.split(",") if w.strip()),
            log=lambda m: console.print(m),
            **(
                {}
                if in_memory
                else dict(
                    rate=rate,
                    entities=entities,
                    duration_s=duration,
                    ladder=tuple(int(r) for r in ladder.split(",")),
                    step_s=step,
                    drain_readings=drain,
                )
            ),
        )
    except (KafkaUnavailable, RuntimeError) as e:
        fail(str(e))
    table = Table(title=f"inference only, {doc['device']}")
    for col in ("batch", "p50 ms", "p99 ms"):
        table.add_column(col)
    for r in doc["inference"]:
        table.add_row(str(r["batch"]), f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}")
    Console().print(table)
    if doc.get("clients"):
        table = Table(title=f"against Kafka ({doc['machine']['cpu_model']}, {doc['machine']['cpus']} cores)")
        for col in ("client", "row", f"p50 ms @{rate}/s", "p99 ms", "sustained /s", "drain /s", "naive /s"):
            table.add_column(col)
        for client, r in doc["clients"].items():
            f = r["floor"]
            table.add_row(client, "no model (floor)", *(str(f["e2e"][k]) for k in ("p50_ms", "p99_ms")),
                          str(f["sustained_readings_per_s"]), "", "")  # fmt: skip
            table.add_row(client, f"service, {r['guarantee']}, windows by {r['window_state']}",
                          *(str(r["e2e"][k]) for k in ("p50_ms", "p99_ms")),
                          str(r["sustained_readings_per_s"]), str(r.get("drain_readings_per_s") or ""),
                          str(r.get("naive_readings_per_s", "")))  # fmt: skip
            for g, o in r.items():
                if (g in ("at-least-once", "exactly-once", "sasl_ssl") or g.startswith("window_state=")) and isinstance(
                    o, dict
                ):
                    name = f"service, {r['guarantee']}, SASL_SSL" if g == "sasl_ssl" else f"service, {g}"
                    table.add_row(client, name, *(str(o["e2e"][k]) for k in ("p50_ms", "p99_ms")),
                                  str(o["sustained_readings_per_s"]), str(o.get("drain_readings_per_s") or ""),
                                  str(o.get("naive_readings_per_s", "")))  # fmt: skip
        Console().print(table)
    write_json(json_path, doc)
    if json_path is None:
        print(json.dumps(doc, indent=2))


@bench_app.command("api")
def bench_api(
    json_path: Optional[Path] = typer.Option(None, "--json", help="write results here"),
    rate: int = typer.Option(1000, help="readings per second"),
    duration: float = typer.Option(30.0, help="seconds per phase"),
    queries: float = typer.Option(20.0, help="HTTP queries per second while the API runs"),
    kafka_client: str = typer.Option("kafka-python", "--kafka-client", help="the service's Kafka client"),
) -> None:
    """The service's latency without, then with, `sensorcast api` beside it answering queries."""
    from pipeline.kafka import KafkaUnavailable
    from pipeline.tools.bench import latency as bl
    from pipeline.tools.bench.report import machine

    settings = Settings.load()
    a_broker(settings)
    try:
        doc = bl.api_effect(settings, kafka_client, rate, duration_s=duration, queries_per_s=queries,
                            log=lambda m: console.print(m))  # fmt: skip
    except (KafkaUnavailable, RuntimeError) as e:
        fail(str(e))
    doc["machine"] = machine()
    console.print(f"p99 with the API / without: {doc['p99_ratio']} ({doc['machine']['cpu_model']})")
    write_json(json_path, doc)


@bench_app.command("soak")
def bench_soak(
    json_path: Optional[Path] = typer.Option(None, "--json", help="write results here"),
    minutes: float = typer.Option(5.0, help="minutes at a steady rate, per client"),
    rate: int = typer.Option(1000, help="readings per second in the steady phase"),
    entities: int = typer.Option(100, help="entities in the steady phase"),
    churn_entities: int = typer.Option(200_000, help="distinct entities in the churn phase (0: skip it)"),
    churn_ttl: float = typer.Option(10.0, help="the idle-entity TTL in the churn phase, seconds"),
    churn_rate: int = typer.Option(3000, help="readings per second in the churn phase"),
    clients: str = typer.Option("kafka-python,confluent", help="Kafka clients to soak, one after the other"),
) -> None:
    """Minutes at a steady rate (RSS and lag every 10 s, p50/p99 every minute), then a churn of
    distinct entities against the TTL; a table and JSON. Not part of `make test`."""
    from pipeline.kafka import KafkaUnavailable
    from pipeline.tools.bench import soak as bench_soak

    settings = Settings.load()
    a_broker(settings)
    chosen = tuple(c.strip() for c in clients.split(",") if c.strip())
    try:
        doc = bench_soak.run(
            settings, chosen, minutes, rate, entities, churn_entities, churn_ttl, churn_rate,
            log=lambda m: console.print(m),
        )  # fmt: skip
    except (KafkaUnavailable, RuntimeError) as e:
        fail(str(e))
    table = Table(title=f"soak ({doc['machine']['cpu_model']}, {doc['machine']['cpus']} cores)")
    for col in ("client", "load", "p50 / worst p99 ms", "RSS growth after warm-up", "lag 1st → 2nd half", "missing"):
        table.add_column(col)
    for row in bench_soak.summary_rows(doc):
        table.add_row(*row)
    Console().print(table)
    write_json(json_path, doc)


@bench_app.command("relay")
def bench_relay(
    kafka_client: Optional[str] = typer.Option(None, "--kafka-client", help="kafka-python or confluent"),
    group: Optional[str] = typer.Option(None, help="consumer group"),
) -> None:
    """The service's loop with no model (the Kafka floor the latency benchmark measures)."""
    from pipeline.tools.relay import relay

    settings = Settings.load(kafka_client=kafka_client, consumer_group=group)
    setup_logging(True, settings.kafka_log_level)
    raise typer.Exit(0 if relay(settings) >= 0 else 1)


@bench_app.command("retrain")
def bench_retrain(
    readings: int = typer.Option(1_000_000, help="(a) readings to produce and pull"),
    epochs: int = typer.Option(3, help="(b) epochs for each model of the warm-start comparison"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write results here"),
) -> None:
    """Window pull throughput (Kafka → frame) and warm start vs from scratch on one window."""
    from pipeline.tools.bench import retrain as br

    settings = Settings.load()
    a_broker(settings)
    doc = br.run(settings, readings=readings, epochs=epochs, log=lambda m: console.print(m))
    write_json(json_path, doc)
    if json_path is None:
        print(json.dumps(doc, indent=2))


@bench_app.command("restart")
def bench_restart(
    entities: str = typer.Option("1000,10000,100000", help="fleet sizes, each restarted on each path"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write results here"),
) -> None:
    """What a restart costs at fleet size: the input replayed against the window changelog (time to the
    first forecast, to every window whole, records read, the service's peak RSS)."""
    from pipeline.kafka import KafkaUnavailable
    from pipeline.tools.bench import restart as br

    settings = Settings.load()
    a_broker(settings)
    try:
        doc = br.run(settings, tuple(int(n) for n in entities.split(",") if n.strip()), log=lambda m: console.print(m))
    except (KafkaUnavailable, RuntimeError) as e:
        fail(str(e))
    write_json(json_path, doc)
    if json_path is None:
        print(json.dumps(doc, indent=2))


@bench_app.command("lifecycle")
def bench_lifecycle(
    days: int = typer.Option(30, help="days of operation, in accelerated time (the incidents' days scale with it)"),
    paced: bool = typer.Option(False, "--paced", help="each day hour by hour, the monitor's calibration between"),
    clients: str = typer.Option("kafka-python,confluent", help="a service per Kafka client, side by side"),
    state_dir: Optional[Path] = typer.Option(
        None, help="a private stack's state folder (default: a new temporary one, on free ports)"
    ),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the report here"),
) -> None:
    """A month of operation through the real stack: a search on day 1, a scheduled retrain each day,
    messy readings, SIGKILLed services, a level shift, MLflow down across a promotion, a horizon change
    and junk on every internal topic; the report says what each retrain did and what the services served."""
    import tempfile

    from pipeline.tools.bench.lifecycle import run_lifecycle
    from pipeline.tools.bench.month import Plan, print_report
    from pipeline.tools.stack import private_settings

    settings = private_settings(state_dir or Path(tempfile.mkdtemp(prefix="sensorcast-lifecycle-")))
    plan = Plan(clients=tuple(c.strip() for c in clients.split(",") if c.strip()), paced=paced).over(days)
    doc = run_lifecycle(settings, plan, log=lambda m: console.print(m))
    print_report(doc, log=lambda m: console.print(m))
    write_json(json_path, doc)
