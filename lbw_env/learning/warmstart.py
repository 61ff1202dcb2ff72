"""Imitation warm start: rule rollouts -> observation and return statistics, behaviour cloning, a pre-fit critic.

At 5–10 decisions a second, PPO from scratch cannot rediscover in a few thousand samples what a rule encodes.
So before RL (``TrainConfig.warm_start``):

1. :func:`collect` runs the teacher for ``episodes`` episodes of the training pool (reset seeds
   ``seed_offset + i``), in the env *as the policy sees it* (a residual policy's env takes corrections, and the
   teacher's action there is the zero correction, i.e. its base);
2. :func:`warm_statistics` feeds the rollouts to the training VecNormalize: observation statistics, and the
   discounted-return statistics that scale rewards, so the first RL updates see the scales they will keep;
3. :func:`clone` fits the policy's action to the teacher's (behaviour cloning: the mean action by MSE, or the
   log-likelihood; cross-entropy for discrete actions);
4. ``dagger_rounds`` of DAgger (Ross, Gordon and Bagnell 2011): the clone drives episodes of its own (the
   teacher's action sent with a probability that decays per round), the teacher labels every state visited
   (:func:`collect` with a ``learner``; the rule follows the action actually sent, so its memory is of the real
   run), the labels join the data and cloning runs again on all of it;
5. :func:`fit_value` fits the critic to the returns-to-go of all the rollouts (normalised rewards, under the
   training ``gamma``), so the first advantages are not a cold critic's noise.

The ``imitation`` library was the first choice; its current release (1.0.1) pins gymnasium 0.29 and
stable-baselines3 2.2, and installing it would downgrade this project's gymnasium 1.x and SB3 2.9. Behaviour
cloning on an SB3 actor-critic is a few lines of supervised learning on the policy's own distribution
(``get_distribution``, ``evaluate_actions``, ``predict_values``), which is what is done here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from lbw_env.config import ConfigError
from lbw_env.control.protocol import Governor, GovernorFactory, Teacher

from .algos import discount
from .config import TrainConfig, WarmStartConfig
from .vec_env import make_env, wrapper_kwargs


@dataclasses.dataclass
class Rollouts:
    """Decisions of a teacher: raw observations, the teacher's actions in the policy's space, rewards."""

    obs: np.ndarray
    """(N, obs_dim) float32, raw (not normalised)."""
    actions: np.ndarray
    """(N, act_dim): what the policy should answer (the zero correction for a residual policy)."""
    rewards: np.ndarray
    """(N,) float64, raw rewards of the env."""
    episode: np.ndarray
    """(N,) int: index of the episode each decision belongs to."""

    def __len__(self) -> int:
        return len(self.rewards)

    def __add__(self, other: Rollouts) -> Rollouts:
        """Both sets of decisions, ``other``'s episodes numbered after these."""
        first = int(self.episode.max()) + 1 if len(self) else 0
        return Rollouts(
            np.concatenate([self.obs, other.obs]),
            np.concatenate([self.actions, other.actions]),
            np.concatenate([self.rewards, other.rewards]),
            np.concatenate([self.episode, other.episode + first]),
        )

    def returns(self, gamma: float, rewards: np.ndarray | None = None) -> np.ndarray:
        """Returns-to-go within each episode under ``gamma`` (of ``rewards``, by default the raw ones)."""
        r = self.rewards if rewards is None else rewards
        out = np.zeros_like(r, dtype=np.float64)
        for i in range(len(r) - 1, -1, -1):
            tail = out[i + 1] if i + 1 < len(r) and self.episode[i + 1] == self.episode[i] else 0.0
            out[i] = r[i] + gamma * tail
        return out


Learner = Callable[[np.ndarray], np.ndarray]
"""A policy being taught: raw observation -> action (:func:`learner_of` an SB3 model)."""


def learner_of(model: Any, vecnormalize: Any) -> Learner:
    """The deterministic action of an SB3 ``model`` on a raw observation, normalised as in training."""

    def act(obs: np.ndarray) -> np.ndarray:
        action, _ = model.predict(vecnormalize.normalize_obs(obs[None]), deterministic=True)
        return np.asarray(action)[0]

    return act


def collect(
    env: gym.Env,
    teacher: Governor | None,
    episodes: Sequence[int | tuple[str, int]],
    learner: Learner | None = None,
    beta: float = 1.0,
    rng: np.random.Generator | None = None,
) -> Rollouts:
    """Run ``teacher`` (None: the zero action, a residual policy's base) for whole episodes of ``env``.

    ``episodes``: reset seeds (the env draws the scenario from its pool), or (scenario, seed) pairs. With a
    ``learner`` (DAgger), the teacher still labels every decision, but its action is sent only with probability
    ``beta`` (drawn from ``rng``), the learner's otherwise, and the teacher :meth:`~Teacher.follow` s what was
    sent; the rewards are those of the actions sent."""
    if learner is not None and not isinstance(teacher, Teacher):
        raise ValueError(f"collect: labelling a learner's states needs a teacher with follow(), not {teacher!r}")
    rng = rng or np.random.default_rng(0)
    obs_rows: list[np.ndarray] = []
    act_rows: list[np.ndarray] = []
    rewards: list[float] = []
    index: list[int] = []
    zero = np.zeros(env.action_space.shape or (), dtype=np.float32)  # only ever a Box: the correction space
    for i, episode in enumerate(episodes):
        scenario, seed = episode if isinstance(episode, tuple) else (None, episode)
        obs, _ = env.reset(seed=int(seed), options={"scenario": scenario} if scenario else None)
        start, done = True, False
        while not done:
            if teacher is None:
                action = zero
            else:
                action, _ = teacher.predict(obs, episode_start=np.array([start]), deterministic=True)
            obs_rows.append(np.asarray(obs, dtype=np.float32))
            act_rows.append(np.asarray(action).reshape(-1))
            if learner is not None and rng.random() >= beta:
                action = learner(np.asarray(obs, dtype=np.float32))
                teacher.follow(action)  # type: ignore[union-attr]  # a Teacher (checked above)
            obs, reward, terminated, truncated, _ = env.step(action)
            rewards.append(float(reward))
            index.append(i)
            start, done = False, terminated or truncated
    return Rollouts(np.stack(obs_rows), np.stack(act_rows), np.asarray(rewards), np.asarray(index))


def warm_statistics(vecnormalize: Any, rollouts: Rollouts, gamma: float) -> None:
    """Update a VecNormalize's observation and return statistics with the rollouts, as if it had seen them
    (the return statistics follow VecNormalize's own recursion ``ret = ret * gamma + r`` per episode)."""
    if vecnormalize.norm_obs:
        vecnormalize.obs_rms.update(rollouts.obs.astype(np.float64))
    if vecnormalize.norm_reward:
        ret, rets = 0.0, []
        for i, r in enumerate(rollouts.rewards):
            if i and rollouts.episode[i] != rollouts.episode[i - 1]:
                ret = 0.0
            ret = ret * gamma + r
            rets.append(ret)
        vecnormalize.ret_rms.update(np.asarray(rets))


def imitation_loss(policy: Any, obs: np.ndarray, actions: np.ndarray, loss: str = "mse") -> torch.Tensor:
    """The behaviour-cloning loss of ``policy`` on (normalised) ``obs`` and teacher ``actions``: the squared
    error of the mean action (``mse``, continuous) or the negative log-likelihood (``nll``; always for
    discrete action spaces)."""
    obs_t = torch.as_tensor(obs, dtype=torch.float32, device=policy.device)
    act_t = torch.as_tensor(actions, device=policy.device)
    discrete = not isinstance(policy.action_space, gym.spaces.Box)
    if discrete or loss == "nll":
        _, log_prob, _ = policy.evaluate_actions(obs_t, act_t.long() if discrete else act_t.float())
        return -log_prob.mean()
    mean = policy.get_distribution(obs_t).mode()
    return ((mean - act_t.float()) ** 2).sum(dim=-1).mean()


def value_loss(policy: Any, obs: np.ndarray, targets: np.ndarray) -> torch.Tensor:
    obs_t = torch.as_tensor(obs, dtype=torch.float32, device=policy.device)
    target = torch.as_tensor(targets, dtype=torch.float32, device=policy.device)
    return ((policy.predict_values(obs_t).flatten() - target) ** 2).mean()


def fit_minibatches(
    loss_fn: Any, params: list[torch.nn.Parameter], n: int, cfg: WarmStartConfig, epochs: int, seed: int
) -> list[float]:
    """Minibatch Adam on ``loss_fn(indices)``; the mean loss of each epoch."""
    if not params or not epochs or not n:
        return []
    optim = torch.optim.Adam(params, lr=cfg.learning_rate)
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(epochs):
        order = rng.permutation(n)
        total = 0.0
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            loss = loss_fn(idx)
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / n)
    return history


def actor_params(policy: Any, loss: str) -> list[torch.nn.Parameter]:
    """What behaviour cloning may move: the actor's layers (and the log-std for ``nll``), never the critic."""
    params = [*policy.mlp_extractor.policy_net.parameters(), *policy.action_net.parameters()]
    log_std = getattr(policy, "log_std", None)
    if loss == "nll" and isinstance(log_std, torch.nn.Parameter):
        params.append(log_std)
    if policy.share_features_extractor:
        params += list(policy.features_extractor.parameters())
    return params


def _critic_params(policy: Any) -> list[torch.nn.Parameter]:
    params = [*policy.mlp_extractor.value_net.parameters(), *policy.value_net.parameters()]
    if not policy.share_features_extractor:
        params += list(policy.vf_features_extractor.parameters())
    return params


def clone(policy: Any, obs: np.ndarray, actions: np.ndarray, cfg: WarmStartConfig, seed: int = 0) -> list[float]:
    """Behaviour cloning of ``actions`` on (normalised) ``obs``; the loss per epoch."""
    loss = "nll" if not isinstance(policy.action_space, gym.spaces.Box) else cfg.loss
    policy.set_training_mode(True)
    try:
        return fit_minibatches(
            lambda idx: imitation_loss(policy, obs[idx], actions[idx], loss),
            actor_params(policy, loss),
            len(obs),
            cfg,
            cfg.bc_epochs,
            seed,
        )
    finally:
        policy.set_training_mode(False)


def fit_value(policy: Any, obs: np.ndarray, targets: np.ndarray, cfg: WarmStartConfig, seed: int = 0) -> list[float]:
    """Fit the critic to ``targets`` (returns-to-go) on (normalised) ``obs``; the loss per epoch."""
    policy.set_training_mode(True)
    try:
        return fit_minibatches(
            lambda idx: value_loss(policy, obs[idx], targets[idx]),
            _critic_params(policy),
            len(obs),
            cfg,
            cfg.value_epochs,
            seed + 1,
        )
    finally:
        policy.set_training_mode(False)


def warm_start(
    model: Any, vecnormalize: Any, env: gym.Env, teacher: Governor | None, cfg: WarmStartConfig, gamma: float
) -> dict[str, Any]:
    """Steps 1–4 of the module docstring on ``model`` (an SB3 actor-critic) and its training ``vecnormalize``;
    a summary of what was done (decisions seen, losses before and after)."""
    seeds = [cfg.seed_offset + i for i in range(cfg.episodes)]
    data = collect(env, teacher, seeds)
    warm_statistics(vecnormalize, data, gamma)

    def normalised(r: Rollouts) -> np.ndarray:
        return vecnormalize.normalize_obs(r.obs).astype(np.float32)

    policy = model.policy
    with torch.no_grad():
        bc_before = float(imitation_loss(policy, normalised(data), data.actions, cfg.loss))
    bc = clone(policy, normalised(data), data.actions, cfg, seed=cfg.seed_offset)
    rounds = []
    for i in range(1, cfg.dagger_rounds + 1):
        first = cfg.seed_offset + cfg.episodes + (i - 1) * cfg.dagger_episodes
        visited = collect(
            env,
            teacher,
            range(first, first + cfg.dagger_episodes),
            learner_of(model, vecnormalize),
            cfg.dagger_beta**i,
            np.random.default_rng(cfg.seed_offset + i),
        )
        with torch.no_grad():  # the clone's error on the states it drives to, before it learns them
            own = float(imitation_loss(policy, normalised(visited), visited.actions, cfg.loss))
        data = data + visited
        bc = clone(policy, normalised(data), data.actions, cfg, seed=cfg.seed_offset + i)
        rounds.append({"beta": cfg.dagger_beta**i, "decisions": len(visited), "imitation_loss_on_its_states": own})
    rewards = vecnormalize.normalize_reward(data.rewards) if vecnormalize.norm_reward else data.rewards
    targets = data.returns(gamma, np.asarray(rewards, dtype=np.float64))
    value = fit_value(policy, normalised(data), targets, cfg, seed=cfg.seed_offset)
    return {
        "episodes": cfg.episodes,
        "decisions": len(data),
        "teacher": "the residual base (zero correction)" if teacher is None else cfg.teacher,
        "imitation_loss_before": bc_before,
        "imitation_loss_after": bc[-1] if bc else bc_before,
        "dagger": rounds,
        "value_loss_after": value[-1] if value else None,
    }


def teacher_of(cfg: TrainConfig, make_governor: GovernorFactory | None) -> Governor | None:
    """The teacher of ``cfg.warm_start`` (None for a residual policy: its base), checked before anything runs."""
    if cfg.residual.enabled:
        return None
    if make_governor is None:
        raise ConfigError(
            "warm_start.teacher: cloning a rule needs a governor factory (train_policy.py passes "
            "policies.make_governor; in Python: train(cfg, make_governor=policies.make_governor))"
        )
    try:
        teacher = make_governor(cfg.warm_start.teacher, cfg.env_config().envelope)
    except ConfigError as e:
        raise ConfigError(f"warm_start.teacher: {e}") from None
    if cfg.warm_start.dagger_rounds and not isinstance(teacher, Teacher):
        raise ConfigError(
            f"warm_start.teacher: {cfg.warm_start.teacher!r} cannot label another policy's states "
            "(DAgger needs a rule governor)"
        )
    return teacher


def run_warm_start(model: Any, vecnormalize: Any, cfg: TrainConfig, make_governor: GovernorFactory | None) -> dict:
    """:func:`warm_start` of a training run: the teacher on the training pool, in one in-process env."""
    teacher = teacher_of(cfg, make_governor)
    env = make_env(cfg.env_id, None, **wrapper_kwargs(cfg, make_governor), **cfg.env_kwargs())
    try:
        return warm_start(model, vecnormalize, env, teacher, cfg.warm_start, discount(cfg.algo, cfg.hyperparams))
    finally:
        env.close()
