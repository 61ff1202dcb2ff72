"""Training learned governors with Stable-Baselines3: config -> vectorised envs -> SB3 -> a run folder.

Modules, one job each (``train_policy.py`` is the command line over them):

* :mod:`.config` — :class:`TrainConfig` (a dataclass with a docstring per field), :func:`load_config`.
* :mod:`.algos` — algorithm names -> SB3 / sb3-contrib classes, hyperparameter checks and conversion.
* :mod:`.artifacts` — the run folder layout, checkpoint names, the VecNormalize statistics of a model.
* :mod:`.vec_env` — env factory, fixed evaluation episodes, training and evaluation VecEnv stacks.
* :mod:`.callbacks` — SB3 callbacks: grouped TensorBoard metrics, held-out evaluation, wall-clock budget.
* :mod:`.plots` — the learning curve PNG.
* :mod:`.loop` — :func:`train`, top to bottom.
* :mod:`.throughput` — :func:`measure`: decisions/s of a config's envs, without learning.

The public names below load their module on first use (PEP 562, as the package root does): ``policies`` imports
:mod:`.algos` and :mod:`.artifacts` to load trained models, and must not pay for SB3 and torch at import time.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "TrainConfig": "lbw_env.learning.config",
    "NormalizeConfig": "lbw_env.learning.config",
    "EvalConfig": "lbw_env.learning.config",
    "load_config": "lbw_env.learning.config",
    "config_help": "lbw_env.learning.config",
    "ALGOS": "lbw_env.learning.algos",
    "algo_class": "lbw_env.learning.algos",
    "RunFolder": "lbw_env.learning.artifacts",
    "vecnormalize_path": "lbw_env.learning.artifacts",
    "make_env": "lbw_env.learning.vec_env",
    "FixedEpisodes": "lbw_env.learning.vec_env",
    "plot_learning_curve": "lbw_env.learning.plots",
    "TrainResult": "lbw_env.learning.loop",
    "train": "lbw_env.learning.loop",
    "measure": "lbw_env.learning.throughput",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lbw_env.learning' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = list(_LAZY)
