"""lbw-env: a Gymnasium environment for governing language-model training under stress.

Importing the package registers the environment ids (``gymnasium.make("LBW/WikiText-Tiny-v0")``) and nothing
else: torch and transformers load only when an env is made or a public name below is first used.

Layers (each imports only the ones above it in this list):

* ``lbw_env.config``, ``lbw_env.cache`` — typed configs, strict loading; atomic, hash-keyed cache entries.
* ``lbw_env.plant`` — data, models, the governed optimizer step, snapshots, ``Plant.step(control)``.
* ``lbw_env.control`` — observation features, the envelope, reward terms, ``Governance``, the ``Governor`` protocol.
* ``lbw_env.env``, ``lbw_env.scenarios`` — ``LBWEnv`` and the scenario families.
* ``lbw_env.evaluation``, ``lbw_env.learning``, ``lbw_env.integrations`` — suites, SB3 training, real loops.
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym

__version__ = "0.1.0"

ENTRY_POINT = "lbw_env.env:LBWEnv"

# id -> scenario pool used for training (the val and test scenarios of a family stay reachable by
# reset(options={"scenario": name}), and by evaluate.py).
ENV_IDS: dict[str, list[str]] = {
    "LBW/WikiText-Tiny-v0": ["tiny:train"],
    "LBW/WikiText-LRStress-v0": ["lr_stress:train"],
    "LBW/WikiText-ModelSize-v0": ["model_size:train"],
    "LBW/WikiText-Clipping-v0": ["clipping:train"],
    "LBW/WikiText-Faults-v0": ["runtime_faults:train"],
}


def _register() -> None:
    for env_id, pool in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=ENTRY_POINT, kwargs={"scenarios": pool})


_register()

# Public names, imported on first use (PEP 562) so that registering the ids stays cheap.
_LAZY: dict[str, str] = {
    "ConfigError": "lbw_env.config",
    "TrainerConfig": "lbw_env.plant.config",
    "EnvConfig": "lbw_env.env",
    "LBWEnv": "lbw_env.env",
    "EnvelopeConfig": "lbw_env.control.envelope",
    "Control": "lbw_env.plant.optimizer",
    "GovernedOptimizer": "lbw_env.plant.optimizer",
    "RewardConfig": "lbw_env.control.reward",
    "FEATURE_NAMES": "lbw_env.control.features",
    "StepRecord": "lbw_env.plant.records",
    "Plant": "lbw_env.plant.trainer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lbw_env' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["ENTRY_POINT", "ENV_IDS", *_LAZY]
