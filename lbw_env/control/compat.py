"""One governor, one behaviour: the settings a learned governor was trained with, and whether a run fits it.

A learned governor only means something with the decision interval, window, envelope and features it was
trained with: the same weights fed a 5-interval window, or read under another action space, are a different
(untested) controller, and a mismatch used to surface deep inside the envelope as ``action: expected shape
(2,) ... got (3,)``. So a governor file carries :class:`GovernanceSettings`; a loaded learned governor exposes
them as ``governor.settings`` (rule governors have none: they are built for whatever envelope they are given).

This module lives in the control layer because its callers do: the env, the evaluation engine and the
integrations (which may not import ``policies`` or ``lbw_env.learning``) either *adopt* a governor's settings
(:meth:`GovernanceSettings.adopt`) or *refuse* a conflicting configuration with one line
(:func:`check_settings`, :func:`check_compatible`). It only reads attributes of the governor, so it needs no
knowledge of how the governor was loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import EllipsisType
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np

from ..config import ConfigError, from_dict, to_dict
from .envelope import Envelope, EnvelopeConfig
from .features import FEATURE_NAMES, OBS_BOUND
from .governance import GovernanceConfig

C = TypeVar("C", bound=GovernanceConfig)


@dataclasses.dataclass(frozen=True)
class GovernanceSettings:
    """What a learned governor was trained with: everything that shapes its observations and actions."""

    decision_interval: int
    """Optimizer steps per decision."""
    window: int
    """Decision intervals in the observation."""
    envelope: EnvelopeConfig
    """The action space and the bounds the actions were learned under."""
    healthy_ratio: float | None = 1.1
    """The rollback-target rule of training (it decides which states a rollback returns to). None: not declared
    (duck-typed settings without it, see :meth:`coerce`): not compared, and the run keeps its own."""
    features: tuple[str, ...] = FEATURE_NAMES
    """The observation's feature names, in order (per window row)."""

    @classmethod
    def coerce(cls, settings: Any, path: str = "governor settings") -> GovernanceSettings:
        """Settings from any object with ``decision_interval``, ``window`` and ``envelope`` (an
        :class:`EnvelopeConfig` or its mapping), and optionally ``healthy_ratio`` and ``features``: what a
        governor built outside ``lbw_env`` may carry. Checked like a config file; one-line :class:`ConfigError`."""
        if isinstance(settings, GovernanceSettings):
            return settings
        missing = [k for k in ("decision_interval", "window", "envelope") if not hasattr(settings, k)]
        if missing:
            raise ConfigError(f"{path}: expected decision_interval, window and envelope, missing {missing}")
        envelope = settings.envelope
        if isinstance(envelope, Mapping):
            envelope = from_dict(EnvelopeConfig, envelope, f"{path}.envelope")
        elif not isinstance(envelope, EnvelopeConfig):
            raise ConfigError(f"{path}.envelope: expected an EnvelopeConfig or a mapping, got {envelope!r}")
        healthy = getattr(settings, "healthy_ratio", None)
        config = GovernanceConfig(
            decision_interval=settings.decision_interval,
            window=settings.window,
            envelope=dataclasses.replace(envelope),
        )
        if healthy is not None:
            config.healthy_ratio = healthy
        try:
            config.validate()
        except ConfigError as e:
            raise ConfigError(f"{path}.{e}") from None
        features = tuple(getattr(settings, "features", FEATURE_NAMES))
        return dataclasses.replace(
            cls.of(config), healthy_ratio=None if healthy is None else config.healthy_ratio, features=features
        )

    @classmethod
    def of(cls, config: GovernanceConfig) -> GovernanceSettings:
        """The settings of a configuration (an :class:`~lbw_env.env.EnvConfig` is one too)."""
        return cls(
            decision_interval=config.decision_interval,
            window=config.window,
            envelope=dataclasses.replace(config.envelope),
            healthy_ratio=config.healthy_ratio,
        )

    def config(self) -> GovernanceConfig:
        """A :class:`GovernanceConfig` with these settings (for the integrations, which take one as it is)."""
        return self.adopt(GovernanceConfig())

    def adopt(self, config: C) -> C:
        """``config`` (of any :class:`GovernanceConfig` subclass) with these settings in place of its own."""
        return dataclasses.replace(
            config,
            decision_interval=self.decision_interval,
            window=self.window,
            envelope=dataclasses.replace(self.envelope),
            healthy_ratio=config.healthy_ratio if self.healthy_ratio is None else self.healthy_ratio,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision_interval": self.decision_interval,
            "window": self.window,
            "healthy_ratio": self.healthy_ratio,
            "envelope": to_dict(self.envelope),
            "features": list(self.features),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str = "settings") -> GovernanceSettings:
        """Parse :meth:`to_dict`'s output; unknown keys and mistyped values raise :class:`ConfigError`."""
        data = dict(data)
        features = data.pop("features", None)
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise ConfigError(f"{path}.features: expected a list of feature names, got {features!r}")
        config = from_dict(GovernanceConfig, data, path)
        return dataclasses.replace(cls.of(config), features=tuple(features))

    def observation_space(self) -> gym.spaces.Box:
        """The observation space these settings produce (the env's, for the same settings)."""
        return gym.spaces.Box(-OBS_BOUND, OBS_BOUND, (self.window * len(self.features),), dtype=np.float32)

    def action_space(self) -> gym.Space:
        return Envelope(self.envelope).action_space

    def conflicts(self, config: GovernanceConfig) -> list[str]:
        """What ``config`` sets differently (``key: trained with X, this run has Y``), plus a feature set that
        differs from the one this ``lbw_env`` computes. Empty when the governor fits. An undeclared
        ``healthy_ratio`` (None) is not compared."""
        out = []
        if self.features != FEATURE_NAMES:
            out.append(f"features: trained on {list(self.features)}, this lbw_env computes {list(FEATURE_NAMES)}")
        mine, theirs = self.to_dict(), GovernanceSettings.of(config).to_dict()
        for key in ("decision_interval", "window", "healthy_ratio"):
            if mine[key] != theirs[key] and mine[key] is not None:
                out.append(f"{key}: trained with {mine[key]!r}, this run has {theirs[key]!r}")
        for key, value in mine["envelope"].items():
            if theirs["envelope"].get(key) != value:
                out.append(f"envelope.{key}: trained with {value!r}, this run has {theirs['envelope'].get(key)!r}")
        return out


def settings_of(governor: object) -> GovernanceSettings | None:
    """The settings a governor was trained with (``governor.settings``, coerced: :meth:`GovernanceSettings.coerce`),
    or None (rule governors)."""
    settings = getattr(governor, "settings", None)
    return None if settings is None else GovernanceSettings.coerce(settings)


def governor_name(governor: object) -> str:
    """How error messages name a governor: its spec when it has one (``ppo:runs/x/best_governor``)."""
    return str(getattr(governor, "spec", "") or type(governor).__name__)


def check_settings(governor: object, config: GovernanceConfig) -> None:
    """Raise a one-line :class:`ConfigError` when ``config`` conflicts with the governor's training settings.

    Governors without settings (rule governors) fit any configuration. The fix is named in the message: use
    the governor's settings (``adopt``), or a governor trained for these settings.
    """
    settings = settings_of(governor)
    if settings is None:
        return
    conflicts = settings.conflicts(config)
    if conflicts:
        raise ConfigError(
            f"governor {governor_name(governor)} was trained with other settings: {'; '.join(conflicts)} "
            "(use the governor's settings, or a governor trained for these)"
        )


def describe_space(space: gym.Space) -> str:
    """``Box(3,)``, ``MultiDiscrete([5 5 2])``: kind and size, as the one-line errors name them."""
    if isinstance(space, gym.spaces.MultiDiscrete):
        return f"MultiDiscrete({np.asarray(space.nvec).tolist()})"
    if isinstance(space, gym.spaces.Discrete):
        return f"Discrete({int(space.n)})"
    return f"{type(space).__name__}{tuple(space.shape or ())}"


def space_difference(expected: gym.Space, actual: gym.Space) -> str | None:
    """Why two spaces differ (kind, size, bounds), or None when a governor of one can act in the other."""
    if type(expected) is not type(actual):
        return f"{describe_space(expected)} vs {describe_space(actual)}"
    if isinstance(expected, gym.spaces.MultiDiscrete):
        same = np.array_equal(expected.nvec, actual.nvec)  # type: ignore[attr-defined]
        return None if same else f"{describe_space(expected)} vs {describe_space(actual)}"
    if expected.shape != actual.shape:
        return f"{describe_space(expected)} vs {describe_space(actual)}"
    if isinstance(expected, gym.spaces.Box) and not (
        np.array_equal(expected.low, actual.low) and np.array_equal(expected.high, actual.high)  # type: ignore[attr-defined]
    ):
        return f"{describe_space(expected)} bounds differ"
    if isinstance(expected, gym.spaces.Discrete) and expected.n != actual.n:  # type: ignore[attr-defined]
        return f"{describe_space(expected)} vs {describe_space(actual)}"
    return None


def check_compatible(
    governor: object,
    *,
    observation_space: gym.Space,
    action_space: gym.Space,
    normalizer: str | EllipsisType | None = ...,
) -> None:
    """Raise a one-line :class:`ConfigError` unless the governor can act in a run with these spaces.

    Checked, for governors that declare them (learned ones: ``observation_space``, ``action_space``, and an
    observation normaliser ``normalizer`` with statistics ``obs_rms``): the observation space (kind, shape,
    bounds), the action space (kind and size: Box shape or MultiDiscrete nvec, bounds), and that normaliser
    statistics have the observation's shape. ``normalizer``: the normaliser kind the caller requires
    (``"VecNormalize"``, or None for raw observations); by default any. Rule governors declare no spaces: they
    encode for the envelope they were built with, so they fit any envelope.
    """
    name = governor_name(governor)
    own_obs = getattr(governor, "observation_space", None)
    if isinstance(own_obs, gym.Space):
        diff = space_difference(own_obs, observation_space)
        if diff:
            raise ConfigError(f"governor {name}: observation space {diff} (governor vs this run)")
    own_act = getattr(governor, "action_space", None)
    if isinstance(own_act, gym.Space):
        diff = space_difference(own_act, action_space)
        if diff:
            raise ConfigError(f"governor {name}: action space {diff} (governor vs this run)")
    own_norm = getattr(governor, "normalizer", None)
    kind = getattr(own_norm, "kind", None) if own_norm is not None else None
    if normalizer is not ... and kind != normalizer:
        raise ConfigError(f"governor {name}: observation normaliser {kind} vs {normalizer} (governor vs this run)")
    obs_rms = getattr(own_norm, "obs_rms", None)
    if obs_rms is not None:
        shape = tuple(np.shape(obs_rms.mean))
        if shape != tuple(observation_space.shape or ()):
            raise ConfigError(
                f"governor {name}: normaliser statistics of shape {shape}, observations of {observation_space.shape}"
            )
