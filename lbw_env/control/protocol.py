"""The governor protocol: SB3's ``predict``, so one evaluator runs rule and learned governors alike.

Every governor — plain AdamW, the LBW guard, a literature baseline, a trained SB3 model — answers
``predict(observation, state, episode_start, deterministic) -> (action, state)``, exactly like
``stable_baselines3.common.type_aliases.PolicyPredictor``. The engine (env, evaluation, integrations) only ever
holds objects of this protocol, or a :data:`GovernorFactory` that builds them from a spec string; the governors
themselves live in the top-level ``policies`` package, which builds on this layer and is never imported by it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from .envelope import EnvelopeConfig


@runtime_checkable
class Governor(Protocol):
    """Anything with SB3's ``predict`` signature."""

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]: ...


@runtime_checkable
class Teacher(Governor, Protocol):
    """A governor that can label the states another policy visits (DAgger): after each ``predict`` it is told
    the action actually sent, and keeps reasoning about the real run. Rule governors are teachers
    (:meth:`policies.base.RuleGovernor.follow`)."""

    def follow(self, action: np.ndarray) -> None: ...


GovernorFactory = Callable[[str, "EnvelopeConfig | None"], Governor]
"""``make_governor(spec, envelope)``: a governor from a spec such as ``adamw``, ``lbw_guard`` or ``ppo:run.zip``.
The CLIs pass ``policies.make_governor``; it must be a module-level function so process and Ray workers can
pickle it."""
