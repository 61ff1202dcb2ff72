"""SB3 algorithms by name: the classes, and hyperparameters from YAML checked and turned into constructor kwargs.

One table for training (:mod:`lbw_env.learning`) and for loading trained models (``policies.sb3``), so that a
model is always loaded with the class it was trained with. Stable-Baselines3 is imported when a class is first
asked for: importing this module (as ``policies`` does to register the SB3 governors) stays cheap.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from lbw_env.config import ConfigError, is_int, is_real

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
    for key, (ok, expected) in VALUE_RULES.items():
        value = hyperparams.get(key)
        if value is None or (key in SCHEDULED and isinstance(value, str)):
            continue
        if key == "ent_coef" and isinstance(value, str) and value.startswith("auto"):  # SAC's learned coefficient
            continue
        if not (is_real(value) and math.isfinite(value) and ok(value)):
            raise ConfigError(f"hyperparams.{key}: expected {expected}, got {value!r}")
    check_net_arch((pk or {}).get("net_arch"), "hyperparams.policy_kwargs.net_arch")


def _count(low: int) -> tuple[Any, str]:
    return (lambda v: isinstance(v, int) and v >= low), f"an int >= {low}"


VALUE_RULES: dict[str, tuple[Any, str]] = {
    "gamma": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "gae_lambda": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "tau": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "learning_rate": (lambda v: v > 0, "a positive number or lin_<float>"),
    "clip_range": (lambda v: v > 0, "a positive number or lin_<float>"),
    "clip_range_vf": (lambda v: v > 0, "a positive number or null"),
    "ent_coef": (lambda v: v >= 0, "a number >= 0 (SAC: or auto)"),
    "vf_coef": (lambda v: v >= 0, "a number >= 0"),
    "max_grad_norm": (lambda v: v > 0, "a positive number"),
    "target_kl": (lambda v: v > 0, "a positive number or null"),
    "n_steps": _count(1),
    "n_epochs": _count(1),
    "batch_size": _count(1),
    "buffer_size": _count(1),
    "learning_starts": _count(0),
}
"""Value checks of the common SB3 hyperparameters, before anything runs: a NaN discount or a negative batch
otherwise fails inside the first update or the final evaluation, after the run folder exists."""


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


MAX_WIDTH = 4096
"""Widest layer a governor file may ask for (the shipped governors use 64)."""
MAX_LAYERS = 16
"""Deepest ``net_arch`` a governor file may ask for: with :data:`MAX_WIDTH`, at most ~1 GiB of float32 weights.
Without these bounds a crafted file's ``[1048576, 1048576]`` asks for a 4 TiB allocation."""


def check_net_arch(net_arch: Any, path: str) -> None:
    """SB3's ``net_arch`` (a list of widths, or ``{"pi": [...], "vf": [...]}`` / ``qf``) in the bounds above."""
    if net_arch is None:
        return
    lists = list(net_arch.values()) if isinstance(net_arch, dict) else [net_arch]
    for widths in lists:
        ok = isinstance(widths, list) and len(widths) <= MAX_LAYERS
        if not ok or not all(is_int(w) and 1 <= w <= MAX_WIDTH for w in widths):
            raise ConfigError(
                f"{path}: expected lists of at most {MAX_LAYERS} layer widths in [1, {MAX_WIDTH}], got {net_arch!r}"
            )
