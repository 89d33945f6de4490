"""Which configuration a retrain trains, pure: the champion's own, carried forward, unless the settings
or the data changed what a model must take in or give out.

A version records its architecture, its network's config (cycle and skip included) and its training
recipe. A scheduled retrain trains that configuration again, warm-started from the champion's weights,
so a searched champion keeps learning from new data instead of being replaced by the preset. The
preset is the start only when there is no champion, or when the lookback, horizon, channels or grid
changed: then the champion and the candidate are of different lineages, and the gate compares the
candidate with the naive baselines only.

>>> class Meta:  # what a champion's checkpoint says of itself (models.checkpoint.CheckpointMeta)
...     architecture, channels = "itransformer", ["rh", "temp"]
...     config = {"lookback": 24, "horizon": 6, "d_model": 128, "e_layers": 1, "cycle": 24, "n_variates": 2}
...     extra = {"grid": {"interval_ms": 3_600_000, "anchor_ms": 0}, "recipe": {"lr": 0.01, "batch_size": 256}}
...     version = "3"
>>> plan = next_configuration(Meta, lookback=24, horizon=6, channels=["rh", "temp"], grid={"interval_ms": 3_600_000})
>>> plan.carried, plan.config["cycle"], plan.recipe["lr"]
(True, 24, 0.01)
>>> next_configuration(Meta, lookback=24, horizon=12, channels=["rh", "temp"], grid=None).reason
'the serving preset: the champion v3 forecasts 6 steps, this retrain 12 (a new lineage)'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

PRESET_RECIPE = {"lr": 1e-3, "schedule": "cosine", "patience": 3}  # the scheduled retrain's recipe for the preset
RECIPE_KEYS = ("lr", "schedule", "patience", "batch_size", "loss", "weight_decay")


class VersionMeta(Protocol):
    architecture: str
    config: dict
    channels: list[str]
    extra: dict
    version: str


@dataclass(frozen=True)
class Plan:
    """What a retrain trains: an architecture, its network config (without lookback and horizon, which
    the settings give), its recipe, and why."""

    architecture: str
    config: dict
    recipe: dict
    carried: bool  # the champion's configuration (warm-started from its weights when they load)
    reason: str
    champion_version: str | None = None
    dims: dict = field(default_factory=dict)


def lineage_break(
    champion: VersionMeta, lookback: int, horizon: int, channels: list[str], grid: dict | None
) -> str | None:
    """Why the champion and a model of these dimensions cannot be compared window for window (None: they can)."""
    config, v = champion.config, champion.version
    if int(config["lookback"]) != lookback:
        return f"the champion v{v} reads {config['lookback']} steps back, this retrain {lookback}"
    if int(config["horizon"]) != horizon:
        return f"the champion v{v} forecasts {config['horizon']} steps, this retrain {horizon}"
    if list(champion.channels) != list(channels):
        return f"the champion v{v} takes channels {list(champion.channels)}, this retrain {list(channels)}"
    theirs = (champion.extra.get("grid") or {}).get("interval_ms")
    ours = (grid or {}).get("interval_ms")
    if theirs and ours and int(theirs) != int(ours):
        every = f"{int(theirs) / 1000:g} s, this retrain's data every {int(ours) / 1000:g} s"
        return f"the champion v{v} steps every {every}"
    return None


def trials_for_new_lineage(
    champion: VersionMeta | None,
    lookback: int,
    horizon: int,
    channels: list[str],
    grid: dict | None,
    search_trials: int,
) -> tuple[int, str]:
    """A retrain that would start a new lineage searches its configuration (`search_trials`; 0: the
    search is off) instead of training the preset: the preset has not been shown to beat the naive
    baselines at the new dimensions, and a new lineage that loses to them is never promoted, so the
    service would keep the old dimensions for good. Returns (trials, why); (0, "") when the lineage holds.

    >>> class Meta:
    ...     architecture, channels, extra, version = "itransformer", ["temp"], {}, "4"
    ...     config = {"lookback": 48, "horizon": 12}
    >>> trials_for_new_lineage(Meta, 48, 24, ["temp"], None, search_trials=12)
    (12, 'the champion v4 forecasts 12 steps, this retrain 24: a new lineage, its configuration searched (12 trials)')
    >>> trials_for_new_lineage(Meta, 48, 12, ["temp"], None, search_trials=12)
    (0, '')
    """
    broken = lineage_break(champion, lookback, horizon, channels, grid) if champion is not None else None
    if broken is None or search_trials <= 0:
        return 0, ""
    return search_trials, f"{broken}: a new lineage, its configuration searched ({search_trials} trials)"


def recipe_of(champion: VersionMeta) -> dict:
    """The training recipe a version was made with: recorded on it, or its search's choice (versions
    from before the recipe was recorded), else the preset's."""
    stored = champion.extra.get("recipe") or (champion.extra.get("search") or {}).get("chosen") or {}
    return {**PRESET_RECIPE, **{k: stored[k] for k in RECIPE_KEYS if k in stored}}


def next_configuration(
    champion: VersionMeta | None,
    lookback: int,
    horizon: int,
    channels: list[str],
    grid: dict | None,
    preset: dict | None = None,
) -> Plan:
    """The champion's configuration when it still fits the settings and the data, else the preset."""
    from models.nets import PRESETS

    preset = dict(PRESETS["serving"] if preset is None else preset)
    if champion is None:
        return Plan("itransformer", preset, dict(PRESET_RECIPE), False, "the serving preset: no champion yet")
    broken = lineage_break(champion, lookback, horizon, channels, grid)
    if broken is not None:
        reason = f"the serving preset: {broken} (a new lineage)"
        return Plan("itransformer", preset, dict(PRESET_RECIPE), False, reason, champion.version)
    config = {k: v for k, v in champion.config.items() if k not in ("lookback", "horizon")}
    if config.get("cycle") and int(config.get("n_variates", 0)) != len(channels):
        reason = f"the serving preset: the champion v{champion.version}'s cycle is per channel and the channels changed"
        return Plan("itransformer", preset, dict(PRESET_RECIPE), False, reason, champion.version)
    reason = f"the champion v{champion.version}'s configuration ({describe(champion.architecture, config)})"
    return Plan(champion.architecture, config, recipe_of(champion), True, reason, champion.version)


def describe(architecture: str, config: dict) -> str:
    """A configuration in a few words, for logs and tags."""
    parts = [architecture, f"d_model {config.get('d_model')}", f"{config.get('e_layers')} layers"]
    if config.get("cycle"):
        parts.append(f"cycle {config['cycle']}")
    if config.get("skip"):
        parts.append("skip")
    return ", ".join(parts)
