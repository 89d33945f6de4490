"""The embedded local stack: a KRaft Kafka broker from the official jars, an MLflow server and a
Prefect server, each a background process with a pid file and a log under the state folder.

No Docker here, so the project runs the real services itself. Each start waits, with a bound, until
the service answers a real request, and a port already taken fails at once with a clear error.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.settings import REPO_ROOT, Settings


class StackError(RuntimeError):
    """A local service could not be started or reached; the message says what to do."""


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    url: str
    folder: Path
    command: list[str]
    env: dict[str, str]
    is_ready: Callable[[], bool]

    @property
    def pid_file(self) -> Path:
        return self.folder / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.folder / f"{self.name}.log"


# -- small probes ------------------------------------------------------------------------------


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_ports(n: int) -> list[int]:
    """n distinct free ports: the sockets stay bound until all are chosen, so none repeats."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except Exception:
        return False


def kafka_answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """A real metadata request, not just an open port: the broker must have finished starting.
    Quiet: no listening port is a plain False (no client is made, so no retry storm of connection
    errors in the log), and the client's own complaints while the broker starts are held back."""
    import logging

    from kafka import KafkaAdminClient

    if not any(port_open(*_host_port(b)) for b in bootstrap.split(",")):
        return False
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=int(timeout_s * 1000),
            bootstrap_timeout_ms=int(timeout_s * 1000),
            client_id="sensorcast-probe",
        )
    except Exception:
        return False
    finally:
        kafka_log.setLevel(level)
    try:
        admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        admin.close()


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return host or "127.0.0.1", int(port or 9092)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return True


def _read_pid(service: Service) -> int | None:
    try:
        pid = int(service.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


# -- Kafka ---------------------------------------------------------------------------------------


def ensure_kafka_jars(settings: Settings) -> Path:
    """The broker's jars from Maven Central (once); the Makefile does this too."""
    jars = settings.kafka_jars_dir
    if jars.is_dir() and any(jars.glob("kafka_2.13-*.jar")):
        return jars
    pom = REPO_ROOT / "infra" / "kafka" / "pom.xml"
    cmd = [
        "mvn",
        "-q",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={jars}",
        "-DincludeScope=runtime",
    ]
    try:
        subprocess.run(cmd, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise StackError(f"could not fetch the Kafka jars with Maven ({' '.join(cmd)}): {e}") from e
    return jars


def _kafka_service(settings: Settings) -> Service:
    folder = settings.state_dir / "kafka"
    host, port = settings.host, settings.kafka_port
    props = folder / "server.properties"
    log4j = folder / "log4j2.properties"
    cmd = [
        "java",
        f"-Xmx{settings.kafka_heap}",
        "-Xms256m",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        f"{settings.kafka_jars_dir}/*",
        "kafka.Kafka",
        str(props),
    ]
    return Service("kafka", port, f"{host}:{port}", folder, cmd, {}, lambda: kafka_answers(f"{host}:{port}"))


def _write_kafka_config(settings: Settings, folder: Path) -> None:
    host, port, cport = settings.host, settings.kafka_port, settings.kafka_controller_port
    (folder / "server.properties").write_text(
        "\n".join(
            [
                "# generated by sensorcast stack; edit the settings, not this file",
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{host}:{cport}",
                f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
                f"advertised.listeners=PLAINTEXT://{host}:{port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={folder / 'data'}",
                f"num.partitions={settings.topic_partitions}",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=3",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "log.retention.hours=168",
                "",
            ]
        )
    )
    (folder / "log4j2.properties").write_text(
        "\n".join(
            [
                "status = warn",
                "appender.console.type = Console",
                "appender.console.name = STDOUT",
                "appender.console.layout.type = PatternLayout",
                "appender.console.layout.pattern = [%d] %p %m (%c)%n",
                "rootLogger.level = WARN",
                "rootLogger.appenderRef.stdout.ref = STDOUT",
                "logger.kafka.name = kafka.server.KafkaServer",
                "logger.kafka.level = INFO",
                "",
            ]
        )
    )


def _format_kafka_storage(settings: Settings, folder: Path) -> None:
    """Format once; an existing meta.properties means the data survives restarts."""
    if (folder / "data" / "meta.properties").exists():
        return
    cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    cmd = [
        "java",
        f"-Dlog4j2.configurationFile={folder / 'log4j2.properties'}",
        "-cp",
        f"{settings.kafka_jars_dir}/*",
        "kafka.tools.StorageTool",
        "format",
        f"--cluster-id={cid}",  # joined: a base64 id may start with '-', which argparse reads as a flag
        "-c",
        str(folder / "server.properties"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise StackError(f"formatting Kafka storage failed:\n{res.stdout}\n{res.stderr}")


# -- MLflow and Prefect -------------------------------------------------------------------------


def _python_tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def _mlflow_service(settings: Settings) -> Service:
    folder = settings.state_dir / "mlflow"
    host, port = settings.host, settings.mlflow_port
    cmd = [
        _python_tool("mlflow"),
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--serve-artifacts",
    ]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    url = f"http://{host}:{port}"
    return Service("mlflow", port, url, folder, cmd, env, lambda: http_ok(f"{url}/health"))


def prefect_env(settings: Settings) -> dict[str, str]:
    """Every prefect process needs PREFECT_HOME, or it writes to ~/.prefect."""
    home = settings.state_dir / "prefect"
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_UI_API_URL": f"http://{settings.host}:{settings.prefect_port}/api",
    }


def _prefect_service(settings: Settings) -> Service:
    folder = settings.state_dir / "prefect"
    host, port = settings.host, settings.prefect_port
    cmd = [_python_tool("prefect"), "server", "start", "--host", host, "--port", str(port)]
    url = f"http://{host}:{port}/api"
    return Service("prefect", port, url, folder, cmd, prefect_env(settings), lambda: http_ok(f"{url}/health"))


def services(settings: Settings, names: list[str] | None = None) -> list[Service]:
    every = {"kafka": _kafka_service, "mlflow": _mlflow_service, "prefect": _prefect_service}
    chosen = names or list(every)
    unknown = set(chosen) - set(every)
    if unknown:
        raise StackError(f"unknown service(s) {sorted(unknown)}; choose from {sorted(every)}")
    return [every[n](settings) for n in chosen]


# -- lifecycle -----------------------------------------------------------------------------------


def _launch(settings: Settings, service: Service) -> int:
    if (pid := _read_pid(service)) is not None:
        return pid
    if port_open(settings.host, service.port):
        raise StackError(
            f"port {service.port} for {service.name} is already in use by another process; "
            f"choose another with SENSORCAST_{service.name.upper()}_PORT or stop that process"
        )
    service.folder.mkdir(parents=True, exist_ok=True)
    if service.name == "kafka":
        if port_open(settings.host, settings.kafka_controller_port):
            raise StackError(
                f"Kafka controller port {settings.kafka_controller_port} is in use; "
                "set SENSORCAST_KAFKA_CONTROLLER_PORT"
            )
        ensure_kafka_jars(settings)
        _write_kafka_config(settings, service.folder)
        _format_kafka_storage(settings, service.folder)
    log = open(service.log_file, "ab")
    proc = subprocess.Popen(
        service.command,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **service.env},
        cwd=service.folder,
        start_new_session=True,
    )
    log.close()
    service.pid_file.write_text(str(proc.pid))
    return proc.pid


def _wait_ready(service: Service, pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            tail = service.log_file.read_text(errors="replace")[-3000:] if service.log_file.exists() else ""
            raise StackError(f"{service.name} exited during start-up; last log lines:\n{tail}")
        if service.is_ready():
            return
        time.sleep(0.3)
    raise StackError(f"{service.name} did not answer within {timeout_s:.0f} s; see {service.log_file}")


def up(settings: Settings, names: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, str]:
    """Start the chosen services (all by default) in parallel and wait until each answers."""
    chosen = services(settings, names)
    pids = {}
    for s in chosen:
        pids[s.name] = _launch(settings, s)
        log(f"starting {s.name} (pid {pids[s.name]}, log {s.log_file})")
    try:
        for s in chosen:
            _wait_ready(s, pids[s.name], settings.startup_timeout_s)
            log(f"{s.name} ready at {s.url}")
    except StackError:
        down(settings, [s.name for s in chosen], log=lambda _m: None)
        raise
    return {s.name: s.url for s in chosen}


def _stop(service: Service, timeout_s: float) -> bool:
    pid = _read_pid(service)
    if pid is None:
        service.pid_file.unlink(missing_ok=True)
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.2)
    if _pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while _pid_alive(pid):
            time.sleep(0.1)
    service.pid_file.unlink(missing_ok=True)
    return True


def down(settings: Settings, names: list[str] | None = None, log: Callable[[str], None] = print) -> None:
    for s in reversed(services(settings, names)):
        if _stop(s, timeout_s=30.0):
            log(f"stopped {s.name}")
        else:
            log(f"{s.name} was not running")


def status(settings: Settings) -> dict[str, dict[str, str | int | None]]:
    out: dict[str, dict[str, str | int | None]] = {}
    for s in services(settings):
        pid = _read_pid(s)
        state = "stopped"
        if pid is not None:
            state = "running" if s.is_ready() else "starting"
        out[s.name] = {"url": s.url, "state": state, "pid": pid, "log": str(s.log_file)}
    return out


def status_json(settings: Settings) -> str:
    """The shape scripts rely on: {"kafka": "host:port", ..., "state": {name: state}}."""
    st = status(settings)
    doc: dict[str, object] = {name: info["url"] for name, info in st.items()}
    doc["state"] = {name: info["state"] for name, info in st.items()}
    return json.dumps(doc)
