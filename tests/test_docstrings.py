"""The runnable examples in docstrings run: a docstring that says how to call something stays true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "flows.drift",
    "flows.gate",
    "flows.lineage",
    "flows.slots",
    "flows.coverage",
    "pipeline.kafka.reader",
    "pipeline.kafka.security",
    "pipeline.kafka.source",
    "pipeline.tools.bench.month",
    "pipeline.tools.bench.peers",
    "pipeline.tools.producers",
    "pipeline.tools.passwords",
    "pipeline.timegrid",
    "models.conformal",
    "models.nets",
    "models.search",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
