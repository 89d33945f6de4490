"""Imports run one way. Each module may import only the project modules its layer allows: the
streaming service never reaches into tools or training, the Kafka adapter knows only records and
settings, and the models stack builds upward nets, sources ← data ← train/metrics ← fit ← mlflow. Function-
level imports count too (ast walks every import statement)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "models", "flows")

# module prefix → project modules it may import (prefixes; a module may always import its own package)
ALLOWED: dict[str, tuple[str, ...]] = {
    "models.nets": (),
    "models.device": (),
    "models.sources": (),
    "models.data": ("models.sources",),
    "models.metrics": (),
    "models.conformal": (),
    "models.train": ("models.data", "models.device"),
    "models.checkpoint": ("models.data", "models.nets"),
    "models.forecaster": ("models.checkpoint", "models.conformal", "models.device"),  # never the training loop
    "models.fit": (
        "models.checkpoint",
        "models.conformal",
        "models.data",
        "models.device",
        "models.metrics",
        "models.nets",
        "models.sources",
        "models.train",
    ),
    "models.search": ("models.data", "models.nets", "models.train"),  # beside fit: chooses what fit trains
    "models.mlflow": ("models.checkpoint", "models.fit", "models.forecaster", "models.search"),
    "pipeline.settings": (),
    "pipeline.records": (),
    "pipeline.messages": (),
    "pipeline.timegrid": (),
    "pipeline.state": (),
    "pipeline.windows": ("pipeline.messages", "pipeline.state", "pipeline.timegrid"),
    "pipeline.changelog": ("pipeline.core", "pipeline.records", "pipeline.state"),  # core: its type alone
    "pipeline.metrics": (),
    "pipeline.testing": ("pipeline.records",),
    "pipeline.core": (
        "pipeline.messages",
        "pipeline.records",
        "pipeline.state",
        "pipeline.timegrid",
        "pipeline.windows",
    ),
    "pipeline.loop": ("pipeline.changelog", "pipeline.core", "pipeline.records"),
    "pipeline.kafka": ("pipeline.changelog", "pipeline.records", "pipeline.settings", "pipeline.state"),
    "pipeline.model_source": ("pipeline.core", "models.forecaster", "models.mlflow.registry"),
    "pipeline.serve": (
        "pipeline.changelog",
        "pipeline.core",
        "pipeline.kafka",
        "pipeline.loop",
        "pipeline.messages",  # the calibration topic's messages, for the slot
        "pipeline.metrics",
        "pipeline.model_source",
        "pipeline.settings",
        "pipeline.state",  # a window's size, to tell whether it fits one message
    ),
    "pipeline.api": ("pipeline.kafka", "pipeline.messages", "pipeline.settings"),
    "pipeline.tools": ("pipeline", "models", "flows"),  # on top: tools may use everything below
    "pipeline": (),  # the package files themselves (their submodules need rules of their own)
    "models": (),
    "flows": (
        "pipeline.settings",
        "pipeline.messages",
        "pipeline.records",  # what pipeline.kafka's readers hand over
        "pipeline.timegrid",
        "pipeline.kafka",
        "pipeline.model_source",
        "models",
    ),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


def rule_for(module: str) -> tuple[str, tuple[str, ...]]:
    matches = [p for p in ALLOWED if module == p or (module.startswith(p + ".") and p not in ("pipeline", "models"))]
    if not matches:
        raise AssertionError(f"{module} has no import rule: add it to ALLOWED")
    prefix = max(matches, key=len)
    return prefix, ALLOWED[prefix]


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(module: str, imports: set[str]) -> list[str]:
    own, allowed = rule_for(module)
    bad = []
    for name in sorted(imports):
        if within(name, own) or any(within(name, a) for a in allowed):
            continue
        # `from pipeline import kafka` names the package `pipeline` too: judge the deepest name only
        if any(other != name and within(other, name) for other in imports):
            continue
        bad.append(name)
    return bad


MODULES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_run_one_way(path: Path) -> None:
    module = module_name(path)
    assert not violations(module, project_imports(path)), (
        f"{module} imports {violations(module, project_imports(path))}"
    )


def test_the_rule_catches_a_forbidden_import() -> None:
    assert violations("pipeline.core", {"pipeline.tools.stack"}) == ["pipeline.tools.stack"]
    assert violations("models.forecaster", {"models.train"}) == ["models.train"]
    assert violations("pipeline.kafka.source", {"pipeline.core"}) == ["pipeline.core"]
    assert violations("models.nets.itransformer", {"pipeline.settings"}) == ["pipeline.settings"]
    assert violations("pipeline.loop", {"pipeline.core", "pipeline.records"}) == []
    assert violations("flows.retrain", {"pipeline.tools.cli"}) == ["pipeline.tools.cli"]


def test_the_service_starts_without_importing_the_training_or_registry_stacks() -> None:
    """The serving path (and `bench latency`, which runs it) imports neither polars, MLflow, Prefect nor
    optuna: they load lazily where a frame is read or a registry asked, so a service starts faster and
    a GPU box needs only the service's own wheels."""
    import subprocess
    import sys

    heavy = ("polars", "mlflow", "prefect", "optuna")
    modules = "pipeline.serve, pipeline.tools.bench.latency, pipeline.tools.producers"  # the service, its load
    code = f"import sys, {modules}; print(sorted(m for m in %r if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code % (heavy,)], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
