"""What a learned governor is trained to maximise: the env's reward, aligned with the reported metric.

The env's reward telescopes (:mod:`lbw_env.control.reward`): an episode's *undiscounted* sum is
``L_0 - V_T - costs`` (initial minus final validation loss, minus skip and rollback costs), so ranking episodes
of one scenario and seed by it ranks them by final loss, the reported metric. Two things in training break that:

* a discount ``gamma < 1`` weights the per-decision progress terms and the end correction unequally, so the
  discounted return from the start is no longer ``L_0 - V_T``; ``gamma = 1`` (or ``terminal_reward``, which pays
  the whole sum at the last decision, so every episode of the same length is scaled alike) restores it;
* the end of the step budget is ``truncated`` (the env's contract), so SB3 bootstraps the last reward with
  ``gamma * V(s_T)``, a value the critic never learned (no episode continues past its budget): the return then
  carries a critic's guess. ``end_is_terminal`` tells the learner the run ends there (``terminated``).

``tests/test_objective.py`` measures the ranking on logged episodes of several governors.

A residual governor is better scored against its base than against the start (``relative_to``): the end of the
episode also pays ``V_T(base) - L_0`` for the base's run on the same scenario and seed, so the return becomes
``V_T(base) - V_T - costs``: positive exactly when the correction beat the rule. It is a per-episode constant,
so it changes no policy gradient in expectation, but it removes the scenario's difficulty from the return
(what a 100x-LR scenario costs every governor), which otherwise dominates the variance. The base's run is
computed in a shadow env (same config, same reset seed and scenario: the same initial state and batches) and
cached by (seed, scenario); with ``seeds`` > 0 the training episodes cycle through a finite set of reset seeds,
so after the first pass base runs cost nothing. ``correction_penalty`` charges ``penalty * |c|^2`` per decision
for a residual correction ``c`` (keeps it small where it does not pay).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from lbw_env.config import ConfigError, check
from lbw_env.control.protocol import Governor, GovernorFactory
from lbw_env.control.reward import capped

if TYPE_CHECKING:  # the envelope loads torch; configs are read without it
    from lbw_env.control.envelope import EnvelopeConfig

BASE_CACHE = 4096
"""Base runs remembered (final loss and return, a float pair each): more than any training context set here."""


@dataclasses.dataclass
class ObjectiveConfig:
    """How the env's reward is turned into what the learner maximises (see the module docstring)."""

    end_is_terminal: bool = False
    """Report the end of the step budget to the learner as ``terminated``: no bootstrap from a value the critic
    never learned. Off by default only so that earlier configs train as before; the residual config sets it."""
    terminal_reward: bool = False
    """Pay the episode's whole reward at its last decision (0 before): the return under any ``gamma`` is then
    ``gamma^(T-1)`` x the undiscounted sum, the same for all full-length episodes, so it ranks like the metric.
    With ``gamma = 1`` the dense reward already does, with better credit assignment."""
    relative_to: str = ""
    """Rule governor spec (``lbw_guard`` ...): also pay ``V_T(base) - L_0`` at the end, so the return is the
    base's final loss minus the policy's (minus costs). Empty: the plain reward."""
    seeds: int = 0
    """> 0: training episodes reset with seeds ``seed_offset + k``, k drawn from ``range(seeds)`` (the base run of
    each is computed once); 0: the env's own seed stream (every base run is new). The reset seed also draws the
    scenario from the env's pool, so without ``per_scenario`` this is ``seeds`` (scenario, seed) contexts *in
    all*, whatever the pool's size: 8 seeds over a 32-scenario pool train on 8 of its scenarios."""
    per_scenario: bool = False
    """With ``seeds``: every scenario of the pool with each of the ``seeds`` seeds (``len(pool) x seeds``
    contexts, drawn uniformly; the reset names the scenario). Off by default only so that earlier configs train
    as before: they set ``seeds: 8`` believing it meant 8 per scenario (see :func:`training_contexts`)."""
    seed_offset: int = 1_000
    """First reset seed of ``seeds`` (apart from the warm start's 5 000 + i and evaluation's 10 000 + i)."""
    correction_penalty: float = 0.0
    """Residual policies: reward ``- penalty * |c|^2`` per decision for the correction ``c`` in [-1, 1]^2 (a switch:
    ``- penalty`` per decision handed over). Training episodes only, like ``clip_return``."""
    clip_return: float = 0.0
    """> 0 (with ``relative_to``): the episode's return (the base's final loss minus ours, minus costs) is clipped
    to ``[-clip_return, clip_return]`` by a correction paid at its last decision. Why: over a training distribution
    with rare scenarios where one rule fails badly (a from-scratch run at 100x, +1.5 nats for the other rule), the
    mean return is won there, and a policy that trades a small loss on every common episode for those wins scores
    well in training and loses on test scenarios, where the metric weighs each scenario alike. Clipped, an episode
    counts at most ``clip_return``, so the common episodes decide. Training episodes only: held-out evaluation (model
    selection) scores the unclipped return, which ranks runs like the reported metric. 0: off."""

    @property
    def active(self) -> bool:
        return self.end_is_terminal or self.terminal_reward or bool(self.relative_to) or self.seeds > 0

    def validate(self) -> None:
        check(self.seeds >= 0, "seeds", "an int >= 0 (0: the env's own seeds)", self.seeds)
        check(self.seed_offset >= 0, "seed_offset", "an int >= 0", self.seed_offset)
        check(isinstance(self.per_scenario, bool), "per_scenario", "true or false", self.per_scenario)
        check(not self.per_scenario or self.seeds > 0, "per_scenario", "false unless seeds > 0", self.per_scenario)
        p = self.correction_penalty
        check(math.isfinite(p) and p >= 0, "correction_penalty", "a finite float >= 0", p)
        c = self.clip_return
        check(math.isfinite(c) and c >= 0, "clip_return", "a finite float >= 0 (0: off)", c)
        check(not c or bool(self.relative_to), "clip_return", "0 unless relative_to names a base", c)


class Objective(gym.Wrapper):
    """The env's reward as :class:`ObjectiveConfig` asks; sits directly on the env (below FixedEpisodes), so
    that it sees every reset's seed and scenario.

    ``info["objective"]`` at the end of an episode: ``base_valid_loss`` (with ``relative_to``) and the terms
    added. ``shadow`` is an env of the same config for the base's runs; ``base`` the rule that drives it.
    """

    def __init__(
        self,
        env: gym.Env,
        cfg: ObjectiveConfig,
        base: Governor | None = None,
        shadow: gym.Env | None = None,
        training: bool = True,
    ) -> None:
        super().__init__(env)
        if cfg.relative_to and (base is None or shadow is None):
            raise ConfigError("objective.relative_to: needs the base governor and a shadow env")
        self.cfg = cfg
        self.base = base
        self.shadow = shadow
        self.training = training
        self._rng: np.random.Generator | None = None
        self._key: tuple[int, str] | None = None
        self._pending = 0.0
        self._return = 0.0
        self._cache: collections.OrderedDict[tuple[int, str], tuple[float, float]] = collections.OrderedDict()
        self.base_runs = 0
        """Base episodes actually run (the rest came from the cache)."""

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if self._rng is None:
            self._rng = np.random.default_rng(seed)
        if seed is None and self.training and self.cfg.seeds:
            contexts = training_contexts(self.cfg, self.env.unwrapped.pool)  # type: ignore[attr-defined]
            seed, scenario = contexts[int(self._rng.integers(len(contexts)))]
            if scenario and "scenario" not in (options or {}):
                options = {**(options or {}), "scenario": scenario}
        elif seed is None and self.cfg.relative_to:  # an explicit seed, so that the shadow run is the same run
            seed = int(self._rng.integers(2**31 - 1))
        obs, info = self.env.reset(seed=seed, options=options)
        scenario = str((options or {}).get("scenario", ""))
        self._key = (int(seed), scenario) if seed is not None else None
        self._pending = self._return = 0.0
        return obs, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        reward = float(reward)
        final = info.get("final")
        if final is not None:
            added = {}
            if self.cfg.relative_to:
                base_loss = self._base_loss()
                scale = self.env.unwrapped.cfg.reward.scale  # type: ignore[attr-defined]
                added["relative_to_base"] = (capped(base_loss) - capped(final["initial_valid_loss"])) * scale
                reward += added["relative_to_base"]
                if self.cfg.clip_return and self.training:  # a training device: evaluation scores the metric
                    total = self._return + reward
                    added["clip"] = self._clipped(total) - total
                    reward += added["clip"]
                info["objective"] = {"base_valid_loss": base_loss, **added}
            else:
                info["objective"] = added
            if self.cfg.end_is_terminal and truncated:
                terminated, truncated = True, False
        self._return += reward
        if self.cfg.terminal_reward:
            self._pending += reward
            reward = 0.0
            if terminated or truncated:
                reward, self._pending = self._pending, 0.0
        return obs, reward, terminated, truncated, info

    def _base_loss(self) -> float:
        """The base's final validation loss on this episode's seed and scenario (cached)."""
        return self._base_run()[0]

    def base_return(self) -> float:
        """The return the base's own run of this episode's seed and scenario earns here (its env rewards plus
        ``V_T(base) - L_0``: minus its skip and rollback costs; clipped like any training return). It is what a
        once-per-run switch that keeps its base is paid (:mod:`.counterfactual`), without running it again."""
        return self._clipped(self._base_run()[1])

    def _clipped(self, total: float) -> float:
        """An episode's return as training counts it: clipped to ``±clip_return`` (evaluation: unchanged)."""
        if not (self.cfg.clip_return and self.training):
            return total
        return min(max(total, -self.cfg.clip_return), self.cfg.clip_return)

    def _base_run(self) -> tuple[float, float]:
        """(final validation loss, unclipped relative return) of the base's run of this episode (cached)."""
        assert self._key is not None and self.base is not None and self.shadow is not None
        if self._key in self._cache:
            self._cache.move_to_end(self._key)
            return self._cache[self._key]
        seed, scenario = self._key
        obs, _ = self.shadow.reset(seed=seed, options={"scenario": scenario} if scenario else None)
        start, info, total = True, dict[str, Any](), 0.0
        while "final" not in info:
            action, _ = self.base.predict(obs, episode_start=np.array([start]), deterministic=True)
            obs, reward, _, _, info = self.shadow.step(action)
            total += float(reward)
            start = False
        self.base_runs += 1
        final = info["final"]
        loss = float(final["valid_loss"])
        scale = self.shadow.unwrapped.cfg.reward.scale  # type: ignore[attr-defined]
        total += (capped(loss) - capped(final["initial_valid_loss"])) * scale
        self._cache[self._key] = (loss, total)
        if len(self._cache) > BASE_CACHE:
            self._cache.popitem(last=False)
        return loss, total

    def close(self) -> None:
        if self.shadow is not None:
            self.shadow.close()
        super().close()


def training_contexts(cfg: ObjectiveConfig, pool: Sequence[Any]) -> list[tuple[int, str]]:
    """The (reset seed, scenario) pairs training episodes are drawn from with ``seeds`` > 0 (scenario ``""``: the
    one the reset seed draws from ``pool``, a list of :class:`~lbw_env.scenarios.Scenario`)."""
    seeds = [cfg.seed_offset + k for k in range(cfg.seeds)]
    if not cfg.per_scenario:
        return [(seed, "") for seed in seeds]
    return [(seed, s.name) for s in pool for seed in seeds]


def objective_env(
    env: gym.Env,
    cfg: ObjectiveConfig,
    make_governor: GovernorFactory | None,
    make_shadow: Any,
    training: bool,
) -> gym.Env:
    """``env`` under :class:`Objective` when ``cfg`` changes anything (else ``env`` as it is)."""
    if not cfg.active:
        return env
    base = shadow = None
    if cfg.relative_to:
        base = relative_base(cfg, env.unwrapped.cfg.envelope, make_governor)  # type: ignore[attr-defined]
        shadow = make_shadow()
    return Objective(env, cfg, base, shadow, training)


def relative_base(cfg: ObjectiveConfig, envelope: EnvelopeConfig, make_governor: GovernorFactory | None) -> Governor:
    """The rule of ``relative_to`` for ``envelope``; a one-line ConfigError naming ``objective.relative_to``."""
    if make_governor is None:
        raise ConfigError(
            "objective.relative_to: needs a governor factory (train_policy.py passes policies.make_governor)"
        )
    try:
        return make_governor(cfg.relative_to, envelope)
    except ConfigError as e:
        raise ConfigError(f"objective.relative_to: {e}") from None
