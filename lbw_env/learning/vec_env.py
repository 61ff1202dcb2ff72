"""The vectorised envs of training and evaluation: env factory, fixed-episode wrapper, VecNormalize stacks.

* :func:`make_env` — a picklable env factory. ``SubprocVecEnv`` workers start from a fresh interpreter
  (forkserver) and know nothing of ``gymnasium.register`` calls in the parent; unpickling the factory imports
  this module, and with it :mod:`lbw_env`, which registers the ids. For a residual governor the env is wrapped
  in :class:`~.residual.ResidualActions`, its base built in the worker by the ``make_governor`` factory that
  the command line passes (a module-level function, so it pickles by reference).
* :class:`FixedEpisodes` — replays the same (scenario, seed) list at every evaluation, so that evaluations at
  different training steps are paired and the best model is picked on equal terms.
* :func:`make_training_env` — ``n_envs`` monitored envs under VecNormalize (new, or a checkpoint's statistics).
* :func:`make_eval_env` — one in-process env on the fixed held-out episodes, VecNormalize frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize

import lbw_env  # noqa: F401  (registers the ids, also in env worker processes that unpickle make_env)
from lbw_env.config import ConfigError
from lbw_env.control.protocol import GovernorFactory

from .algos import discount
from .artifacts import own_vecnormalize
from .config import TrainConfig
from .objective import ObjectiveConfig, objective_env
from .residual import ResidualActions, ResidualConfig, make_rules


def make_env(
    env_id: str,
    episodes: Sequence[tuple[str, int]] | None = None,
    residual: ResidualConfig | None = None,
    make_governor: GovernorFactory | None = None,
    objective: ObjectiveConfig | None = None,
    training: bool = True,
    **kwargs: Any,
) -> gym.Env:
    """``gymnasium.make(env_id, **kwargs)`` under :class:`~.objective.Objective` when ``objective`` changes the
    reward (``training``: whether its seed cycling, return clipping and correction penalty apply; evaluation scores
    the metric), wrapped in :class:`FixedEpisodes` when ``episodes`` are given, and in
    :class:`~.residual.ResidualActions` over the base ``make_governor`` builds when ``residual`` names one.

    ``kwargs`` are :class:`~lbw_env.env.EnvConfig` keys; they are merged over the id's registered config, so
    the id's scenario pool stays unless ``scenarios`` is given.
    """
    env = gym.make(env_id, **kwargs)
    if objective is not None:
        env = objective_env(env, objective, make_governor, lambda: gym.make(env_id, **kwargs), training)
    if episodes:
        env = FixedEpisodes(env, episodes)
    if residual is not None and residual.enabled:
        rules = make_rules(residual, env.unwrapped.cfg.envelope, make_governor)  # type: ignore[attr-defined]
        penalty = objective.correction_penalty if objective is not None and training else 0.0  # shapes training only
        env = ResidualActions(env, rules, residual, penalty)
    return env


class FixedEpisodes(gym.Wrapper):
    """Every ``reset`` starts the next (scenario, seed) of a fixed list, cyclically; ``rewind()`` restarts it.

    The seed and options passed to ``reset`` are ignored: the list decides. Used for evaluation, so that every
    evaluation runs exactly the same episodes (same scenarios, initialisations, batch orders and faults).
    """

    def __init__(self, env: gym.Env, episodes: Sequence[tuple[str, int]]) -> None:
        super().__init__(env)
        if not episodes:
            raise ValueError("FixedEpisodes: expected a non-empty list of (scenario, seed)")
        self.episodes = [(str(s), int(seed)) for s, seed in episodes]
        self.index = 0

    def rewind(self) -> None:
        """The next ``reset`` starts the first episode of the list again."""
        self.index = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        scenario, episode_seed = self.episodes[self.index % len(self.episodes)]
        self.index += 1
        return self.env.reset(seed=episode_seed, options={"scenario": scenario})


def unwrap_vecnormalize(env: VecEnv | None) -> VecNormalize | None:
    """The VecNormalize layer of a VecEnv stack, if there is one."""
    while env is not None:
        if isinstance(env, VecNormalize):
            return env
        env = getattr(env, "venv", None)
    return None


def make_vec_env(
    cfg: TrainConfig,
    seed: int,
    monitor_dir: Path | None,
    append_monitor: bool = False,
    make_governor: GovernorFactory | None = None,
) -> VecEnv:
    """``n_envs`` monitored envs of the training pool (subprocess or in-process), not yet normalised."""
    vec_cls = SubprocVecEnv if cfg.vec_env == "subproc" and cfg.n_envs > 1 else DummyVecEnv
    return sb3_make_vec_env(
        make_env,
        n_envs=cfg.n_envs,
        seed=seed,
        env_kwargs={"env_id": cfg.env_id, **wrapper_kwargs(cfg, make_governor), **cfg.env_kwargs()},
        monitor_dir=str(monitor_dir) if monitor_dir is not None else None,
        monitor_kwargs={"override_existing": not append_monitor},
        vec_env_cls=vec_cls,
    )


def wrapper_kwargs(cfg: TrainConfig, make_governor: GovernorFactory | None, training: bool = True) -> dict[str, Any]:
    """The :func:`make_env` arguments of the objective and of a residual governor's correction."""
    out: dict[str, Any] = {"make_governor": make_governor, "training": training}
    if cfg.objective.active:
        out["objective"] = cfg.objective
    if cfg.residual.enabled:
        out["residual"] = cfg.residual
    return out


def make_training_env(
    cfg: TrainConfig,
    seed: int,
    monitor_dir: Path,
    resume: Path | None = None,
    make_governor: GovernorFactory | None = None,
) -> VecNormalize:
    """The training VecEnv under VecNormalize: fresh statistics, or on resume the checkpoint's own (which
    continue to update). Monitor files are appended to on resume, so that episodes of both segments stay.
    ``make_governor`` builds a residual governor's base (see :func:`make_env`)."""
    venv = make_vec_env(cfg, seed, monitor_dir, append_monitor=resume is not None, make_governor=make_governor)
    n = cfg.normalize
    if resume is None:
        return VecNormalize(
            venv,
            norm_obs=n.norm_obs,
            norm_reward=n.norm_reward,
            clip_obs=n.clip_obs,
            clip_reward=n.clip_reward,
            gamma=discount(cfg.algo, cfg.hyperparams),
        )
    stats = own_vecnormalize(resume)
    if stats.is_file():
        loaded = VecNormalize.load(str(stats), venv)
        loaded.training = True
        return loaded
    if n.norm_obs or n.norm_reward:
        venv.close()
        raise ConfigError(f"resume: {stats} not found beside the checkpoint (needed for normalize)")
    # Without statistics and without normalisation: an identity VecNormalize keeps the stack uniform.
    return VecNormalize(venv, norm_obs=False, norm_reward=False, training=True)


def make_eval_env(
    cfg: TrainConfig, monitor_dir: Path, append_monitor: bool = False, make_governor: GovernorFactory | None = None
) -> VecNormalize:
    """The evaluation VecEnv: one in-process env on the fixed held-out episodes, VecNormalize frozen.

    ``EvalCallback`` copies the training observation statistics into it before every evaluation; rewards are
    reported raw (``norm_reward=False``), so evaluation returns are in nats of loss.
    """
    episodes = cfg.eval_episodes()
    kwargs = {**wrapper_kwargs(cfg, make_governor, training=False), **cfg.env_kwargs()}
    kwargs["scenarios"] = list(dict.fromkeys(name for name, _ in episodes))
    monitor_dir.mkdir(parents=True, exist_ok=True)

    def factory() -> gym.Env:
        env = make_env(cfg.env_id, episodes, **kwargs)
        return Monitor(env, str(monitor_dir / "eval"), override_existing=not append_monitor)

    n = cfg.normalize
    return VecNormalize(
        DummyVecEnv([factory]),
        training=False,
        norm_obs=n.norm_obs,
        norm_reward=False,
        clip_obs=n.clip_obs,
        clip_reward=n.clip_reward,
    )
