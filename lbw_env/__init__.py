"""lbw-env: a Gymnasium environment for governing language-model training under stress.

Importing the package registers the environment ids (``gymnasium.make("LBW/WikiText-Tiny-v0")``)."""

from __future__ import annotations

import gymnasium as gym

from .config import ConfigError, TrainerConfig
from .env import EnvConfig, LBWEnv
from .envelope import EnvelopeConfig
from .governed import Control, GovernedOptimizer
from .reward import RewardConfig
from .telemetry import FEATURE_NAMES, StepRecord
from .trainer import Trainer

__version__ = "0.1.0"

ENTRY_POINT = "lbw_env.env:LBWEnv"

# id -> scenario pool used for training (held-out scenarios of a family stay reachable by
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

__all__ = [
    "ENV_IDS",
    "FEATURE_NAMES",
    "ConfigError",
    "Control",
    "EnvConfig",
    "EnvelopeConfig",
    "GovernedOptimizer",
    "LBWEnv",
    "RewardConfig",
    "StepRecord",
    "Trainer",
    "TrainerConfig",
]
