"""Residual governors in training: a rule governor (the base) acts, and the learned policy only corrects it.

A residual governor is ``base rule + bounded learned correction`` (Silver et al. 2018, "Residual Policy
Learning"). The policy's action is a correction ``c`` in ``[-1, 1]^2``; the base's action is moved by
``bounds * c`` in the envelope's own action units (component 0: the LR move, component 1: the skip gate's
position) by the rule's action codec (``policies.base.ActionCodec.correct``), and the envelope bounds the result
as it bounds any action. Rollbacks stay the base's decisions. At ``c = 0`` the governor *is* its base.

This module holds what the learning layer needs and nothing of ``policies`` (which builds on this layer):

* :class:`ResidualConfig` — the base's spec and the correction bounds (``TrainConfig.residual``; a governor
  file records it in its manifest, so that the learned part is loaded with the same base);
* :class:`CorrectableGovernor` — what a base must offer (``RuleGovernor.respond``);
* :func:`make_rules` — the base and a switch's other rules, built and checked;
* :class:`ResidualActions` — the env wrapper of training: the policy acts in the correction space (a switch's: the
  index of a rule), the wrapper asks the rules for their actions on the same raw observation and sends the
  composition (:func:`compose`, which deployment calls too) to the env;
* :func:`start_at_base` — set the policy's output layer so that its deterministic answer is the base's
  (zero correction, or the base's choice with probability ``base_prob``): training starts exactly at the base.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from lbw_env.config import ConfigError, check, is_real
from lbw_env.control.protocol import GovernorFactory, Teacher
from lbw_env.learning.algos import ALGOS

if TYPE_CHECKING:  # the envelope loads torch; configs are read without it
    from lbw_env.control.envelope import EnvelopeConfig

CORRECTION_SIZE = 2
"""Corrected action components: the LR move and the skip gate (a rollback stays the base's decision)."""


@dataclasses.dataclass
class ResidualConfig:
    """A residual governor: which rule it corrects, and by how much at most."""

    base: str = ""
    """Spec of the base rule governor (``lbw_guard``, ``lbw_guard:<yaml>``, any registered rule); empty: the
    policy acts alone, in the env's own action space."""
    lr_bound: float = 0.25
    """Largest correction of the LR move per decision, in action units (1 = the envelope's whole slew range):
    0.25 lets the policy raise the base's LR by up to x2^0.25 = 1.19 or cut it by up to /8^0.25 = 1.68 per
    decision. Small, because the base already encodes what is safe; a correction that compounds over decisions
    while the base holds the scale still reaches any scale the envelope allows."""
    gate_bound: float = 0.5
    """Largest correction of the skip gate's position (its action range is 2 wide, "never" at the top): 0.5
    moves a 6-sigma gate by about 1.6 sigma, and can switch "never skip" to a gate of about 6.7 sigma."""
    switch: list[str] = dataclasses.field(default_factory=list)
    """Rule specs the learned part may hand a decision to instead of correcting the base (empty: a correction).
    Its action is then ``Discrete(1 + len(switch))``: 0 the base, i the i-th rule here; ``lr_bound`` and
    ``gate_bound`` are unused. Why: a bounded correction cannot ask for what only another rule does (a rollback
    after a first interval that ran hot, an LR cap read from it: ``lbw_guard_probe``), and where the choice stays
    on the base the run is the base's bit for bit, so a paired comparison with the base carries no noise from
    the scenarios where the policy leaves the base alone."""
    base_prob: float = 0.9
    """Switch only: the probability of choosing the base at every decision when training starts (the output layer
    is zeroed and its bias set so; the deterministic choice is then the base everywhere). 0.9: in a 20-decision
    tiny episode the other rules act about twice, enough to be tried, too few to wreck the run."""
    switch_at: int = -1
    """Switch only: -1, a choice at every decision; ``k >= 0``, one choice per episode, at decision ``k`` (the base
    acts before it, the chosen rule from it to the end). Why: a per-decision switch learned to hand over a few
    decisions in most runs, winning much on rare training scenarios and losing a little on the common ones (see
    docs/learned_governors.md); one choice after the first ``k`` intervals is a classification of the run from its
    own telemetry, whose credit is the whole episode's, and which is exactly the base wherever it keeps it. In
    training the learner then sees one step per episode (:class:`ResidualActions` runs the other decisions), so
    its timesteps count episodes."""

    @property
    def enabled(self) -> bool:
        return bool(self.base)

    @property
    def rules(self) -> list[str]:
        """The specs of the rules a switch chooses among, the base first."""
        return [self.base, *self.switch]

    def action_space(self) -> gym.Space:
        """What the learned part answers: a correction, or the index of the rule that acts."""
        return gym.spaces.Discrete(len(self.rules)) if self.switch else correction_space()

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.lr_bound, self.gate_bound)

    def validate(self) -> None:
        for name in ("lr_bound", "gate_bound"):
            value = getattr(self, name)
            check(
                is_real(value) and math.isfinite(value) and 0 < value <= 2,
                name,
                "a float in (0, 2] (action units; 2 spans the whole range)",
                value,
            )
        ok = isinstance(self.switch, list) and all(isinstance(s, str) and s for s in self.switch)
        check(ok, "switch", "a list of rule governor specs", self.switch)
        if self.switch:
            check(bool(self.base), "switch", "a residual.base to switch away from", self.switch)
            low = 1 / len(self.rules)  # above 1/n: the base is the most likely choice, so the deterministic one
            p = self.base_prob
            check(is_real(p) and low < p < 1, "base_prob", f"a float in ({low:g}, 1)", p)
        k = self.switch_at
        ok = isinstance(k, int) and not isinstance(k, bool) and k >= -1 and (k == -1 or bool(self.switch))
        check(ok, "switch_at", "an int >= 0 with a switch (one choice per episode, at that decision), or -1", k)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "base": self.base,
            "lr_bound": float(self.lr_bound),
            "gate_bound": float(self.gate_bound),
        }
        if self.switch:  # only then: correction manifests stay as they were
            out |= {"switch": list(self.switch), "base_prob": float(self.base_prob)}
        if self.switch_at >= 0:  # likewise for per-decision switches
            out["switch_at"] = int(self.switch_at)
        return out

    @classmethod
    def from_json(cls, data: Any, where: str) -> ResidualConfig:
        """From a governor manifest's ``residual`` entry; a one-line :class:`ConfigError` naming ``where``."""
        required, optional = {"base", "lr_bound", "gate_bound"}, {"switch", "base_prob", "switch_at"}
        if not isinstance(data, dict) or not required <= set(data) <= required | optional:
            raise ConfigError(
                f"{where}: expected a mapping with base, lr_bound, gate_bound (and a switch's switch, base_prob, "
                "switch_at), "
                f"got {data!r}"
            )
        cfg = cls(**data)
        if not isinstance(cfg.base, str) or not cfg.base:
            raise ConfigError(f"{where}: base: expected a rule governor spec, got {cfg.base!r}")
        try:
            cfg.validate()
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        return cfg


def correction_space() -> gym.spaces.Box:
    """The action space of a residual governor's learned part."""
    return gym.spaces.Box(-1.0, 1.0, (CORRECTION_SIZE,), dtype=np.float32)


@runtime_checkable
class CorrectableGovernor(Protocol):
    """A governor that can act with a correction: ``policies.base.RuleGovernor.respond``."""

    def respond(
        self,
        observation: np.ndarray,
        episode_start: np.ndarray | bool | None = None,
        correction: np.ndarray | None = None,
        bounds: tuple[float, float] = (0.0, 0.0),
    ) -> np.ndarray: ...


def make_rules(cfg: ResidualConfig, envelope: EnvelopeConfig, make_governor: GovernorFactory | None) -> list[Any]:
    """The base, then a switch's other rules (only the base for a correction), each checked in one line naming
    ``residual.base`` or ``residual.switch[i]``. A switch's rules must also follow an action they did not answer
    (:class:`~lbw_env.control.protocol.Teacher`): each keeps reasoning about the run the others steer."""
    specs = [("residual.base", cfg.base)] + [(f"residual.switch[{i}]", s) for i, s in enumerate(cfg.switch)]
    rules = [_make_rule(spec, where, envelope, make_governor) for where, spec in specs]
    if cfg.switch:
        for (where, spec), rule in zip(specs, rules):
            if not isinstance(rule, Teacher):
                raise ConfigError(f"{where}: {spec!r} cannot follow another rule's action (it has no follow())")
    return rules


def _make_rule(spec: str, where: str, envelope: EnvelopeConfig, make_governor: GovernorFactory | None) -> Any:
    if make_governor is None:
        raise ConfigError(
            f"{where}: a residual governor needs a governor factory (train_policy.py passes "
            "policies.make_governor; in Python: train(cfg, make_governor=policies.make_governor))"
        )
    if envelope.action_mode != "continuous":
        raise ConfigError(
            f"{where}: a residual governor needs env.envelope.action_mode: continuous, not {envelope.action_mode!r}"
        )
    if spec.partition(":")[0] in ALGOS:  # a learned base could name this very file: a loop, not a rule
        raise ConfigError(f"{where}: {spec!r} is a learned governor; expected a rule governor spec")
    try:
        rule = make_governor(spec, envelope)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if not isinstance(rule, CorrectableGovernor):
        raise ConfigError(f"{where}: {spec!r} is not a rule governor (it has no respond())")
    return rule


class ResidualActions(gym.Wrapper):
    """The env as a residual policy sees it: actions are corrections of the base's action, or a switch's choice.

    The rules read the raw observation (the policy may see it normalised further up the stack); each ``step``
    asks them for their actions on the last observation and sends the composition (:func:`compose`).
    ``info["residual"]`` holds what was applied — the correction (after NaN -> 0 and clipping to [-1, 1]) or the
    rule chosen — and its cost: ``penalty * |c|^2`` for a correction, ``penalty`` for a choice other than the base
    (``objective.correction_penalty``), taken off the reward (per decision handed over). A switch with
    ``switch_at = k`` is one step per episode for the learner: ``reset`` lets the base act for the first ``k``
    decisions and returns the observation the choice is made on; ``step`` runs the chosen rule to the end and
    returns the episode's whole reward (the first ``k`` decisions' included) and its last observation and info.
    """

    def __init__(self, env: gym.Env, rules: list[Any], cfg: ResidualConfig, penalty: float = 0.0) -> None:
        super().__init__(env)
        self.rules = rules
        """The base, then a switch's other rules (:func:`make_rules`)."""
        if len(self.rules) != len(cfg.rules):
            raise ValueError(f"ResidualActions: {len(cfg.rules)} rules configured, {len(self.rules)} given")
        self.cfg = cfg
        self.penalty = penalty
        self.action_space = cfg.action_space()
        self._obs: np.ndarray | None = None
        self._start = True
        self._before = 0.0
        """With ``switch_at``: the reward of the decisions the base made before the choice."""

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._obs, self._start = obs, True
        self._before = 0.0
        for _ in range(max(self.cfg.switch_at, 0)):  # one choice per episode: the base acts until it is asked
            _, reward, terminated, truncated, _ = self._send(0)
            self._before += reward
            if terminated or truncated:
                raise ConfigError(f"residual.switch_at: {self.cfg.switch_at} is not before the episode's last decision")
        return self._obs, info

    def _send(self, learned: np.ndarray | int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One decision: the composition of the rules' answers and ``learned`` sent to the env."""
        if self._obs is None:
            raise RuntimeError("ResidualActions.step() called before reset()")
        composed = compose(self.rules, self.cfg, self._obs, self._start, learned)
        self._start = False
        obs, reward, terminated, truncated, info = self.env.step(composed)
        self._obs = obs
        return obs, float(reward), terminated, truncated, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        learned = clean_action(action, self.cfg)
        obs, reward, terminated, truncated, info = self._send(learned)
        handed = int(isinstance(learned, int) and learned != 0)
        if self.cfg.switch_at >= 0:  # the chosen rule runs the rest of the episode: one step for the learner
            reward += self._before
            while not (terminated or truncated):
                obs, r, terminated, truncated, info = self._send(learned)
                reward += r
                handed += learned != 0
        if isinstance(learned, int):
            cost = -self.penalty * handed
            info["residual"] = {"choice": learned, "penalty": cost}
        else:
            cost = -self.penalty * float(np.sum(np.square(learned)))
            info["residual"] = {"correction": learned.tolist(), "penalty": cost}
        return obs, reward + cost, terminated, truncated, info


def compose(
    rules: list[Any], cfg: ResidualConfig, observation: np.ndarray, episode_start: Any, learned: np.ndarray | int
) -> np.ndarray:
    """The action a residual governor sends: the base's action moved by the correction ``learned``, or the action
    of the rule a switch chose (``learned`` its index), which every other rule then follows. Training
    (:class:`ResidualActions`) and deployment (``policies.residual.ResidualGovernor``) both act through this."""
    if not isinstance(learned, int):
        return rules[0].respond(observation, episode_start, learned, cfg.bounds)
    answers = [rule.respond(observation, episode_start) for rule in rules]
    sent = answers[learned]
    for i, rule in enumerate(rules):
        if i != learned:
            rule.follow(sent)
    return sent


def clean_action(action: Any, cfg: ResidualConfig) -> np.ndarray | int:
    """The learned part's answer as :func:`compose` takes it: a clean correction, or a switch's rule index."""
    return clean_choice(action, len(cfg.rules)) if cfg.switch else clean_correction(action)


def clean_choice(action: Any, n: int) -> int:
    """A switch's answer: one whole number in ``[0, n)`` (an int array of one element, as SB3 predicts it)."""
    a = np.asarray(action).reshape(-1)
    value = float(a[0]) if a.size == 1 and a.dtype.kind in "iuf" else math.nan
    if not (math.isfinite(value) and value.is_integer() and 0 <= value < n):
        raise ValueError(f"action: expected the index of one of {n} rules (0 to {n - 1}), got {action!r}")
    return int(value)


def clean_correction(action: Any) -> np.ndarray:
    """A correction as the composition uses it: ``CORRECTION_SIZE`` floats, NaN -> 0, clipped to [-1, 1]."""
    c = np.asarray(action, dtype=np.float64).reshape(-1)
    if c.size != CORRECTION_SIZE:
        raise ValueError(f"action: expected {CORRECTION_SIZE} correction values, got shape {np.shape(action)}")
    return np.clip(np.nan_to_num(c, nan=0.0), -1.0, 1.0)


def start_at_base(policy: Any, cfg: ResidualConfig) -> None:
    """Make the policy's deterministic answer the base's for every observation: training starts at the base.

    A correction: the output layer (weights and bias) zeroed, so the mean action is exactly 0. A switch: the
    weights zeroed and the bias set so that the base is chosen with probability ``cfg.base_prob`` and every
    other rule with an equal share of the rest (the argmax, the deterministic choice, is the base).
    SB3's actor-critic policies (PPO, A2C, recurrent PPO) end in ``action_net``; SAC's actor in ``actor.mu``.
    """
    import torch

    layer = getattr(policy, "action_net", None)
    if layer is None:
        layer = getattr(getattr(policy, "actor", None), "mu", None)
    if not isinstance(layer, torch.nn.Linear):
        raise ConfigError(f"residual: cannot zero the output layer of {type(policy).__name__}")
    with torch.no_grad():
        layer.weight.zero_()
        if layer.bias is not None:
            layer.bias.zero_()
            if cfg.switch:  # logits (b, 0, ..., 0): p(base) = e^b / (e^b + n - 1)
                others = len(cfg.switch)
                layer.bias[0] = math.log(cfg.base_prob / (1 - cfg.base_prob) * others)
