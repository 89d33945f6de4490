"""The forecasting service against the real broker: counts, dead letters, hot swap, SIGTERM."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pipeline.kafka import TopicCollector, ensure_topics
from pipeline.messages import encode_reading
from pipeline.serve import serve
from pipeline.settings import Settings
from pipeline.tools.child import ServeProcess

pytestmark = pytest.mark.integration

CH = ["temp", "pressure"]
L, H = 8, 4
HOUR = 3_600_000


def readings(entities: int, steps: range) -> list[tuple[bytes, bytes]]:
    return [
        (f"e{e}".encode(), encode_reading(f"e{e}", s * HOUR, {"temp": 20.0 + s % 7 + e, "pressure": 1.0 + 0.1 * e}))
        for s in steps
        for e in range(entities)
    ]


@pytest.fixture
def service_settings(kafka_settings: Settings, kafka_client: str, tiny_checkpoint) -> Settings:
    """The service on a tiny model, once per Kafka client."""
    s = kafka_settings.model_copy(
        update={
            "model_uri": str(tiny_checkpoint()),
            "metrics_port": 0,
            "topic_partitions": 3,
            "kafka_client": kafka_client,
        }
    )
    ensure_topics(s)
    return s


def start_service(settings: Settings) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(settings, stop), daemon=True)
    thread.start()
    return thread, stop


def test_every_valid_reading_yields_exactly_one_forecast(service_settings: Settings, produce, collect) -> None:
    forecasts = collect(service_settings, service_settings.forecasts_topic)
    thread, stop = start_service(service_settings)
    try:
        produce(service_settings, readings(6, range(40)))
        expected = 6 * (40 - (L - 1))
        docs = forecasts.wait_for(expected)
        time.sleep(1.5)  # anything extra would arrive now
    finally:
        stop.set()
        thread.join(timeout=30)
    keys = [(d["entity"], d["ts"]) for d in forecasts.docs]
    assert len(keys) == expected == len(set(keys))
    assert {d["entity"] for d in docs} == {f"e{e}" for e in range(6)}
    assert all(d["horizon"] == H and set(d["forecast"]) == set(CH) and len(d["forecast"]["temp"]) == H for d in docs)
    assert not thread.is_alive()


BIG = "9" * 400
BAD_PAYLOADS: list[
    tuple[bytes | None, str]
] = [  # every refusal reason the wire can carry, and the crashes of issue #12
    (b"not json at all", "not_json"),
    (b"", "empty"),
    (None, "empty"),  # a tombstone
    (b"\xff\xfe\x00binary", "not_json"),
    (b"[" * 1100, "not_json"),  # crashed the service: RecursionError
    (b"[1, 2, 3]", "not_an_object"),
    (b'{"ts": 1, "values": {"temp": 1, "pressure": 1}}', "bad_entity"),
    (b'{"entity": "\\ud800", "ts": 1, "values": {"temp": 1, "pressure": 1}}', "bad_entity"),  # a lone surrogate
    (b'{"entity": "e0", "ts": "whenever", "values": {"temp": 1, "pressure": 1}}', "bad_timestamp"),
    (
        f'{{"entity": "e0", "ts": {BIG}, "values": {{"temp": 1, "pressure": 1}}}}'.encode(),
        "bad_timestamp",
    ),  # crashed: OverflowError
    (b'{"entity": "e0", "ts": 1, "values": {"temp": "warm", "pressure": 1}}', "bad_values"),
    (b'{"entity": "e0", "ts": 1, "values": {"temp": NaN, "pressure": 1}}', "non_finite"),
    (b'{"entity": "e0", "ts": 1, "values": {"temp": Infinity, "pressure": 1}}', "non_finite"),
    (b'{"entity": "e0", "ts": 1, "values": {"temp": -Infinity, "pressure": 1}}', "non_finite"),
    (
        f'{{"entity": "e0", "ts": 1, "values": {{"temp": {BIG}, "pressure": 1}}}}'.encode(),
        "out_of_range",
    ),  # crashed: OverflowError
    (
        b'{"entity": "e0", "ts": 1, "values": {"temp": 3e38, "pressure": 3e38}}',
        "out_of_range",
    ),  # finite, beyond the model
    (b'{"entity": "e0", "ts": 1, "values": {}}', "missing_channels"),
    (b'{"entity": "e0", "ts": 1, "values": {"temp": 1, "pressure": 1, "rpm": 5}}', "unknown_channels"),
    (b'{"entity": "e0", "ts": 1, "values": {"temp": 1, "pressure": 1}, "pad": "' + b"x" * 70_000 + b'"}', "oversized"),
]


def test_bad_input_lands_in_the_dead_letter_topic_while_valid_readings_flow(
    service_settings: Settings, produce, collect
) -> None:
    good = readings(3, range(20))
    going_back = [
        (b"e1", encode_reading("e1", 5 * HOUR, {"temp": 1.0, "pressure": 1.0})),  # late
        (b"e1", encode_reading("e1", 19 * HOUR, {"temp": 1.0, "pressure": 1.0})),
    ]  # duplicate
    bad = [(b"e0", payload) for payload, _ in BAD_PAYLOADS]
    stream = good[:30] + bad[::2] + good[30:45] + bad[1::2] + good[45:] + going_back  # interleaved with valid readings
    forecasts = collect(service_settings, service_settings.forecasts_topic)
    dead = collect(service_settings, service_settings.dlq_topic)
    thread, stop = start_service(service_settings)
    try:
        produce(service_settings, stream)
        dead.wait_for(len(bad) + 2)
        forecasts.wait_for(3 * (20 - (L - 1)))
        time.sleep(1.0)
        alive = thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=30)
    assert alive, "the service must keep running through every bad payload"
    assert sorted(d["reason"] for d in dead.docs) == sorted(
        [reason for _, reason in BAD_PAYLOADS] + ["late", "duplicate"]
    )
    assert all(d["topic"] == service_settings.readings_topic and d["offset"] >= 0 and d["error"] for d in dead.docs)
    binary = next(d for d in dead.docs if d["payload_encoding"] == "base64")
    assert binary["reason"] == "not_json"
    keys = [(d["entity"], d["ts"]) for d in forecasts.docs]
    assert len(keys) == len(set(keys)) == 3 * (20 - (L - 1)), "every valid reading after warm-up forecast exactly once"
    assert not thread.is_alive(), "asked to stop, the service stops"


def test_a_model_promoted_mid_stream_is_picked_up_with_no_reading_lost(
    service_settings: Settings, mlflow_tracking: str, tiny_checkpoint, produce, collect
) -> None:
    from models.mlflow.registry import log_checkpoint

    name = f"sc-{service_settings.consumer_group}"
    assert log_checkpoint(tiny_checkpoint("v1", seed=1), name, alias="champion") == "1"
    settings = service_settings.model_copy(
        update={"model_uri": f"models:/{name}@champion", "model_poll_s": 0.3, "mlflow_tracking_uri": mlflow_tracking}
    )
    forecasts = collect(settings, settings.forecasts_topic)
    thread, stop = start_service(settings)
    try:
        produce(settings, readings(4, range(0, 20)))
        forecasts.wait_for(4 * (20 - (L - 1)))
        assert {d["model"]["version"] for d in forecasts.docs} == {"1"}
        assert log_checkpoint(tiny_checkpoint("v2", seed=2), name, alias="champion") == "2"
        # readings keep flowing during the swap, until v2 is seen serving (a download and a trace: however
        # long this machine takes), then five steps more; the ceiling only stops a hung test
        end, deadline = 20, time.monotonic() + 300
        while end < 60 or not any(d["model"]["version"] == "2" for d in forecasts.docs):
            assert time.monotonic() < deadline, "v2 was never served"
            produce(settings, readings(4, range(end, end + 5)), rate=100)
            end += 5
        produce(settings, readings(4, range(end, end + 5)), rate=100)
        end += 5
        docs = forecasts.wait_for(4 * (end - (L - 1)), timeout_s=300, unique=True)
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(timeout=30)
    keys = [(d["entity"], d["ts"]) for d in forecasts.docs]
    assert len(keys) == len(set(keys)) == 4 * (end - (L - 1)), "every reading forecast exactly once across the swap"
    versions = [d["model"]["version"] for d in sorted(docs, key=lambda d: d["ts"])]
    assert versions[0] == "1" and versions[-1] == "2"
    assert versions == sorted(versions), "once swapped, the new model serves every later reading"


STEPS, RATE = 200, 400  # 10 entities: 1,800 readings over 4.5 s after the warm-up, the stop lands mid-stream


def stop_mid_stream_then_restart(settings: Settings, env: dict, produce, forecasts, tmp_path: Path, stop_first):
    """A service forecasting a paced stream is stopped by `stop_first(process)` 1.5 s into it; a second
    one starts once the stream is in and runs until every reading has its forecast. Returns (what
    `stop_first` returned, forecasts arrived before the restart, forecasts expected, how the second
    refilled its windows: "changelog", "replay" or "both", from its log)."""
    produce(settings, readings(10, range(0, 20)))  # enough to warm every window
    producer = threading.Thread(target=produce, args=(settings, readings(10, range(20, STEPS)), RATE))
    first = ServeProcess(settings.model_uri, env, tmp_path / "first.log").start()
    second = ServeProcess(settings.model_uri, env, tmp_path / "second.log")
    expected = 10 * (STEPS - (L - 1))
    try:
        forecasts.wait_for(1, timeout_s=60)  # the service is up and forecasting
        producer.start()
        time.sleep(1.5)
        stopped = stop_first(first)
        before_restart = len(forecasts.docs)
        producer.join(timeout=60)
        second.start()
        forecasts.wait_for(expected, timeout_s=90, unique=True)
        time.sleep(1.5)
        assert second.stop() == 0, second.output()[-3000:]
    finally:
        first.stop()
        second.stop()
    return stopped, before_restart, expected, refilled_by(second.output())


# the restart paths as (client, window state): each client restores from the changelog in one of the
# two tests and replays in the other, and kafka-python does both in each (the confluent changelog is
# also what the group tests below and the exactly-once SIGKILL test restore from)
SIGTERM_PATHS = [("kafka-python", "changelog"), ("kafka-python", "replay"), ("confluent", "changelog")]
SIGKILL_PATHS = [("kafka-python", "changelog"), ("kafka-python", "replay"), ("confluent", "replay")]


def refilled_by(log: str) -> str:
    """How a restarted service refilled its windows, from its log (each partition says which path)."""
    changelog, replay = "windows from the changelog" in log, "replaying" in log or "restored" not in log
    return "both" if changelog and replay else "changelog" if changelog else "replay"


def exits_cleanly(process: ServeProcess) -> None:
    assert process.stop() == 0, process.output()[-3000:]


@pytest.mark.parametrize(("kafka_client", "window_state"), SIGTERM_PATHS)
def test_sigterm_finishes_the_batch_commits_and_a_restart_loses_nothing(
    service_settings: Settings, produce, collect, tmp_path: Path, tiny_checkpoint, window_state: str
) -> None:
    """On a model with a grid, the restart reads back by time from the last commit, however many
    entities share a partition: SENSORCAST_REHYDRATE_RECORDS=1 (the count it used to read back)
    would leave every window but one cold. (The SIGKILL test below covers the count, on a model
    without a grid.) With the window changelog (the default), the stop writes every window last, and
    the restart reads them and no input back."""
    settings = service_settings.model_copy(
        update={"model_uri": str(tiny_checkpoint("gridded", grid={"interval_ms": HOUR, "anchor_ms": 0}))}
    )
    forecasts = collect(settings, settings.forecasts_topic)
    env = {**settings.as_env(), "SENSORCAST_REHYDRATE_RECORDS": "1", "SENSORCAST_WINDOW_STATE": window_state}
    _, before_restart, expected, refilled = stop_mid_stream_then_restart(
        settings, env, produce, forecasts, tmp_path, exits_cleanly
    )
    assert refilled == window_state
    assert 0 < before_restart < expected, "the first process should stop mid-stream"
    keys = {(d["entity"], d["ts"]) for d in forecasts.docs}
    assert len(keys) == expected, f"{expected - len(keys)} readings lost their forecast"
    # a clean stop lands, confirms and commits everything it polled: the restart re-forecasts nothing
    assert len(forecasts.docs) == len(keys), f"{len(forecasts.docs) - len(keys)} readings forecast twice"


@pytest.mark.parametrize("kafka_client", ["kafka-python"])  # explicit partition lists; confluent: the group test
@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_two_instances_split_the_partitions_and_forecast_everything_once(
    service_settings: Settings, produce, collect, guarantee: str
) -> None:
    """Under exactly-once each instance's transactional id names its partitions: neither fences the other."""
    s = service_settings.model_copy(update={"processing_guarantee": guarantee})
    forecasts = collect(service_settings, service_settings.forecasts_topic)
    a = start_service(s.model_copy(update={"partitions": "0"}))
    b = start_service(s.model_copy(update={"partitions": "1,2"}))
    try:
        produce(service_settings, readings(9, range(30)))
        forecasts.wait_for(9 * (30 - (L - 1)))
        time.sleep(1.0)
    finally:
        for thread, stop in (a, b):
            stop.set()
            thread.join(timeout=30)
    keys = [(d["entity"], d["ts"]) for d in forecasts.docs]
    assert len(keys) == len(set(keys)) == 9 * (30 - (L - 1))


@pytest.mark.parametrize("kafka_client", ["confluent"])
@pytest.mark.parametrize(
    ("guarantee", "how"), [("at-least-once", "stop"), ("exactly-once", "stop"), ("exactly-once", "kill")]
)
def test_confluent_instances_share_the_group_and_one_takes_over_from_a_stopped_one(
    service_settings: Settings, produce, collect, tmp_path: Path, guarantee: str, how: str
) -> None:
    """Under exactly-once, the hand-over commits the open transaction with the revoked partitions'
    offsets before they go: the same counts, read read_committed. An instance lost without a
    hand-over (SIGKILL) leaves its transaction open: the broker aborts it at its timeout, the group
    gives its partitions to the other once its session expires, and that one reads from the last
    committed offsets (KIP-447: it waits for offsets still pending in a transaction). Still 0 lost
    and 0 repeated for a read_committed reader."""
    # the confluent client: the test is parametrized on it alone
    # the changelog at every commit point: a killed instance's partitions then have a marker once it
    # committed their readings (at the default 10 s, a takeover within 10 s of a fresh start replays)
    env = {
        **service_settings.as_env(),
        "SENSORCAST_PROCESSING_GUARANTEE": guarantee,
        "SENSORCAST_CHANGELOG_INTERVAL_MS": "0",
    }
    forecasts = collect(service_settings, service_settings.forecasts_topic)
    steps, entities = 160, 9
    a = ServeProcess(service_settings.model_uri, env, tmp_path / "a.log").start().wait_ready()
    b = ServeProcess(service_settings.model_uri, env, tmp_path / "b.log").start().wait_ready()
    producer = threading.Thread(target=produce, args=(service_settings, readings(entities, range(steps)), 400))
    try:
        producer.start()  # 1,440 readings over 3.6 s
        forecasts.wait_for(200, timeout_s=60)
        assert "assigned partitions" in a.output() and "assigned partitions" in b.output()
        if how == "stop":
            assert a.stop() == 0, a.output()[-3000:]  # mid-stream: b takes a's partitions over
        else:
            a.proc.kill()  # no hand-over, no commit, no leaving the group
            a.proc.wait(10)
        before = len(forecasts.docs)
        producer.join(timeout=60)
        expected = entities * (steps - (L - 1))
        forecasts.wait_for(expected, timeout_s=90, unique=True)
        time.sleep(1.5)
    finally:
        a.stop()
        b.stop()
    keys = {(d["entity"], d["ts"]) for d in forecasts.docs}
    assert 0 < before < expected, "a should stop mid-stream"
    assert len(keys) == expected, f"{expected - len(keys)} readings lost their forecast across the hand-over"
    assert len(forecasts.docs) == len(keys), "a hand-over commits first: nothing is forecast twice"
    assert ("stopping after" in a.output()) == (how == "stop"), a.output()[-2000:]  # killed: no last words
    assert "gave up partitions" in a.output(), a.output()[-2000:]  # to b, when it joined, and on a's stop
    assert b.output().count("assigned partitions") >= 2, b.output()[-2000:]  # its share, then a's
    assert "windows from the changelog" in b.output(), b.output()[-2000:]  # a's, as a left them
    assert ("exactly-once: output and offsets commit in transactions" in a.output()) == (guarantee == "exactly-once")


@pytest.mark.parametrize(("kafka_client", "window_state"), SIGKILL_PATHS)
def test_sigkill_mid_stream_loses_nothing_and_repeats_only_what_followed_the_last_commit(
    service_settings: Settings, produce, collect, tmp_path: Path, window_state: str
) -> None:
    from collections import Counter

    import orjson

    from pipeline.kafka import make_admin, read_since
    from pipeline.messages import format_ts, parse_ts

    interval_ms = 250
    env = {
        **service_settings.as_env(),
        "SENSORCAST_COMMIT_INTERVAL_MS": str(interval_ms),
        "SENSORCAST_WINDOW_STATE": window_state,
    }
    forecasts = collect(service_settings, service_settings.forecasts_topic)

    def kill(process: ServeProcess) -> dict[int, int]:
        """SIGKILL: no batch landed, no final commit. Returns the group's committed offsets then."""
        process.proc.kill()
        process.proc.wait(10)
        admin, group = make_admin(service_settings), service_settings.consumer_group
        try:
            return {tp.partition: m.offset for tp, m in admin.list_group_offsets(group)[group].items()}
        finally:
            admin.close()

    committed, _, expected, refilled = stop_mid_stream_then_restart(
        service_settings, env, produce, forecasts, tmp_path, kill
    )
    assert refilled == window_state  # killed: the changelog trails a point at most
    counts = Counter((d["entity"], d["ts"]) for d in forecasts.docs)
    assert len(counts) == expected, f"{expected - len(counts)} readings lost their forecast"
    twice = {k for k, n in counts.items() if n > 1}
    # the repeats are readings the killed process had forecast but not yet committed: past the group's offsets
    where = {}
    for r in read_since(service_settings, service_settings.readings_topic, None).records:
        doc = orjson.loads(r.value)
        where[(doc["entity"], format_ts(parse_ts(doc["ts"])))] = (r.partition, r.offset)
    assert all(where[k][1] >= committed.get(where[k][0], 0) for k in twice), "a committed reading was repeated"
    assert sum(counts.values()) - len(counts) <= RATE * interval_ms / 1000 + service_settings.max_batch


def test_exactly_once_a_sigkill_mid_stream_leaves_each_forecast_once_for_a_read_committed_reader(
    kafka_settings: Settings, kafka_client: str, tiny_checkpoint, produce, collect, tmp_path: Path
) -> None:
    """SENSORCAST_PROCESSING_GUARANTEE=exactly-once: the forecasts and the offsets of each commit
    point go in one transaction. A SIGKILL mid-stream leaves its open transaction behind: on
    kafka-python the restart's own transactional id fences it and aborts it at once, on confluent
    (a new id per process, fenced by the group's generation) the broker aborts it at its timeout.
    The restart forecasts from the last committed offsets. A read_committed reader (the project's
    own) then sees every reading's forecast exactly once: none lost, none repeated; a
    read_uncommitted reader of the same topic sees at least as many."""
    from collections import Counter

    settings = kafka_settings.model_copy(
        update={"model_uri": str(tiny_checkpoint()), "metrics_port": 0, "topic_partitions": 3,
                "kafka_client": kafka_client, "processing_guarantee": "exactly-once"}
    )  # fmt: skip
    ensure_topics(settings)
    # the changelog at every commit: each partition has a marker before the kill (the SIGKILL test above
    # covers the default 10 s, where the restart replays from an older marker)
    env = {**settings.as_env(), "SENSORCAST_COMMIT_INTERVAL_MS": "250", "SENSORCAST_CHANGELOG_INTERVAL_MS": "0"}
    forecasts = collect(settings, settings.forecasts_topic)  # read_committed: every project consumer reads so
    uncommitted = TopicCollector(settings, settings.forecasts_topic, True, isolation_level="read_uncommitted")

    def kill(process: ServeProcess) -> None:
        process.proc.kill()
        process.proc.wait(10)

    try:
        _, _, expected, refilled = stop_mid_stream_then_restart(settings, env, produce, forecasts, tmp_path, kill)
    finally:
        uncommitted.close()
    counts = Counter((d["entity"], d["ts"]) for d in forecasts.docs)
    assert len(counts) == expected, f"{expected - len(counts)} readings lost their forecast"
    assert sum(counts.values()) == expected, {k: n for k, n in counts.items() if n > 1}  # not one repeated
    assert len(uncommitted.docs) >= len(forecasts.docs)
    assert refilled == "changelog"
    print(
        f"read_committed {len(forecasts.docs)} forecasts; read_uncommitted {len(uncommitted.docs)} (aborted ones too)"
    )


def test_the_running_service_applies_the_calibration_of_its_version_from_the_topic(
    kafka_settings: Settings, tiny_checkpoint, produce, collect
) -> None:
    """A calibration already on the compacted topic is applied from the first forecast; another
    version's is not; a new one lands while the service runs. Half-widths here: 1 (static) × multiplier."""
    from pipeline.messages import calibration_key, encode_calibration

    half = {"0.9": [[1.0, 1.0]] * H}  # (H, N), the plain score: one width for every window
    folder = tiny_checkpoint(intervals={"score": "abs_error_scaled", "windows": 50, "half_width": half})
    s = kafka_settings.model_copy(update={"model_uri": str(folder), "metrics_port": 0})
    ensure_topics(s)

    def calibration(version: str, multiplier: float) -> tuple[bytes, bytes]:
        rows = {"0.9": {c: [multiplier] * H for c in CH}}
        return calibration_key("test-model", version), encode_calibration("test-model", version, rows, "now")

    produce(s, [calibration("local", 3.0), calibration("9", 7.0)], topic=s.calibration_topic)
    forecasts = collect(s, s.forecasts_topic)
    thread, stop = start_service(s)

    def widths(docs: list[dict]) -> set[float]:
        return {
            round(u - p, 4)
            for d in docs
            for u, p in zip(d["intervals"]["0.9"]["upper"]["temp"], d["forecast"]["temp"], strict=True)
        }

    try:
        produce(s, readings(1, range(12)))
        first = forecasts.wait_for(12 - (L - 1))
        assert widths(first) == {3.0}, widths(first)  # v"local"'s multiplier from the start, not v9's
        produce(s, [calibration("local", 0.5)], topic=s.calibration_topic)
        deadline, hours = time.monotonic() + 30, iter(range(12, 200))
        while 0.5 not in widths(forecasts.docs[len(first) :]) and time.monotonic() < deadline:
            produce(s, readings(1, range(next(hours), next(hours) + 1)))
            time.sleep(0.3)
        assert widths(forecasts.docs[-1:]) == {0.5}  # a new calibration lands while it runs
    finally:
        stop.set()
        thread.join(timeout=30)
