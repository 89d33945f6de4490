"""The embedded local stack: a KRaft Kafka broker from the official jars, an MLflow server and a
Prefect server, each a background process with a pid file and a log under the state folder.

No Docker here, so the project runs the real services itself. Each start waits, with a bound, until
the service answers a real request, and a port already taken fails at once with a clear error.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.kafka.security import kafka_python_security
from pipeline.settings import Settings
from pipeline.tools.broker import (
    KafkaNode,
    StackError,
    ensure_kafka_jars,
    format_kafka_storage,
    java,
    kafka_nodes,
    write_kafka_config,
    write_private,
)
from pipeline.tools.passwords import weak


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


def private_settings(state_dir: Path) -> Settings:
    """Settings for a stack of one's own: every server on a free port, its state under `state_dir`
    (the tests, the lifecycle bench): it never touches the user's stack."""
    kafka, controller, mlflow, prefect = free_ports(4)
    return Settings.load(
        state_dir=state_dir,
        kafka_port=kafka,
        kafka_controller_port=controller,
        mlflow_port=mlflow,
        prefect_port=prefect,
        kafka_bootstrap_servers="",
    )


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except Exception:
        return False


def kafka_answers(bootstrap: str, timeout_s: float = 5.0, **security: object) -> bool:
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
            **security,
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


def _kafka_service(settings: Settings, node: KafkaNode) -> Service:
    folder = settings.state_dir / node.name
    host = settings.host
    cmd = [
        java(settings),
        f"-Xmx{settings.kafka_heap}",
        "-Xms256m",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={folder / 'log4j2.properties'}",
        "-cp",
        f"{settings.kafka_jars_dir}/*",
        "kafka.Kafka",
        str(folder / "server.properties"),
    ]
    security = kafka_python_security(settings)
    address = f"{host}:{node.port}"
    return Service(node.name, node.port, address, folder, cmd, {}, lambda: kafka_answers(address, **security))


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
    if settings.mlflow_auth:
        cmd += ["--app-name", "basic-auth"]
        env.update(mlflow_auth_env(settings, folder))
    url = f"http://{host}:{port}"
    return Service("mlflow", port, url, folder, cmd, env, lambda: http_ok(f"{url}/health"))


def mlflow_auth_env(settings: Settings, folder: Path) -> dict[str, str]:
    """MLflow's basic-auth app for the local server, from the environment's login (the one every
    client sends): the admin it creates on first start, its users database in the state folder, and
    a secret key made once (mode 600). Nothing secret goes on the command line."""
    folder.mkdir(parents=True, exist_ok=True)
    ini = folder / "auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
    )
    key = folder / "flask-secret-key"
    if not key.exists():
        write_private(key, secrets.token_urlsafe(32))
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": key.read_text().strip()}
    if login := _mlflow_login():  # `up` insists on it; `status` and `down` need none
        env.update({"MLFLOW_AUTH_ADMIN_USERNAME": login[0], "MLFLOW_AUTH_ADMIN_PASSWORD": login[1]})
    return env


def _mlflow_login() -> tuple[str, str] | None:
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    return (user, password) if user and password else None


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
    """The named services ("kafka" is every broker node), all by default."""
    every = {
        "kafka": lambda: [_kafka_service(settings, node) for node in kafka_nodes(settings)],
        "mlflow": lambda: [_mlflow_service(settings)],
        "prefect": lambda: [_prefect_service(settings)],
    }
    chosen = names or list(every)
    unknown = set(chosen) - set(every)
    if unknown:
        raise StackError(f"unknown service(s) {sorted(unknown)}; choose from {sorted(every)}")
    return [service for n in chosen for service in every[n]()]


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
    node = next((k for k in kafka_nodes(settings) if k.name == service.name), None)
    if node is not None:
        if port_open(settings.host, node.controller_port):
            raise StackError(
                f"Kafka controller port {node.controller_port} is in use; set SENSORCAST_KAFKA_CONTROLLER_PORT"
            )
        ensure_kafka_jars(settings)
        write_kafka_config(settings, node, service.folder)
        format_kafka_storage(settings, service.folder)
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
    if settings.mlflow_auth and any(s.name == "mlflow" for s in chosen):
        login = _mlflow_login()
        if not login:
            raise StackError(
                "SENSORCAST_MLFLOW_AUTH needs the login the clients send: set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (the local server makes that user its admin on first start)"
            )
        if why := weak("MLFLOW_TRACKING_PASSWORD", login[1]):
            raise StackError(why)
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
