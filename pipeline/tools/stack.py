"""The embedded local stack: a KRaft Kafka broker from the official jars, an MLflow server and a
Prefect server, each a background process with a pid file and a log under the state folder.

No Docker here, so the project runs the real services itself. Each start waits, with a bound, until
the service answers a real request, and a port already taken fails at once with a clear error.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shlex
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

from pipeline.kafka.security import kafka_python_security
from pipeline.settings import Settings


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


def ensure_kafka_jars(settings: Settings) -> Path:
    """The broker's jars from Maven Central, once, each checked against the lock's SHA-256
    (`pipeline.tools.jars`: Python alone, no Maven; the Makefile does this too, and an installed
    package carries the lock and fetches them into the user's state folder on first use)."""
    from pipeline.tools.jars import JarMismatch, fetch

    jars = settings.kafka_jars_dir
    if jars.is_dir() and any(jars.glob("kafka_2.13-*.jar")):
        return jars
    try:
        fetch(dest=jars)
    except (JarMismatch, OSError) as e:
        raise StackError(
            f"could not fetch the Kafka jars into {jars}: {e}. Or put Apache Kafka's libs/*.jar there "
            "(SENSORCAST_KAFKA_JARS_DIR), or point KAFKA_BOOTSTRAP_SERVERS at a broker you run"
        ) from e
    return jars


@dataclass(frozen=True)
class KafkaNode:
    """One broker of the local cluster (node ids 1..N, each a combined broker and KRaft controller)."""

    node_id: int
    port: int
    controller_port: int

    @property
    def name(self) -> str:
        return "kafka" if self.node_id == 1 else f"kafka-{self.node_id}"


def kafka_nodes(settings: Settings) -> list[KafkaNode]:
    """Node i's ports are the settings' ports + 10·(i-1): 9092/9093, 9102/9103, 9112/9113 by default.
    A state folder's cluster keeps the size it was first formatted with (its controller quorum)."""
    return [
        KafkaNode(i + 1, settings.kafka_port + 10 * i, settings.kafka_controller_port + 10 * i)
        for i in range(cluster_size(settings))
    ]


def cluster_size(settings: Settings) -> int:
    path = settings.state_dir / "kafka-brokers"
    return int(path.read_text()) if path.exists() else settings.kafka_brokers


def _kafka_service(settings: Settings, node: KafkaNode) -> Service:
    folder = settings.state_dir / node.name
    host = settings.host
    cmd = [
        "java",
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


def secured(settings: Settings) -> Settings:
    """The settings with the local stack's SASL_SSL listener filled in: SCRAM-SHA-512, user `sensorcast`
    unless one is set, a password generated once (kept, mode 600, in the state folder) unless one is
    set, and the local CA unless another is named. `stack up --secure` starts the broker this way."""
    from pydantic import SecretStr

    from pipeline.tools.tls import local_pki

    tls = settings.state_dir / "tls"
    pki = local_pki(tls, settings.host)
    password = settings.kafka_sasl_password
    if password is None:
        stored = tls / "sasl-password"
        if not stored.exists():
            write_private(stored, secrets.token_urlsafe(24))
        password = SecretStr(stored.read_text().strip())
    return settings.model_copy(
        update={
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": settings.kafka_sasl_username or "sensorcast",
            "kafka_sasl_password": password,
            "kafka_ssl_cafile": settings.kafka_ssl_cafile or pki.ca_cert,
        }
    )


def write_client_env(settings: Settings) -> Path:
    """The secured settings as `export` lines a shell can source (mode 600: it holds the password)."""
    keys = (
        "KAFKA_BOOTSTRAP_SERVERS",
        "SENSORCAST_KAFKA_SECURITY_PROTOCOL",
        "SENSORCAST_KAFKA_SASL_MECHANISM",
        "SENSORCAST_KAFKA_SASL_USERNAME",
        "SENSORCAST_KAFKA_SASL_PASSWORD",
        "SENSORCAST_KAFKA_SSL_CAFILE",
    )
    env = settings.as_env()
    path = settings.state_dir / "tls" / "client.env"
    write_private(path, "".join(f"export {k}={shlex.quote(env[k])}\n" for k in keys))
    return path


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (mode 600 from its creation, never readable in between)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _listener_lines(settings: Settings, node: KafkaNode) -> list[str]:
    """PLAINTEXT by default; SASL_SSL (SCRAM-SHA-512 over TLS, brokers among themselves too) when the
    settings ask for it. The controllers talk PLAINTEXT on the host's own address."""
    host = settings.host
    if settings.kafka_security_protocol == "PLAINTEXT":
        return [
            f"listeners=PLAINTEXT://{host}:{node.port},CONTROLLER://{host}:{node.controller_port}",
            f"advertised.listeners=PLAINTEXT://{host}:{node.port}",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ]
    if settings.kafka_security_protocol != "SASL_SSL" or settings.kafka_sasl_mechanism != "SCRAM-SHA-512":
        raise StackError("the local broker offers PLAINTEXT, or SASL_SSL with SCRAM-SHA-512 (`stack up --secure`)")
    from pipeline.tools.tls import local_pki

    pki = local_pki(settings.state_dir / "tls", host)
    keystore = settings.state_dir / "tls" / "keystore.pem"  # Kafka's PEM keystore: the key, then the chain
    keystore.write_bytes(pki.server_key.read_bytes() + pki.server_cert.read_bytes())
    keystore.chmod(0o600)
    user, password = settings.kafka_sasl_username, settings.kafka_sasl_password.get_secret_value()
    return [
        f"listeners=SASL_SSL://{host}:{node.port},CONTROLLER://{host}:{node.controller_port}",
        f"advertised.listeners=SASL_SSL://{host}:{node.port}",
        "inter.broker.listener.name=SASL_SSL",
        "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
        f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{user}" password="{password}";',
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={keystore}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={pki.ca_cert}",
        "ssl.client.auth=none",
    ]


def _write_kafka_config(settings: Settings, node: KafkaNode, folder: Path) -> None:
    host, n = settings.host, cluster_size(settings)
    voters = ",".join(f"{k.node_id}@{host}:{k.controller_port}" for k in kafka_nodes(settings))
    replicas, min_isr = min(n, 3), 2 if n >= 3 else 1
    props = folder / "server.properties"
    write_private(  # it may hold the SCRAM password
        props,
        "\n".join(
            [
                "# generated by sensorcast stack; edit the settings, not this file",
                "process.roles=broker,controller",
                f"node.id={node.node_id}",
                f"controller.quorum.voters={voters}",
                *_listener_lines(settings, node),
                "controller.listener.names=CONTROLLER",
                f"log.dirs={folder / 'data'}",
                f"num.partitions={settings.topic_partitions}",
                f"default.replication.factor={replicas}",
                f"min.insync.replicas={min_isr}",
                f"offsets.topic.replication.factor={replicas}",
                "offsets.topic.num.partitions=3",
                f"transaction.state.log.replication.factor={replicas}",
                f"transaction.state.log.min.isr={min_isr}",
                f"share.coordinator.state.topic.replication.factor={replicas}",
                f"share.coordinator.state.topic.min.isr={min_isr}",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "log.retention.hours=168",
                "",
            ]
        ),
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


def _cluster_id(settings: Settings) -> str:
    """One id for every node of the local cluster, chosen once."""
    path = settings.state_dir / "kafka-cluster-id"
    if not path.exists():
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
        (settings.state_dir / "kafka-brokers").write_text(str(settings.kafka_brokers))
    return path.read_text().strip()


# Kafka's storage tool takes a SCRAM user's password only as an argument; a process's arguments are
# visible to everyone on the machine (ps, /proc). This launcher (run by Java's single-file source
# mode) reads the arguments from a file only its owner can read, deletes it, and runs the tool.
ARGS_FROM_FILE = """
import java.nio.file.Files;
import java.nio.file.Path;

public class ArgsFromFile {
    public static void main(String[] argv) throws Exception {
        Path file = Path.of(argv[0]);
        String[] args = Files.readAllLines(file).toArray(new String[0]);
        Files.delete(file);
        kafka.tools.StorageTool.main(args);
    }
}
"""


def format_command(settings: Settings, folder: Path) -> tuple[list[str], list[str] | None]:
    """(the command line, the arguments to pass through a file, or None): a secured broker's SCRAM
    user goes through the file, so its password never shows on a command line."""
    # --cluster-id=ID joined: a base64 id may start with '-', read as a flag
    args = ["format", f"--cluster-id={_cluster_id(settings)}", "-c", str(folder / "server.properties")]
    java = ["java", f"-Dlog4j2.configurationFile={folder / 'log4j2.properties'}", "-cp", f"{settings.kafka_jars_dir}/*"]
    if not settings.kafka_security_protocol.startswith("SASL_"):
        return [*java, "kafka.tools.StorageTool", *args], None  # nothing secret: no launcher to compile
    user, password = settings.kafka_sasl_username, settings.kafka_sasl_password.get_secret_value()
    args += ["--add-scram", f"{settings.kafka_sasl_mechanism}=[name={user},password={password}]"]
    return [*java, str(folder / "ArgsFromFile.java"), str(folder / "format.args")], args


def _format_kafka_storage(settings: Settings, folder: Path) -> None:
    """Format once; an existing meta.properties means the data survives restarts. A secured broker
    gets its SCRAM user here (KRaft keeps credentials in the metadata log)."""
    if (folder / "data" / "meta.properties").exists():
        return
    cmd, args = format_command(settings, folder)
    args_file = folder / "format.args"
    if args is not None:
        (folder / "ArgsFromFile.java").write_text(ARGS_FROM_FILE)
        write_private(args_file, "\n".join(args) + "\n")  # it holds the SCRAM password
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        args_file.unlink(missing_ok=True)  # the launcher deletes it; one that failed to start did not
    if res.returncode != 0:
        secret = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
        out = f"{res.stdout}\n{res.stderr}"
        raise StackError("formatting Kafka storage failed:\n" + (out.replace(secret, "***") if secret else out))


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
        _write_kafka_config(settings, node, service.folder)
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
    if settings.mlflow_auth and any(s.name == "mlflow" for s in chosen) and not _mlflow_login():
        raise StackError(
            "SENSORCAST_MLFLOW_AUTH needs the login the clients send: set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (the local server makes that user its admin on first start)"
        )
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
