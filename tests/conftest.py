"""Tests mirror the packages; fixtures live in tests/fixtures/ as plugins: real services (kafka,
stack), factories (tiny_checkpoint, produce, collect) and the MLflow store (models)."""

import os
import tempfile

# Prefect keeps its state under PREFECT_HOME (else ~/.prefect); flows run in tests start Prefect's
# own temporary server there unless PREFECT_API_URL points at one.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="sensorcast-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# that temporary server is given 20 s to start by default; on a busy 2-core machine (a secured broker
# and the service beside it) it once took longer and failed the test: give it the CLI's 120 s
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

pytest_plugins = ["tests.fixtures.stack", "tests.fixtures.kafka", "tests.fixtures.models"]
