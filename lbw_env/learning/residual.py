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
* :class:`ResidualActions` — the env wrapper of training: the policy acts in the correction space, the wrapper
  asks the base for its action on the same raw observation and sends the composed action to the env;
* :func:`zero_correction` — zero the policy's output layer, so that training starts exactly at the base.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from lbw_env.config import ConfigError, check, is_real
from lbw_env.control.protocol import GovernorFactory
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

    @property
    def enabled(self) -> bool:
        return bool(self.base)

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

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "lr_bound": float(self.lr_bound), "gate_bound": float(self.gate_bound)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> ResidualConfig:
        """From a governor manifest's ``residual`` entry; a one-line :class:`ConfigError` naming ``where``."""
        if not isinstance(data, dict) or set(data) != {"base", "lr_bound", "gate_bound"}:
            raise ConfigError(f"{where}: expected a mapping with base, lr_bound, gate_bound, got {data!r}")
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


def make_base(cfg: ResidualConfig, envelope: EnvelopeConfig, make_governor: GovernorFactory | None) -> Any:
    """The base governor of ``cfg`` for ``envelope``, checked: a one-line ConfigError naming ``residual.base``."""
    if make_governor is None:
        raise ConfigError(
            "residual.base: a residual governor needs a governor factory (train_policy.py passes "
            "policies.make_governor; in Python: train(cfg, make_governor=policies.make_governor))"
        )
    if envelope.action_mode != "continuous":
        raise ConfigError(
            f"residual.base: a residual correction needs env.envelope.action_mode: continuous, "
            f"not {envelope.action_mode!r}"
        )
    if cfg.base.partition(":")[0] in ALGOS:  # a learned base could name this very file: a loop, not a rule
        raise ConfigError(f"residual.base: {cfg.base!r} is a learned governor; expected a rule governor spec")
    try:
        base = make_governor(cfg.base, envelope)
    except ConfigError as e:
        raise ConfigError(f"residual.base: {e}") from None
    if not isinstance(base, CorrectableGovernor):
        raise ConfigError(f"residual.base: {cfg.base!r} is not a rule governor (it has no respond())")
    return base


class ResidualActions(gym.Wrapper):
    """The env as a residual policy sees it: actions are corrections of the base's action.

    The base reads the raw observation (the policy may see it normalised further up the stack); each ``step``
    asks it for its action on the last observation, composes the correction in, and sends the result.
    ``info["residual"]`` holds the correction that was applied (after NaN -> 0 and clipping to [-1, 1]) and its
    cost: ``penalty * |c|^2`` is taken off the reward (``objective.correction_penalty``).
    """

    def __init__(self, env: gym.Env, base: CorrectableGovernor, cfg: ResidualConfig, penalty: float = 0.0) -> None:
        super().__init__(env)
        self.base = base
        self.cfg = cfg
        self.penalty = penalty
        self.action_space = correction_space()
        self._obs: np.ndarray | None = None
        self._start = True

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._obs, self._start = obs, True
        return obs, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._obs is None:
            raise RuntimeError("ResidualActions.step() called before reset()")
        correction = clean_correction(action)
        composed = self.base.respond(self._obs, self._start, correction, self.cfg.bounds)
        self._start = False
        obs, reward, terminated, truncated, info = self.env.step(composed)
        self._obs = obs
        cost = -self.penalty * float(np.sum(np.square(correction)))
        info["residual"] = {"correction": correction.tolist(), "penalty": cost}
        return obs, float(reward) + cost, terminated, truncated, info


def clean_correction(action: Any) -> np.ndarray:
    """A correction as the composition uses it: ``CORRECTION_SIZE`` floats, NaN -> 0, clipped to [-1, 1]."""
    c = np.asarray(action, dtype=np.float64).reshape(-1)
    if c.size != CORRECTION_SIZE:
        raise ValueError(f"action: expected {CORRECTION_SIZE} correction values, got shape {np.shape(action)}")
    return np.clip(np.nan_to_num(c, nan=0.0), -1.0, 1.0)


def zero_correction(policy: Any) -> None:
    """Zero the policy's output layer (weights and bias), so that its mean action, the deterministic
    correction, is exactly 0 for every observation: training starts at the base governor.

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
