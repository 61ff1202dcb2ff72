"""A trained Stable-Baselines3 model, with its VecNormalize statistics, as a governor.

``evaluate.py --governors ppo:runs/<run>/best_model.zip`` loads the model with the algorithm named by the
prefix, and, if a ``vecnormalize.pkl`` lies beside it, normalises observations exactly as during training.
A checkpoint of SB3's ``CheckpointCallback`` (``<prefix>_<N>_steps.zip``) finds its own statistics
(``<prefix>_vecnormalize_<N>_steps.pkl``) the same way, and an rl-zoo3 model ``<log>/<env>.zip`` the zoo's
``<log>/<env>/vecnormalize.pkl``.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from lbw_env.config import ConfigError
from lbw_env.control.envelope import EnvelopeConfig

from .base import Governor, register

ALGOS = ("ppo", "a2c", "sac", "recurrent_ppo")
VECNORM_FILE = "vecnormalize.pkl"
_CHECKPOINT = re.compile(r"^(?P<prefix>.+)_(?P<steps>\d+)_steps\.zip$")


def vecnormalize_path(model_path: str | Path) -> Path | None:
    """The VecNormalize statistics saved with a model: for an SB3 checkpoint ``<prefix>_<N>_steps.zip`` its
    ``<prefix>_vecnormalize_<N>_steps.pkl``; else ``vecnormalize.pkl`` beside it; else rl-zoo3's
    ``<stem>/vecnormalize.pkl``. None if there are none."""
    p = Path(model_path)
    m = _CHECKPOINT.match(p.name)
    candidates = [p.parent / f"{m['prefix']}_vecnormalize_{m['steps']}_steps.pkl"] if m else []
    candidates += [p.parent / VECNORM_FILE, p.parent / p.stem / VECNORM_FILE]
    return next((c for c in candidates if c.is_file()), None)


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


class SB3Governor:
    """``predict`` of an SB3 model, with observation normalisation from saved VecNormalize statistics."""

    def __init__(self, model: Any, obs_rms: Any | None = None, clip_obs: float = 10.0, epsilon: float = 1e-8) -> None:
        self.model = model
        self.obs_rms = obs_rms
        self.clip_obs = clip_obs
        self.epsilon = epsilon

    @classmethod
    def load(cls, algo: str, path: str | Path) -> SB3Governor:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"governor {algo}:{path}: model file not found (expected an SB3 .zip)")
        try:
            model = algo_class(algo).load(str(p), device="cpu")
        except Exception as e:  # SB3 raises many kinds for a corrupt file
            raise ConfigError(f"governor {algo}:{path}: not a loadable {algo} model ({type(e).__name__}: {e})") from e
        obs_rms, clip_obs, eps = None, 10.0, 1e-8
        stats = vecnormalize_path(p)
        if stats is not None:
            with open(stats, "rb") as f:
                vn = pickle.load(f)
            if getattr(vn, "norm_obs", False):
                obs_rms, clip_obs, eps = vn.obs_rms, vn.clip_obs, vn.epsilon
        return cls(model, obs_rms, clip_obs, eps)

    def normalize(self, observation: np.ndarray) -> np.ndarray:
        if self.obs_rms is None:
            return observation
        obs = (observation - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + self.epsilon)
        return np.clip(obs, -self.clip_obs, self.clip_obs).astype(np.float32)

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        return self.model.predict(
            self.normalize(np.asarray(observation, dtype=np.float32)),
            state=state,
            episode_start=episode_start,
            deterministic=deterministic,
        )


def _factory(algo: str) -> Any:
    def make(envelope: EnvelopeConfig, arg: str) -> Governor:
        if not arg:
            raise ConfigError(f"governor {algo}: expected {algo}:<path to model .zip>")
        return SB3Governor.load(algo, arg)

    return make


for _algo in ALGOS:
    register(_algo)(_factory(_algo))
