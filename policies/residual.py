"""Residual governors: a rule governor (the base) plus a bounded learned correction.

``ResidualGovernor(rules, learned, config)`` answers ``predict`` as the base would, with the base's action moved
by ``config.bounds * c``, where ``c`` in ``[-1, 1]^2`` is the learned policy's (deterministic) answer on the same
observation: component 0 moves the LR, component 1 the skip gate, in the envelope's action units
(:meth:`policies.base.ActionCodec.correct`); rollbacks stay the base's. The envelope bounds the result like any
action. With ``c = 0`` (a zero-initialised policy, or ``learned=None``) it is exactly its base: the base's own
code path runs (:meth:`policies.base.RuleGovernor.respond`).

Training composes the same way (:class:`lbw_env.learning.residual.ResidualActions` calls the same
:func:`~lbw_env.learning.residual.compose`), so a policy acts at evaluation exactly as it acted in training. A
trained residual governor is a governor file whose manifest names its base (``ppo:<folder>``); :func:`with_base`
rebuilds it with that base.

A switch (``config.switch``) composes through the same function (:func:`lbw_env.learning.residual.compose`): the
learned part's answer is the index of the rule that acts (0: the base), and the other rules follow its action.
With ``config.switch_at = k`` it answers once per episode, at decision ``k`` (the base acts before; the chosen rule
from then on), as it was trained.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from lbw_env.config import ConfigError
from lbw_env.control.compat import GovernanceSettings
from lbw_env.control.envelope import Envelope, EnvelopeConfig
from lbw_env.control.protocol import Governor, GovernorFactory
from lbw_env.learning.residual import ResidualConfig, clean_action, compose, make_rules

from .base import RuleGovernor, one_environment


class ResidualGovernor:
    """``predict`` = base rule's action + ``bounds`` x the learned correction (zero: the base exactly), or, for a
    switch, the action of the rule the learned part picks (``rules``: the base, then a switch's other rules)."""

    def __init__(
        self,
        rules: list[RuleGovernor],
        learned: Governor | None,
        config: ResidualConfig,
        *,
        settings: GovernanceSettings | None = None,
        spec: str = "",
    ) -> None:
        if rules[0].envelope.action_mode != "continuous":
            raise ConfigError("residual: a residual correction needs envelope.action_mode: continuous")
        self.rules = rules
        if len(self.rules) != len(config.rules):
            raise ConfigError(f"residual: {len(config.rules)} rules configured, {len(self.rules)} given")
        self.learned = learned
        self.config = config
        self.settings = settings if settings is not None else getattr(learned, "settings", None)
        self.spec = spec or getattr(learned, "spec", "") or f"residual:{config.base}"
        self._decision = 0
        self._chosen: np.ndarray | int = 0
        """A switch with ``switch_at``: decisions of this episode so far, and the rule chosen at ``switch_at``."""

    @property
    def base(self) -> RuleGovernor:
        """The rule the learned part corrects, or a switch's choice 0."""
        return self.rules[0]

    # What check_compatible compares with a run: the learned part's observations and normaliser, and the
    # actions this governor sends (the envelope's, not the correction's).
    @property
    def observation_space(self) -> gym.Space | None:
        return getattr(self.learned, "observation_space", None)

    @property
    def action_space(self) -> gym.Space:
        return Envelope(self.base.envelope).action_space

    @property
    def normalizer(self) -> Any:
        return getattr(self.learned, "normalizer", None)

    def correction(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None,
        episode_start: np.ndarray | None,
        deterministic: bool,
    ) -> tuple[np.ndarray | int, tuple[np.ndarray, ...] | None]:
        """The learned correction (a switch's choice) for one observation, and its recurrent state; without a
        learned part, the base's own answer (zero, or 0)."""
        if self.learned is None:
            return (0 if self.config.switch else np.zeros(2)), state
        c, state = self.learned.predict(observation, state, episode_start, deterministic)
        return clean_action(c, self.config), state

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        row, batched = one_environment(observation, "residual governors")
        at = self.config.switch_at
        if at < 0:
            c, state = self.correction(row, state, episode_start, deterministic)
        else:  # one choice per episode, at decision `at`: the base before it, the chosen rule from it on
            if episode_start is not None and bool(np.asarray(episode_start).any()):
                self._decision, self._chosen = 0, 0
            if self._decision == at:
                self._chosen, state = self.correction(row, state, episode_start, deterministic)
            c = self._chosen
            self._decision += 1
        action = compose(self.rules, self.config, row, episode_start, c)
        return (action[None] if batched else action), state


def residual_governor(
    config: ResidualConfig,
    envelope: EnvelopeConfig,
    learned: Governor | None,
    make_governor: GovernorFactory,
    spec: str = "",
) -> ResidualGovernor:
    """A residual governor over ``config.base`` (and a switch's other rules), built by ``make_governor`` for
    ``envelope``."""
    rules = make_rules(config, envelope, make_governor)
    for spec, rule in zip(config.rules, rules):
        if not isinstance(rule, RuleGovernor):
            raise ConfigError(f"residual: {spec!r} is not a rule governor")
    return ResidualGovernor(rules, learned, config, spec=spec)


def with_base(learned: Any, make_governor: GovernorFactory) -> Any:
    """A loaded learned governor as it acts: with its base if its file records one, else as it is."""
    config = getattr(learned, "residual", None)
    if config is None:
        return learned
    if learned.settings is None:  # pragma: no cover - governor files always carry settings
        raise ConfigError(f"governor {learned.spec}: a residual governor without training settings")
    return residual_governor(config, learned.settings.envelope, learned, make_governor, spec=learned.spec)
