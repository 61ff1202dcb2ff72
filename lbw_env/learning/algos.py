"""SB3 algorithms by name: the classes, and hyperparameters from YAML checked and turned into constructor kwargs.

One table for training (:mod:`lbw_env.learning`) and for loading trained models (``policies.sb3``), so that a
model is always loaded with the class it was trained with. Stable-Baselines3 is imported when a class is first
asked for: importing this module (as ``policies`` does to register the SB3 governors) stays cheap.
"""

from __future__ import annotations

import inspect
from typing import Any

from lbw_env.config import ConfigError

ALGOS = ("ppo", "a2c", "sac", "recurrent_ppo")
"""Algorithm names, as in ``TrainConfig.algo`` and governor specs ``<algo>:<model.zip>``."""
OFF_POLICY = ("sac",)
"""Algorithms with a replay buffer (saved with checkpoints, restored on resume)."""
RESERVED_HYPERPARAMS = ("policy", "env", "seed", "device", "tensorboard_log", "verbose", "_init_setup_model")
"""Constructor arguments that TrainConfig sets itself (``hyperparams`` may not)."""
ACTIVATIONS = {"tanh": "Tanh", "relu": "ReLU", "elu": "ELU", "leaky_relu": "LeakyReLU", "gelu": "GELU", "silu": "SiLU"}
"""``policy_kwargs.activation_fn`` names (YAML cannot hold a class) -> ``torch.nn`` class names."""
SCHEDULED = ("learning_rate", "clip_range")
"""Hyperparameters that may be ``lin_<x>``: a linear decay from ``x`` to 0 over training."""


def algo_class(name: str) -> Any:
    """The SB3 (or sb3-contrib) class of an algorithm name in :data:`ALGOS`."""
    if name == "recurrent_ppo":
        try:
            from sb3_contrib import RecurrentPPO
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ConfigError("recurrent_ppo needs sb3-contrib (pip install sb3-contrib)") from e
        return RecurrentPPO
    import stable_baselines3 as sb3

    classes = {"ppo": sb3.PPO, "a2c": sb3.A2C, "sac": sb3.SAC}
    if name not in classes:
        raise ConfigError(f"algorithm {name!r}: expected one of {', '.join(ALGOS)}")
    return classes[name]


def check_hyperparams(cls: type[Any], hyperparams: dict[str, Any]) -> None:
    """Every key must be a constructor argument of ``cls`` that TrainConfig does not set itself; activation
    names and schedules must be ones :func:`sb3_kwargs` can convert."""
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    for key in hyperparams:
        if key in RESERVED_HYPERPARAMS:
            raise ConfigError(f"hyperparams.{key}: set by the training config itself (policy, seed, device ...)")
        if key not in params:
            allowed = ", ".join(sorted(params - set(RESERVED_HYPERPARAMS)))
            raise ConfigError(f"hyperparams.{key}: not an argument of {cls.__name__}; expected one of {allowed}")
    pk = hyperparams.get("policy_kwargs")
    if pk is not None and not isinstance(pk, dict):
        raise ConfigError(f"hyperparams.policy_kwargs: expected a mapping, got {pk!r}")
    act = (pk or {}).get("activation_fn")
    if act is not None and act not in ACTIVATIONS:
        names = sorted(ACTIVATIONS)
        raise ConfigError(f"hyperparams.policy_kwargs.activation_fn: expected one of {names}, got {act!r}")
    for key in SCHEDULED:
        value = hyperparams.get(key)
        if isinstance(value, str) and not _is_linear(value):
            raise ConfigError(f"hyperparams.{key}: expected a float or lin_<float>, got {value!r}")


def _is_linear(value: str) -> bool:
    if not value.startswith("lin_"):
        return False
    try:
        float(value[4:])
    except ValueError:
        return False
    return True


def sb3_kwargs(hyperparams: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters as SB3 wants them: activation names -> torch classes, ``lin_<x>`` -> schedules."""
    import torch
    from stable_baselines3.common.utils import LinearSchedule

    out = dict(hyperparams)
    if "policy_kwargs" in out:
        pk = dict(out["policy_kwargs"])
        if "activation_fn" in pk:
            pk["activation_fn"] = getattr(torch.nn, ACTIVATIONS[pk["activation_fn"]])
        out["policy_kwargs"] = pk
    for key in SCHEDULED:
        value = out.get(key)
        if isinstance(value, str):
            # SB3's own schedule class: saved models unpickle it anywhere SB3 is installed.
            out[key] = LinearSchedule(float(value[4:]), 0.0, 1.0)
    return out


def discount(algo: str, hyperparams: dict[str, Any]) -> float:
    """The discount that VecNormalize's return statistics must use: the algorithm's ``gamma``."""
    if "gamma" in hyperparams:
        return float(hyperparams["gamma"])
    return float(inspect.signature(algo_class(algo).__init__).parameters["gamma"].default)
