"""A trained Stable-Baselines3 policy, with its observation statistics and training settings, as a governor.

``ppo:runs/<run>/best_model`` loads a governor file (:mod:`lbw_env.learning.policy_file`: a folder, its
``manifest.json``, or a governor zip): JSON, safetensors weights and hashes, so loading it runs no code from the
file, and it carries the settings it was trained with (``governor.settings``) for the engine to adopt or to
refuse a conflicting configuration (:mod:`lbw_env.control.compat`).

``ppo:runs/<run>/best_model.zip`` — SB3's own zip, with the ``vecnormalize.pkl`` that
:func:`lbw_env.learning.artifacts.vecnormalize_path` finds for it — is read by pickle, which runs any code the
files hold. It is refused unless the caller trusts the files (``trust_pickle=True``; ``--trust-pickle`` on the
command lines); ``python -m lbw_env.learning.convert`` turns a trusted one into a governor file once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from lbw_env.config import ConfigError
from lbw_env.control.compat import GovernanceSettings
from lbw_env.learning.algos import ALGOS
from lbw_env.learning.legacy import load_sb3_zip, run_residual, run_settings
from lbw_env.learning.policy_file import is_policy_file, load_policy_file
from lbw_env.learning.policy_json import ObsNormalizer, RunningStats
from lbw_env.learning.residual import ResidualConfig

SB3_ALGOS = ALGOS
"""Spec prefixes of learned governors: ``<algo>:<governor folder | manifest.json | model.zip>``."""


class SB3Governor:
    """``predict`` of an SB3 policy on observations normalised as in training, and what it was trained with.

    ``settings`` (:class:`~lbw_env.control.compat.GovernanceSettings`): decision interval, window, envelope and
    features of training (None for an SB3 zip outside a run folder). ``observation_space``, ``action_space`` and
    ``normalizer`` are what :func:`~lbw_env.control.compat.check_compatible` compares with a run.
    """

    def __init__(
        self,
        policy: Any,
        normalizer: ObsNormalizer | None = None,
        *,
        settings: GovernanceSettings | None = None,
        spec: str = "",
        residual: ResidualConfig | None = None,
    ) -> None:
        self.policy = policy
        self.normalizer = normalizer
        self.settings = settings
        self.spec = spec
        self.residual = residual
        """Set for a residual governor's learned part (its base and bounds): ``policies.make_governor`` then
        returns a :class:`~policies.residual.ResidualGovernor` over it."""

    @classmethod
    def from_file(cls, algo: str, path: str | Path, spec: str = "") -> SB3Governor:
        """A governor file (safe: no pickle, hashes checked)."""
        loaded = load_policy_file(path, algo)
        spec = spec or f"{algo}:{path}"
        return cls(loaded.policy, loaded.normalizer, settings=loaded.settings, spec=spec, residual=loaded.residual)

    @classmethod
    def from_sb3_zip(cls, algo: str, path: str | Path, *, trust_pickle: bool = False, spec: str = "") -> SB3Governor:
        """SB3's zip and its pickled statistics: refused unless ``trust_pickle`` (reading them runs pickle)."""
        spec = spec or f"{algo}:{path}"
        model, vn = load_sb3_zip(algo, path, trust_pickle=trust_pickle, spec=spec)
        residual = run_residual(path)  # a residual run's policy corrects its base (the run's config.yaml)
        settings = run_settings(path, model.policy, residual)  # the run folder's env.yaml, checked against the policy
        return cls(model.policy, ObsNormalizer.of_vecnormalize(vn), settings=settings, spec=spec, residual=residual)

    @property
    def observation_space(self) -> gym.Space:
        return self.policy.observation_space

    @property
    def action_space(self) -> gym.Space:
        return self.policy.action_space

    @property
    def obs_rms(self) -> RunningStats | None:
        """The observation statistics (VecNormalize's ``obs_rms``), None without normalisation."""
        return self.normalizer.obs_rms if self.normalizer is not None else None

    def normalize(self, observation: np.ndarray) -> np.ndarray:
        return observation if self.normalizer is None else self.normalizer.normalize(observation)

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3's policy ``predict`` (what ``model.predict`` calls), which also carries a recurrent state."""
        return self.policy.predict(
            self.normalize(np.asarray(observation, dtype=np.float32)),
            state=state,
            episode_start=episode_start,
            deterministic=deterministic,
        )


def load_sb3_governor(algo: str, path: str, *, trust_pickle: bool = False) -> SB3Governor:
    """The governor of spec ``<algo>:<path>``: a governor file, or (only with ``trust_pickle``) an SB3 zip.

    No envelope is taken: the policy acts in the action space it was trained for, which its settings name."""
    spec = f"{algo}:{path}"
    if not path:
        raise ConfigError(f"governor {algo}: expected {algo}:<governor folder, its manifest.json, or model .zip>")
    p = Path(path)
    if is_policy_file(p):
        return SB3Governor.from_file(algo, p, spec)
    if p.is_dir() or p.name == "manifest.json":
        raise ConfigError(f"governor {spec}: no governor file there (expected manifest.json)")
    if p.exists() and p.suffix != ".zip":
        raise ConfigError(f"governor {spec}: not a governor folder, manifest.json or model .zip")
    return SB3Governor.from_sb3_zip(algo, p, trust_pickle=trust_pickle, spec=spec)
