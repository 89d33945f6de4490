"""The one settings object: every knob of sensorcast, read from the environment and CLI flags.

Env vars carry a ``SENSORCAST_`` prefix, except the three that other tools already standardise
(``KAFKA_BOOTSTRAP_SERVERS``, ``MLFLOW_TRACKING_URI``, ``PREFECT_API_URL``), so the same code runs
against the local stack, docker-compose or a user's own cluster without edits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SENSORCAST_", extra="ignore", validate_default=True, populate_by_name=True
    )

    # -- local stack ---------------------------------------------------------------------------
    state_dir: Path = Field(default=REPO_ROOT / ".state", description="where the local stack keeps its data and logs")
    host: str = "127.0.0.1"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_heap: str = "1G"
    kafka_jars_dir: Path = REPO_ROOT / "infra" / "kafka" / "jars"
    mlflow_port: int = 5000
    prefect_port: int = 4200
    startup_timeout_s: float = 90.0

    # -- where the services are (defaults point at the local stack) ----------------------------
    kafka_bootstrap_servers: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "SENSORCAST_KAFKA_BOOTSTRAP_SERVERS")
    )
    mlflow_tracking_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "SENSORCAST_MLFLOW_TRACKING_URI")
    )
    prefect_api_url: str | None = Field(
        default=None, validation_alias=AliasChoices("PREFECT_API_URL", "SENSORCAST_PREFECT_API_URL")
    )

    # -- topics --------------------------------------------------------------------------------
    readings_topic: str = "sensors.readings"
    forecasts_topic: str = "sensors.forecasts"
    dlq_topic: str = "sensors.dlq"
    models_topic: str = "sensorcast.models"
    topic_partitions: int = 3
    kafka_client: str = Field(
        default="kafka-python",
        pattern="^(kafka-python|confluent)$",
        description="the service's Kafka client: kafka-python, or confluent (librdkafka, consumer-group scale-out)",
    )
    consumer_group: str = "sensorcast-forecaster"
    partitions: str | None = Field(
        default=None,
        pattern=r"^\d+(,\d+)*$",
        description="readings partitions this instance serves, e.g. 0,2 (default: all; kafka-python only)",
    )
    offset_reset: str = Field(
        default="earliest", pattern="^(earliest|latest)$", description="where a new consumer group starts"
    )

    # -- model ---------------------------------------------------------------------------------
    model_name: str = "sensorcast-itransformer"
    model_alias: str = "champion"
    model_uri: str | None = Field(default=None, description="a checkpoint folder or models:/NAME@ALIAS")
    model_poll_s: float = 10.0
    lookback: int = 96
    horizon: int = 24

    # -- retraining ----------------------------------------------------------------------------
    retrain_cron: str | None = Field(default="0 3 * * *", description="when `flows serve` retrains (UTC cron)")
    retrain_interval_s: float | None = Field(default=None, description="retrain every this many seconds instead")
    retrain_hours: float | None = Field(default=168.0, description="scheduled runs train on this many hours")
    retrain_margin: float = Field(default=0.0, description="relative holdout MSE a candidate must beat the champion by")

    # -- service -------------------------------------------------------------------------------
    max_batch: int = 256
    max_wait_ms: float = 2.0
    max_payload_bytes: int = 64 * 1024
    max_fill_steps: int = 3
    commit_interval_ms: float = Field(
        default=250.0, gt=0, description="confirm forecasts and commit offsets at least this often"
    )
    reading_interval_s: float | None = Field(default=None, description="expected cadence; None infers it per entity")
    entity_ttl_s: float | None = Field(
        default=86_400.0, description="forget an entity's window after this many seconds without a reading"
    )
    rehydrate_records: int = Field(
        default=20_000, description="records per partition re-read on start to refill windows"
    )
    device: str = "auto"
    torch_threads: int = 1
    metrics_port: int = 9308
    kafka_log_level: str = Field(default="WARNING", description="kafka-python's log level (DEBUG to trace a client)")

    # -- derived -------------------------------------------------------------------------------
    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap_servers or f"{self.host}:{self.kafka_port}"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://{self.host}:{self.mlflow_port}"

    @property
    def prefect_url(self) -> str:
        return self.prefect_api_url or f"http://{self.host}:{self.prefect_port}/api"

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
            f"SENSORCAST_{name.upper()}": str(value)
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
