"""A trained Stable-Baselines3 model, with its VecNormalize statistics, as a governor.

``evaluate.py --governors ppo:runs/<run>/best_model.zip`` loads the model with the algorithm named by the
prefix (the class table of :mod:`lbw_env.learning.algos`, the one training used) and normalises observations
exactly as during training, with the statistics that :func:`lbw_env.learning.artifacts.vecnormalize_path` finds
for it: ``vecnormalize.pkl`` beside ``best_model.zip``, a checkpoint's own ``<prefix>_vecnormalize_<N>_steps.pkl``,
or an rl-zoo3 model's ``<log>/<env>/vecnormalize.pkl``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from lbw_env.config import ConfigError
from lbw_env.control.envelope import EnvelopeConfig
from lbw_env.learning.algos import ALGOS, algo_class
from lbw_env.learning.artifacts import vecnormalize_path

SB3_ALGOS = ALGOS
"""Spec prefixes of learned governors: ``<algo>:<model.zip>``."""


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


def load_sb3_governor(algo: str, path: str, envelope: EnvelopeConfig | None = None) -> SB3Governor:
    """The governor of spec ``<algo>:<path>``. ``envelope`` is accepted for a uniform builder signature and not
    used: the model's action space is the one it was trained with, and the env's envelope bounds its actions."""
    if not path:
        raise ConfigError(f"governor {algo}: expected {algo}:<path to model .zip>")
    return SB3Governor.load(algo, path)
