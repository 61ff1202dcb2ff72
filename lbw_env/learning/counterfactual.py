"""A once-per-run switch fitted with every choice observed: a contextual bandit with full information.

A switch with ``residual.switch_at`` makes one choice per run (which rule runs it from decision ``k`` on), and
every training context, a (reset seed, scenario) pair of :func:`~.objective.training_contexts`, is a
deterministic run: the same initial state, batches and faults. So the choice's whole reward table can be
*computed*: run each context under each rule once, and the policy no longer has to learn it from the returns of
its own sampled choices. PPO on such a switch sees one return per run and needs many runs per context to learn
what a single pass over the contexts states exactly (sessions 15-17: ~760 runs a training, over what turned out
to be only 8 contexts, ``objective.per_scenario``).

:func:`label` runs every context under every choice but the base: the base's run is already computed by the
:class:`~.objective.Objective` for the relative return (``relative_to``, which must be the switch's base), and
its return there is the base choice's (:meth:`~.objective.Objective.base_return`); :func:`label_in_parallel`
spreads the contexts over ``n_envs`` processes. :func:`fit_choice` then maximises the policy's expected return
over the contexts, ``mean_k sum_a pi(a | s_k) (R[k, a] - R[k, 0])`` (the exact policy gradient: nothing is
sampled), with Adam on the actor, from the start at the base; :func:`run_counterfactual` does both inside
``train()`` and pre-fits the critic to the fitted policy's returns, so that RL afterwards (if any) starts warm.

Overfitting is the risk, not noise: a few hundred contexts, and returns dominated by a few runs where one rule
fails badly. ``objective.clip_return`` bounds those (as in PPO training), ``counterfactual_epochs`` bounds the
fit, and model selection on the val episodes (``eval.select: paired`` against the base) decides whether the
fitted switch ships at all.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from lbw_env.control.protocol import GovernorFactory
from lbw_env.scenarios import resolve

from .config import TrainConfig, WarmStartConfig
from .objective import Objective, training_contexts
from .vec_env import make_env, wrapper_kwargs
from .warmstart import actor_params, fit_minibatches, fit_value


@dataclasses.dataclass
class Labels:
    """Every training context under every choice."""

    contexts: list[tuple[int, str]]
    """(reset seed, scenario) of each row (scenario ``""``: the one the seed draws)."""
    obs: np.ndarray
    """(K, obs_dim) float32: the raw observation the choice is made on."""
    returns: np.ndarray
    """(K, n_choices) float64: the training return of each choice (column 0: the base)."""

    def save(self, path: Path) -> None:
        seeds = np.array([s for s, _ in self.contexts], dtype=np.int64)
        names = np.array([n for _, n in self.contexts])
        np.savez(path, seeds=seeds, scenarios=names, obs=self.obs, returns=self.returns)


def objective_of(env: gym.Env) -> Objective:
    """The :class:`~.objective.Objective` layer of an env stack."""
    layer: Any = env
    while layer is not None:
        if isinstance(layer, Objective):
            return layer
        layer = getattr(layer, "env", None)
    raise ValueError("counterfactual: the env has no Objective layer (objective.relative_to must name the base)")


def label(env: gym.Env, contexts: Sequence[tuple[int, str]]) -> Labels:
    """Run each context of ``env`` (a once-per-run switch's training env) under every choice but the base; the
    base's return comes from the objective's own run of it."""
    n = int(env.action_space.n)  # type: ignore[attr-defined]  # a switch: Discrete(n)
    objective = objective_of(env)
    obs_rows, rows = [], []
    for seed, scenario in contexts:
        options = {"scenario": scenario} if scenario else None
        row = [0.0] * n
        first = None
        for choice in range(1, n):
            obs, _ = env.reset(seed=int(seed), options=options)
            first = obs if first is None else first
            _, reward, terminated, truncated, _ = env.step(np.int64(choice))
            if not (terminated or truncated):
                raise ValueError("counterfactual: needs residual.switch_at (one step per run)")
            row[choice] = float(reward)
        row[0] = objective.base_return()
        obs_rows.append(np.asarray(first, dtype=np.float32))
        rows.append(row)
    return Labels(list(contexts), np.stack(obs_rows), np.asarray(rows, dtype=np.float64))


def _label_worker(cfg: TrainConfig, make_governor: GovernorFactory | None, contexts: list[tuple[int, str]]) -> Labels:
    """One process's share of :func:`label_in_parallel` (a fresh interpreter: threads set as in training)."""
    torch.set_num_threads(cfg.threads)  # the ids are registered: unpickling this function imported lbw_env
    env = make_env(cfg.env_id, None, **wrapper_kwargs(cfg, make_governor), **cfg.env_kwargs())
    try:
        return label(env, contexts)
    finally:
        env.close()


def label_in_parallel(
    cfg: TrainConfig, make_governor: GovernorFactory | None, contexts: Sequence[tuple[int, str]], workers: int
) -> Labels:
    """:func:`label` over ``workers`` processes (contexts dealt round-robin); rows in the order of ``contexts``."""
    contexts = list(contexts)
    if workers <= 1:
        return _label_worker(cfg, make_governor, contexts)
    shares = [contexts[i::workers] for i in range(workers)]
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))
    spawn = multiprocessing.get_context("spawn")  # torch in a forked child of a threaded parent can hang
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=spawn) as pool:
        parts = list(pool.map(_label_worker, [cfg] * workers, [make_governor] * workers, shares))
    obs = np.empty((len(contexts), *parts[0].obs.shape[1:]), dtype=parts[0].obs.dtype)
    returns = np.empty((len(contexts), parts[0].returns.shape[1]), dtype=parts[0].returns.dtype)
    for i, part in enumerate(parts):  # share i holds rows i, i + workers, ...
        obs[i::workers], returns[i::workers] = part.obs, part.returns
    return Labels(contexts, obs, returns)


def expected_gain(policy: Any, obs: np.ndarray, returns: np.ndarray) -> torch.Tensor:
    """``mean_k sum_a pi(a | obs_k) (returns[k, a] - returns[k, 0])`` of a discrete SB3 ``policy`` on (normalised)
    ``obs``: its expected return over the contexts, relative to the base's."""
    gains = returns - returns[:, :1]
    obs_t = torch.as_tensor(obs, dtype=torch.float32, device=policy.device)
    probs = policy.get_distribution(obs_t).distribution.probs
    return (probs * torch.as_tensor(gains, dtype=torch.float32, device=policy.device)).sum(dim=1).mean()


def fit_choice(policy: Any, obs: np.ndarray, returns: np.ndarray, cfg: WarmStartConfig, seed: int = 0) -> list[float]:
    """Maximise the expected return over the contexts (relative to the base, column 0) on the actor; the mean
    negative expected gain of each epoch."""
    policy.set_training_mode(True)
    try:
        return fit_minibatches(
            lambda idx: -expected_gain(policy, obs[idx], returns[idx]),
            actor_params(policy, "nll"),
            len(obs),
            cfg,
            cfg.counterfactual_epochs,
            seed,
        )
    finally:
        policy.set_training_mode(False)


def run_counterfactual(
    model: Any, vecnormalize: Any, cfg: TrainConfig, make_governor: GovernorFactory | None, out: Path
) -> dict[str, Any]:
    """Label the training contexts (saved to ``out``), fit the switch's choice and its critic; a summary."""
    contexts = training_contexts(cfg.objective, resolve(cfg.env_config().scenarios))  # the env's pool, by name
    labels = label_in_parallel(cfg, make_governor, contexts, cfg.n_envs)
    labels.save(out)
    if vecnormalize.norm_obs:  # the states the choice is made on
        vecnormalize.obs_rms.update(labels.obs.astype(np.float64))
    obs = vecnormalize.normalize_obs(labels.obs).astype(np.float32)
    policy = model.policy
    with torch.no_grad():
        before = float(expected_gain(policy, obs, labels.returns))
    history = fit_choice(policy, obs, labels.returns, cfg.warm_start, seed=cfg.warm_start.seed_offset)
    with torch.no_grad():
        choice = policy.get_distribution(torch.as_tensor(obs, device=policy.device)).mode().cpu().numpy()
    chosen = labels.returns[np.arange(len(choice)), choice]
    scaled = vecnormalize.normalize_reward(chosen) if vecnormalize.norm_reward else chosen
    targets = np.asarray(scaled, dtype=np.float64)
    value = fit_value(policy, obs, targets, cfg.warm_start, seed=cfg.warm_start.seed_offset)
    best = labels.returns.max(axis=1) - labels.returns[:, 0]
    return {
        "contexts": len(labels.contexts),
        "runs": len(labels.contexts) * (labels.returns.shape[1] - 1),
        "labels": out.name,
        "expected_gain_before": before,
        "expected_gain_after": -history[-1] if history else before,
        "argmax_gain": float(np.mean(chosen - labels.returns[:, 0])),
        "handed_over": float(np.mean(choice != 0)),
        "oracle_gain": float(np.mean(best)),
        "value_loss_after": value[-1] if value else None,
    }
