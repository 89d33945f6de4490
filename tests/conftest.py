"""Tests mirror the packages; fixtures live in tests/fixtures/ as plugins: real services (kafka,
stack), factories (tiny_checkpoint, produce, collect) and the MLflow store (models)."""

pytest_plugins = ["tests.fixtures.stack", "tests.fixtures.kafka", "tests.fixtures.models"]
