"""`make soak` / `sensorcast bench soak`: minutes at a steady rate against the service with the demo's
model size, per Kafka client; then a churn of distinct entities against the idle-entity TTL.

Steady phase: the service's RSS and consumer lag sampled every 10 s, p50/p99 latency every minute
(from each reading's due time to its forecast's arrival, as `bench latency` measures it).
Churn phase: readings of N distinct entities, one each, with a short TTL; the service's RSS before,
at its peak and after, beside what the live windows alone would take.
Not part of `make test`: it takes minutes by design.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from pipeline.settings import Settings
from pipeline.tools.bench.in_memory import CHANNELS, LOOKBACK, bench_checkpoint
from pipeline.tools.bench.report import machine, percentiles
from pipeline.tools.bench.rig import ArrivalStamper, Stream
from pipeline.tools.child import ServeProcess
from pipeline.tools.stack import free_ports

GROWTH_BOUND_MB = 50.0  # the stated bound: RSS growth after the first minute's warm-up


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def scraped_lag(port: int) -> int | None:
    """The service's own gauge, summed over its partitions."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    rows = [line for line in text.splitlines() if line.startswith("sensorcast_consumer_lag{")]
    return int(sum(float(r.rsplit(" ", 1)[1]) for r in rows)) if rows else None


def _service(settings: Settings, client: str, folder: Path, **env: str) -> tuple[ServeProcess, Settings, int]:
    from pipeline.kafka import ensure_topics

    tag = uuid.uuid4().hex[:6]
    s = settings.model_copy(
        update={f"{t}_topic": f"soak-{tag}.{t}" for t in ("readings", "forecasts", "dlq", "models")}
        | {"consumer_group": f"soak-{tag}", "kafka_client": client}
    )
    ensure_topics(s)
    port = free_ports(1)[0]
    child_env = {**s.as_env(), "SENSORCAST_METRICS_PORT": str(port), **env}
    checkpoint = bench_checkpoint(folder / f"model-{tag}")
    proc = ServeProcess(str(checkpoint), child_env, folder / f"service-{tag}.log").start().wait_ready(180)
    return proc, s, port


def steady(
    settings: Settings, client: str, minutes: float, rate: int, entities: int, log: Callable[[str], None]
) -> dict:
    """`minutes` at `rate` readings/s: RSS and lag every 10 s, p50/p99 every minute."""
    with tempfile.TemporaryDirectory(prefix="sensorcast-soak-") as tmp:
        proc, s, port = _service(settings, client, Path(tmp))
        sink, stream = ArrivalStamper(s), Stream(s, entities)
        arrived: dict[str, float] = {}
        samples, minutes_rows = [], []
        try:
            stream.send(entities * LOOKBACK)  # warm every window
            gc.collect()
            gc.freeze()
            started = time.monotonic()
            minute_ids: list[str] = []
            for tick in range(int(minutes * 6)):
                stream.send(rate * 10, rate)
                minute_ids += stream.last
                for ident, t in sink.take():
                    arrived.setdefault(ident, t)
                samples.append(
                    {
                        "t_s": round(time.monotonic() - started),
                        "rss_mb": round(rss_mb(proc.proc.pid), 1),
                        "lag": scraped_lag(port),
                    }
                )
                if (tick + 1) % 6 == 0:
                    time.sleep(1.0)  # the minute's last readings land
                    for ident, t in sink.take():
                        arrived.setdefault(ident, t)
                    lat = [(arrived[i] - stream.sent[i]) * 1000 for i in minute_ids if i in arrived]
                    row = {"minute": (tick + 1) // 6, **percentiles(lat), "readings": len(minute_ids)}
                    row["forecasts"] = len(lat)
                    minutes_rows.append(row)
                    log(
                        f"  {client} minute {row['minute']}: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
                        f"RSS {samples[-1]['rss_mb']} MB, lag {samples[-1]['lag']}"
                    )
                    minute_ids = []
        finally:
            stream.close()
            sink.close()
            proc.stop(grace_s=30)
    after_warmup = [x["rss_mb"] for x in samples[6:]] or [x["rss_mb"] for x in samples]
    growth = round(max(after_warmup) - after_warmup[0], 1)
    lags = [x["lag"] for x in samples if x["lag"] is not None]
    half = len(lags) // 2
    return {
        "client": client,
        "rate": rate,
        "entities": entities,
        "minutes": minutes,
        "samples": samples,
        "per_minute": minutes_rows,
        "rss_growth_after_warmup_mb": growth,
        "rss_growth_bound_mb": GROWTH_BOUND_MB,
        "rss_within_bound": growth <= GROWTH_BOUND_MB,
        "lag_first_half_max": max(lags[:half], default=None),
        "lag_second_half_max": max(lags[half:], default=None),
        "lag_not_growing": bool(lags) and max(lags[half:]) <= max(max(lags[:half], default=0), rate),
        "forecasts_missing": sum(r["readings"] - r["forecasts"] for r in minutes_rows),
    }


def churn(settings: Settings, client: str, entities: int, ttl_s: float, rate: int, log: Callable[[str], None]) -> dict:
    """One reading each from `entities` distinct entities at `rate`/s, with windows evicted after `ttl_s`."""
    from pipeline.kafka.confluent import make_confluent_producer
    from pipeline.messages import encode_reading

    window_bytes = 2 * LOOKBACK * CHANNELS * 4 + 5 * 8  # pipeline/windows.py: a (2L, N) float32 row + 5 scalars
    with tempfile.TemporaryDirectory(prefix="sensorcast-churn-") as tmp:
        proc, s, port = _service(settings, client, Path(tmp), SENSORCAST_ENTITY_TTL_S=str(ttl_s))
        pid = proc.proc.pid
        before = rss_mb(pid)
        producer = make_confluent_producer(s)
        values = {f"ch{j}": float(j) for j in range(CHANNELS)}
        t0, peak, started = 1_800_000_000_000, before, time.perf_counter()
        try:
            for i in range(entities):
                due = started + i / rate
                if (lead := due - time.perf_counter()) > 0:
                    time.sleep(lead)
                key = f"churn-{i:07d}"
                while True:
                    try:
                        producer.produce(s.readings_topic, encode_reading(key, t0 + i, values), key.encode())
                        break
                    except BufferError:
                        producer.poll(0.01)
                if i % 1000 == 0:
                    producer.poll(0)
                    peak = max(peak, rss_mb(pid))
            producer.flush(30)
            deadline = time.monotonic() + 60
            while (scraped_lag(port) or 0) > 0 and time.monotonic() < deadline:
                peak = max(peak, rss_mb(pid))
                time.sleep(1.0)
            time.sleep(ttl_s + 2)
            after = rss_mb(pid)
        finally:
            proc.stop(grace_s=30)
    alive = min(entities, int(rate * ttl_s))
    row = {
        "client": client,
        "entities": entities,
        "ttl_s": ttl_s,
        "rate": rate,
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_after_mb": round(after, 1),
        "windows_alive_at_most": alive,
        "windows_alive_mb": round(alive * window_bytes / 2**20, 1),
        "windows_without_ttl_mb": round(entities * window_bytes / 2**20, 1),
    }
    log(
        f"  churn on {client}: {entities:,} entities, TTL {ttl_s} s: RSS {row['rss_before_mb']} → peak "
        f"{row['rss_peak_mb']} → {row['rss_after_mb']} MB (live windows at most {row['windows_alive_mb']} MB; "
        f"{row['windows_without_ttl_mb']} MB if never evicted)"
    )
    return row


def run(
    settings: Settings,
    clients: tuple[str, ...],
    minutes: float = 5.0,
    rate: int = 1000,
    entities: int = 100,
    churn_entities: int = 200_000,
    churn_ttl_s: float = 10.0,
    churn_rate: int = 3000,
    log: Callable[[str], None] = print,
) -> dict:
    doc: dict = {"machine": machine(), "steady": {}, "churn": {}}
    for client in clients:
        log(f"steady: {rate} readings/s over {entities} entities for {minutes:g} min on {client}")
        doc["steady"][client] = steady(settings, client, minutes, rate, entities, log)
    for client in clients if churn_entities else ():
        doc["churn"][client] = churn(settings, client, churn_entities, churn_ttl_s, churn_rate, log)
    return doc


def summary_rows(doc: dict) -> list[list[str]]:
    rows = []
    for client, r in doc["steady"].items():
        p50 = statistics.median([m["p50_ms"] for m in r["per_minute"] if m["p50_ms"] is not None] or [0])
        p99 = max([m["p99_ms"] for m in r["per_minute"] if m["p99_ms"] is not None] or [0])
        rows.append(
            [
                client,
                f"{r['rate']}/s × {r['minutes']:g} min",
                f"{p50:.1f} / {p99:.1f}",
                f"{r['rss_growth_after_warmup_mb']} MB (bound {r['rss_growth_bound_mb']:g})",
                f"{r['lag_first_half_max']} → {r['lag_second_half_max']}",
                str(r["forecasts_missing"]),
            ]
        )
    return rows
