"""Scenarios and families: the WikiText stress suite as configuration.

A *scenario* is one fully specified training run to be governed: model preset, regime (from scratch or
fine-tuning a cached base checkpoint), base LR and schedule, steps, batch/sequence size, optional clipping
baseline and injected faults. Scenarios come in *families* (``configs/scenarios/<family>.yaml``): LR stress,
model-size ladder, clipping baselines, runtime faults, and a tiny family for tests and RL smoke runs.
Each scenario is in the ``train`` or the ``heldout`` split, so learned governors can be judged on stress
they never trained on.

Family file layout::

    family: lr_stress
    description: ...
    defaults: {model: {preset: qwen2-s}, optim: {...}, ...}    # a TrainerConfig mapping shared by all
    scenarios:
      - name: ref                                              # full name: lr_stress/ref
        split: train
        description: ...
        trainer: {optim: {lr: 1.0e-3}}                         # merged over the defaults
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, Literal

from .config import ConfigError, config_dir, config_names, deep_merge, from_dict, parse_overrides, read_yaml
from .plant.config import TrainerConfig, expand_presets


@dataclasses.dataclass
class Scenario:
    """One governed training run of the suite."""

    name: str
    """Full name, ``<family>/<name>``."""
    family: str
    """The family it belongs to."""
    split: Literal["train", "heldout"]
    """``train``: learned governors may train on it; ``heldout``: only for evaluation."""
    description: str
    """What stress it applies and why."""
    trainer: TrainerConfig
    """The resolved training configuration."""


def families() -> list[str]:
    """Scenario families: ``configs/scenarios/<family>.yaml``."""
    return config_names("scenarios")


@functools.cache
def load_family(family: str) -> dict[str, Scenario]:
    """All scenarios of ``configs/scenarios/<family>.yaml``, validated."""
    path = config_dir() / "scenarios" / f"{family}.yaml"
    if not path.is_file():
        raise ConfigError(f"scenario family {family!r}: no file {path}; expected one of {', '.join(families())}")
    data = read_yaml(path)
    unknown = set(data) - {"family", "description", "defaults", "scenarios"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; expected family, description, defaults, scenarios")
    defaults = data.get("defaults") or {}
    out: dict[str, Scenario] = {}
    for i, item in enumerate(data.get("scenarios") or []):
        where = f"{path}: scenarios[{i}]"
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"{where}: expected a mapping with at least a 'name'")
        extra = set(item) - {"name", "split", "description", "trainer"}
        if extra:
            raise ConfigError(f"{where}: unknown keys {sorted(extra)}; expected name, split, description, trainer")
        split = item.get("split", "train")
        if split not in ("train", "heldout"):
            raise ConfigError(f"{where}.split: expected 'train' or 'heldout', got {split!r}")
        try:
            trainer = from_dict(TrainerConfig, expand_presets(deep_merge(defaults, item.get("trainer") or {})))
        except ConfigError as e:
            raise ConfigError(f"{where}.trainer.{e}") from None
        name = f"{family}/{item['name']}"
        if name in out:
            raise ConfigError(f"{where}: duplicate scenario name {name!r}")
        out[name] = Scenario(name, family, split, str(item.get("description", "")), trainer)
    if not out:
        raise ConfigError(f"{path}: no scenarios")
    return out


def get_scenario(name: str) -> Scenario:
    """A scenario by full name (``family/name``)."""
    family = name.split("/", 1)[0]
    scenarios = load_family(family)
    if name not in scenarios:
        raise ConfigError(f"scenario {name!r}: not in family {family!r}; expected one of {', '.join(scenarios)}")
    return scenarios[name]


def resolve(specs: Sequence[str]) -> list[Scenario]:
    """Scenario names from specs: ``family/name``, ``family`` (all), or ``family:train`` / ``family:heldout``."""
    out: list[Scenario] = []
    for spec in specs:
        if "/" in spec:
            out.append(get_scenario(spec))
            continue
        family, _, split = spec.partition(":")
        if split not in ("", "train", "heldout"):
            raise ConfigError(f"scenario spec {spec!r}: expected family, family:train or family:heldout")
        out.extend(s for s in load_family(family).values() if not split or s.split == split)
    if not out:
        raise ConfigError(f"scenario specs {list(specs)}: selected no scenario")
    return out


def with_overrides(scenario: Scenario, overrides: Sequence[str] | dict[str, Any]) -> Scenario:
    """A copy of ``scenario`` with trainer ``key=value`` overrides (e.g. ``runtime.threads=1``) applied."""
    if not overrides:
        return scenario
    update = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    base = dataclasses.asdict(scenario.trainer)
    if "preset" in (update.get("model") or {}):
        # A new preset brings its own architecture; keep only the placement keys of the old model section.
        base["model"] = {k: v for k, v in base["model"].items() if k in ("device", "dtype", "lora")}
    trainer = from_dict(TrainerConfig, expand_presets(deep_merge(base, update)))
    return dataclasses.replace(scenario, trainer=trainer)
