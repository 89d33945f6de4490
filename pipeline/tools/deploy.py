"""docker compose's init steps, run by the sensorcast image as one-shot services before any app starts:

- `write_broker_config` (`sensorcast deploy kafka-config`): each broker's secured config in a volume
  only the brokers mount: a private CA and one certificate for every broker name, server.properties
  (SASL_SSL with SCRAM-SHA-512 on every listener, deny by default: `broker.sasl_ssl_lines`, the local
  stack's own), the storage format's java @argument file carrying the admin's SCRAM login (so the
  password never shows on a command line; `infra/kafka/start-secure.sh` deletes it once used) and an
  admin client config for the healthcheck. The CA alone goes to a second volume the apps mount.
- `grant_from_env` (`sensorcast deploy grant kafka|mlflow`): as the admins, the topics and a login
  per component with only its rights (`pipeline.kafka.roles`, `principals.MLFLOW_RIGHTS`), each
  password from compose's .env (KAFKA_<ROLE>_PASSWORD, MLFLOW_<ROLE>_PASSWORD).

>>> sorted(b.name for b in COMPOSE_BROKERS)
['kafka', 'kafka-1', 'kafka-2', 'kafka-3']
>>> password_variable("kafka", "service")
'KAFKA_SERVICE_PASSWORD'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.kafka.roles import ROLES
from pipeline.settings import Settings
from pipeline.tools.broker import (
    add_scram_args,
    new_cluster_id,
    sasl_ssl_lines,
    scram_jaas,
    server_properties,
    write_args_file,
    write_keystore,
    write_private,
)

ADMIN_USER = "sensorcast-admin"  # the brokers' super user in compose; the apps never log in as it
KAFKA_UID = 1000  # apache/kafka runs as appuser, the image's first user
CLUSTER_VOTERS = "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"


@dataclass(frozen=True)
class ComposeBroker:
    """One combined broker and controller: `name` is its host name and its files' stem."""

    name: str
    node_id: int
    voters: str
    cluster_size: int
    listeners: dict[str, tuple[str, str]] = field(default_factory=dict)  # {name: (bind, advertised)}
    controller: str = ":9093"


COMPOSE_BROKERS = [
    # the one broker of a plain `docker compose up`; host clients reach it on localhost:9092 (→ 29092)
    ComposeBroker(
        "kafka", 1, "1@kafka:9093", 1, {"SASL_SSL": (":9092", "kafka:9092"), "HOST": (":29092", "localhost:9092")}
    ),
    # the cluster profile's three
    *(ComposeBroker(f"kafka-{i}", i, CLUSTER_VOTERS, 3, {"SASL_SSL": (":9092", f"kafka-{i}:9092")}) for i in (1, 2, 3)),
]


def write_broker_config(
    out: Path,
    ca_out: Path,
    admin_password: str,
    controller_password: str,
    brokers: list[ComposeBroker] = COMPOSE_BROKERS,
    partitions: int = 3,
    data_dir: str = "/var/lib/kafka/data",
    owner: int | None = KAFKA_UID,
) -> list[Path]:
    """Write every broker's files into `out` (the path where the brokers mount it too) and the CA into
    `ca_out`; the CA, certificate and cluster id are made once and kept. Files holding a secret are
    mode 600, owned by `owner` (the broker's user) when run as root. Returns the files written."""
    from pipeline.tools.tls import local_pki

    out.mkdir(parents=True, exist_ok=True)
    pki = local_pki(out / "tls", brokers[0].name, also=tuple(b.name for b in brokers[1:]))
    keystore, truststore = write_keystore(pki, out / "keystore.pem"), pki.ca_cert
    ca_out.mkdir(parents=True, exist_ok=True)
    (ca_out / "ca.pem").write_bytes(truststore.read_bytes())
    cluster_id_file = out / "cluster-id"
    if not cluster_id_file.exists():
        cluster_id_file.write_text(new_cluster_id())
    cluster_id = cluster_id_file.read_text().strip()
    admin = (ADMIN_USER, admin_password)
    scram = add_scram_args("SCRAM-SHA-512", *admin)
    written = [keystore, ca_out / "ca.pem", cluster_id_file]
    for b in brokers:
        props = out / f"{b.name}.properties"
        lines = sasl_ssl_lines(b.listeners, b.controller, admin, controller_password, keystore, truststore)
        write_private(props, server_properties(b.node_id, b.voters, lines, data_dir, partitions, b.cluster_size))
        args = ["kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(props), *scram]
        write_args_file(out / f"{b.name}.format.args", args)
        written += [props, out / f"{b.name}.format.args"]
    write_private(out / "admin.properties", admin_client_properties(admin_password, truststore))
    written.append(out / "admin.properties")
    if owner is not None and os.geteuid() == 0:
        for path in [out, out / "tls", *out.rglob("*")]:
            os.chown(path, owner, owner)
    return written


def admin_client_properties(admin_password: str, truststore: Path) -> str:
    """Kafka's own tools (the broker's healthcheck: kafka-topics.sh --command-config) as the admin."""
    return "\n".join(
        [
            "security.protocol=SASL_SSL",
            "sasl.mechanism=SCRAM-SHA-512",
            f"sasl.jaas.config={scram_jaas(ADMIN_USER, admin_password)}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={truststore}",
            "",
        ]
    )


def password_variable(system: str, role: str) -> str:
    """The .env variable holding `role`'s password on `system` (kafka or mlflow)."""
    return f"{system.upper()}_{role.upper()}_PASSWORD"


def passwords_from_env(system: str, roles: tuple[str, ...], environ: Mapping[str, str]) -> dict[str, str]:
    """{role: its password} from compose's environment; a missing one is an error naming its variable."""
    missing = [password_variable(system, r) for r in roles if not environ.get(password_variable(system, r))]
    if missing:
        raise ValueError(f"not set: {', '.join(missing)} (`sensorcast secrets init` writes them into .env)")
    return {r: environ[password_variable(system, r)] for r in roles}


def grant_from_env(system: str, settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """As the admin of `system` (kafka or mlflow, the settings' login): every role's login and rights,
    passwords from `environ`. Returns the roles granted."""
    from pipeline.tools.passwords import check
    from pipeline.tools.principals import MLFLOW_RIGHTS, grant_mlflow_users, grant_roles

    roles = ROLES if system == "kafka" else tuple(MLFLOW_RIGHTS)
    passwords = passwords_from_env(system, roles, environ)
    check(
        {password_variable(system, r): p for r, p in passwords.items()},
        tuple(password_variable(system, r) for r in roles),
    )
    if system == "kafka":
        grant_roles(settings, passwords)
    elif system == "mlflow":
        grant_mlflow_users(settings, passwords)
    else:
        raise ValueError(f"no such system {system!r}: kafka or mlflow")
    return list(roles)
