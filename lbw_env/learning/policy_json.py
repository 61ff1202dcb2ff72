"""Plain JSON for what a governor file must describe: spaces, policy constructor arguments, and the observation
normaliser.

Why not pickle: SB3 stores spaces, ``policy_kwargs`` (classes such as ``activation_fn``) and VecNormalize with
pickle, and unpickling runs whatever code the file names. Here every value is JSON data, and the only classes
a file can name are the few in :func:`safe_classes` (activations, optimizers, SB3's flatten extractor), looked
up by name in that table: a file can choose among them, never import anything. Sizes are bounded too, so that
a crafted file cannot make the loader allocate gigabytes before its weights are even checked.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from functools import cache
from typing import Any

import gymnasium as gym
import numpy as np

from lbw_env.config import ConfigError

from .algos import ACTIVATIONS

MAX_ELEMENTS = 1 << 20
"""Largest space (elements of a Box, entries of an nvec) a governor file may declare."""
MAX_INT = 1 << 20
"""Largest integer in ``policy_kwargs`` (layer widths, LSTM sizes): bigger is a crafted file, not a governor."""
CLASS_KEY = ":class:"
"""``{":class:": "Tanh"}`` stands for a class of :func:`safe_classes` in ``policy_kwargs``."""


# ----------------------------------------------------------------------------------------------------------
# Floats that JSON can hold
# ----------------------------------------------------------------------------------------------------------


def floats_to_json(values: np.ndarray) -> list[float | str]:
    """Exact floats (``repr`` round-trips float64, and float32 widens exactly); non-finite ones as strings."""
    return [float(x) if math.isfinite(x) else str(float(x)) for x in np.asarray(values, dtype=np.float64).ravel()]


def floats_from_json(values: Any, path: str, size: int | None = None) -> np.ndarray:
    if not isinstance(values, list) or (size is not None and len(values) != size) or len(values) > MAX_ELEMENTS:
        expected = f"a list of {size} numbers" if size is not None else "a list of numbers"
        raise ConfigError(f"{path}: expected {expected}")
    if any(isinstance(v, bool) for v in values):  # float(True) is 1.0: a boolean is not a statistic or a bound
        raise ConfigError(f"{path}: expected numbers, not booleans")
    try:
        return np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: expected numbers ({e})") from None


# ----------------------------------------------------------------------------------------------------------
# Spaces
# ----------------------------------------------------------------------------------------------------------


def space_to_json(space: gym.Space) -> dict[str, Any]:
    """A Box, MultiDiscrete or Discrete space as JSON data (the kinds a governor acts or observes in)."""
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": floats_to_json(space.low),
            "high": floats_to_json(space.high),
        }
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": np.asarray(space.nvec).ravel().tolist(), "dtype": str(space.dtype)}
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    raise ConfigError(f"a governor file cannot describe a {type(space).__name__} space")


def space_from_json(data: Any, path: str) -> gym.Space:
    """The space of :func:`space_to_json` (anything else, or anything oversized, is a ConfigError)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a space mapping, got {data!r}")
    kind = data.get("type")
    try:
        if kind == "Box":
            shape = tuple(int(n) for n in data["shape"])
            size = math.prod(shape)
            if not 0 < size <= MAX_ELEMENTS or min(shape) < 1:
                raise ConfigError(f"{path}.shape: expected 1 to {MAX_ELEMENTS} elements, got {list(shape)}")
            dtype = np.dtype(_dtype(data["dtype"], path, "f"))
            low = floats_from_json(data["low"], f"{path}.low", size).reshape(shape).astype(dtype)
            high = floats_from_json(data["high"], f"{path}.high", size).reshape(shape).astype(dtype)
            return gym.spaces.Box(low, high, shape, dtype=dtype)
        if kind == "MultiDiscrete":
            nvec = [int(n) for n in data["nvec"]]
            if not 0 < len(nvec) <= MAX_ELEMENTS or min(nvec) < 1 or max(nvec) > MAX_INT:
                raise ConfigError(f"{path}.nvec: expected 1 to {MAX_ELEMENTS} entries in [1, {MAX_INT}]")
            return gym.spaces.MultiDiscrete(nvec, dtype=np.dtype(_dtype(data["dtype"], path, "iu")))
        if kind == "Discrete":
            n, start = int(data["n"]), int(data.get("start", 0))
            if not 1 <= n <= MAX_INT:
                raise ConfigError(f"{path}.n: expected 1 to {MAX_INT}, got {n}")
            return gym.spaces.Discrete(n, start=start)
    except ConfigError:
        raise  # already names its field: wrapping it would repeat the path
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: malformed {kind} space ({type(e).__name__}: {e})") from None
    raise ConfigError(f"{path}.type: expected Box, MultiDiscrete or Discrete, got {kind!r}")


def _dtype(name: Any, path: str, kinds: str) -> str:
    """A numeric dtype name (``float32``, ``int64`` ...) of the given kinds; never an object or void dtype."""
    try:
        dtype = np.dtype(str(name))
    except TypeError:
        raise ConfigError(f"{path}.dtype: not a dtype: {name!r}") from None
    if dtype.kind not in kinds:
        raise ConfigError(f"{path}.dtype: expected a numeric dtype, got {name!r}")
    return dtype.name


# ----------------------------------------------------------------------------------------------------------
# Policy constructor arguments
# ----------------------------------------------------------------------------------------------------------


@cache
def safe_classes() -> dict[str, type]:
    """The only classes a governor file may name, by ``__name__``: activations (those TrainConfig accepts, by
    :data:`~lbw_env.learning.algos.ACTIVATIONS`), the optimizers SB3 policies are built with, and the feature
    extractor of flat (Box) observations. The optimizer is built but never stepped by a governor."""
    import torch
    from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike
    from stable_baselines3.common.torch_layers import FlattenExtractor

    classes: list[type] = [getattr(torch.nn, name) for name in ACTIVATIONS.values()]
    classes += [torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.SGD, RMSpropTFLike]
    classes.append(FlattenExtractor)
    return {cls.__name__: cls for cls in classes}


def kwargs_to_json(value: Any, path: str = "policy_kwargs") -> Any:
    """Constructor arguments as JSON: plain data, and classes of :func:`safe_classes` as ``{":class:": name}``.
    Anything else (a custom class, a function) cannot be stored safely and is a ConfigError naming the key."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        x = float(value)
        if not math.isfinite(x):
            raise ConfigError(f"{path}: a non-finite float cannot be stored ({x})")
        return x
    if isinstance(value, (list, tuple)):
        return [kwargs_to_json(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value) or CLASS_KEY in value:
            raise ConfigError(f"{path}: expected string keys, got {list(value)!r}")
        return {k: kwargs_to_json(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, type) and safe_classes().get(value.__name__) is value:
        return {CLASS_KEY: value.__name__}
    allowed = ", ".join(sorted(safe_classes()))
    raise ConfigError(f"{path}: {value!r} cannot be stored in a governor file (classes allowed: {allowed})")


def kwargs_from_json(value: Any, path: str = "policy_kwargs") -> Any:
    """The inverse of :func:`kwargs_to_json`: class names resolve through :func:`safe_classes` only."""
    if value is None or isinstance(value, (bool, str, float)):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_INT:
            raise ConfigError(f"{path}: {value} is out of range for a policy argument (|x| <= {MAX_INT})")
        return value
    if isinstance(value, list):
        return [kwargs_from_json(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and CLASS_KEY in value:
        name = value[CLASS_KEY]
        cls = safe_classes().get(name) if len(value) == 1 and isinstance(name, str) else None
        if cls is None:
            allowed = ", ".join(sorted(safe_classes()))
            raise ConfigError(f"{path}: class {value[CLASS_KEY]!r} is not one a governor file may name ({allowed})")
        return cls
    if isinstance(value, dict):
        return {k: kwargs_from_json(v, f"{path}.{k}") for k, v in value.items()}
    raise ConfigError(f"{path}: unexpected value {value!r}")


# ----------------------------------------------------------------------------------------------------------
# The observation normaliser
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunningStats:
    """VecNormalize's ``obs_rms`` (running mean, variance and count of the observations)."""

    mean: np.ndarray
    var: np.ndarray
    count: float


@dataclasses.dataclass(frozen=True)
class ObsNormalizer:
    """VecNormalize's observation normalisation, as data: ``clip((obs - mean) / sqrt(var + epsilon))``.

    A learned governor sees observations exactly as in training (or evaluation) only with these statistics;
    ``kind`` names where they came from, for :func:`lbw_env.control.compat.check_compatible`.
    """

    obs_rms: RunningStats
    clip_obs: float = 10.0
    epsilon: float = 1e-8
    norm_reward: bool = False
    """Recorded for completeness: reward normalisation only ever mattered during training."""
    kind: str = "VecNormalize"

    @classmethod
    def of_vecnormalize(cls, venv: Any) -> ObsNormalizer | None:
        """The normaliser of an SB3 ``VecNormalize`` (None when it does not normalise observations)."""
        if venv is None or not getattr(venv, "norm_obs", False):
            return None
        rms = venv.obs_rms
        stats = RunningStats(np.array(rms.mean, dtype=np.float64), np.array(rms.var, dtype=np.float64), rms.count)
        return cls(stats, float(venv.clip_obs), float(venv.epsilon), bool(venv.norm_reward))

    def normalize(self, observation: np.ndarray) -> np.ndarray:
        """As ``VecNormalize.normalize_obs``, returned as float32 (the policy's input dtype)."""
        obs = (observation - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + self.epsilon)
        return np.clip(obs, -self.clip_obs, self.clip_obs).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "norm_obs": True,
            "norm_reward": self.norm_reward,
            "clip_obs": self.clip_obs,
            "epsilon": self.epsilon,
            "obs_rms": {
                "mean": floats_to_json(self.obs_rms.mean),
                "var": floats_to_json(self.obs_rms.var),
                "count": float(self.obs_rms.count),
            },
        }

    @classmethod
    def from_json(cls, data: Any, size: int, path: str = "vecnormalize.json") -> ObsNormalizer:
        """Statistics for observations of ``size`` elements; anything malformed is a ConfigError."""
        if not isinstance(data, Mapping) or data.get("type") != "VecNormalize" or data.get("norm_obs") is not True:
            raise ConfigError(f"{path}: expected VecNormalize observation statistics (type, norm_obs: true)")
        try:
            rms = data["obs_rms"]
            stats = RunningStats(
                floats_from_json(rms["mean"], f"{path}.obs_rms.mean", size),
                floats_from_json(rms["var"], f"{path}.obs_rms.var", size),
                float(rms["count"]),
            )
            out = cls(stats, float(data["clip_obs"]), float(data["epsilon"]), bool(data.get("norm_reward", False)))
        except ConfigError:
            raise  # already names its field
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{path}: malformed statistics ({type(e).__name__}: {e})") from None
        # Each check names its field: a non-finite mean pins a feature to the clip, an infinite epsilon makes
        # every normalised observation 0, and var + epsilon = 0 divides by zero: a governor acting on garbage.
        checks = [
            (np.all(np.isfinite(stats.mean)), "obs_rms.mean", "finite numbers"),
            (np.all(np.isfinite(stats.var)) and np.all(stats.var >= 0), "obs_rms.var", "finite numbers >= 0"),
            (math.isfinite(out.clip_obs) and out.clip_obs > 0, "clip_obs", "a positive finite number"),
            (math.isfinite(out.epsilon) and out.epsilon >= 0, "epsilon", "a finite number >= 0"),
            (np.all(stats.var + out.epsilon > 0), "obs_rms.var + epsilon", "> 0 for every feature (it divides)"),
        ]
        for ok, field, expected in checks:
            if not ok:
                raise ConfigError(f"{path}: {field}: expected {expected}")
        return out
