"""Tests mirror the packages; fixtures live in tests/fixtures/ as plugins: real services (kafka,
stack), factories (tiny_checkpoint, produce, collect) and the MLflow store (models)."""

import os
import sys
import tempfile

import torch

# Building a torch optimizer imports torch._dynamo, which imports triton (it comes with the CUDA
# wheel) only to ask whether it is there. On a machine without CUDA nothing here uses it, and at the
# end of a test session its bindings printed ~60 lines of "nanobind: leaked ..." after the result.
# None in sys.modules makes `import triton` an ImportError: torch then takes triton as absent.
if not torch.cuda.is_available():
    sys.modules.setdefault("triton", None)

# Prefect keeps its state under PREFECT_HOME (else ~/.prefect); flows run in tests start Prefect's
# own temporary server there unless PREFECT_API_URL points at one.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="sensorcast-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# that temporary server is given 20 s to start by default; on a busy 2-core machine (a secured broker
# and the service beside it) it once took longer and failed the test: give it the CLI's 120 s
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

pytest_plugins = ["tests.fixtures.stack", "tests.fixtures.kafka", "tests.fixtures.models"]
