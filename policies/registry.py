"""Governors by name, so that configs and command lines can name them: ``make_governor(spec, envelope)``.

A spec is ``name`` or ``name:argument``: ``adamw``, ``lbw_guard``, ``lbw_guard:configs/governors/x.yaml``,
``skip_step:6``, ``ewm_skip:1.2``, ``plateau``, ``ppo:runs/x/best_model.zip`` (likewise ``a2c:``, ``sac:``,
``recurrent_ppo:``). The table is built here from what :mod:`.rules` and :mod:`.sb3` define; they do not know
the registry, so imports run one way (registry -> rules, sb3 -> base).

:func:`make_governor` is a module-level function on purpose: the evaluation engine pickles it into process and
Ray workers as its :data:`~lbw_env.control.protocol.GovernorFactory`.
"""

from __future__ import annotations

from collections.abc import Callable

from lbw_env.config import ConfigError
from lbw_env.control.envelope import EnvelopeConfig
from lbw_env.control.protocol import Governor

from .base import GovernorBuilder
from .rules import RULES
from .sb3 import SB3_ALGOS, load_sb3_governor


def _sb3_builder(algo: str) -> GovernorBuilder:
    def build(envelope: EnvelopeConfig, arg: str) -> Governor:
        return load_sb3_governor(algo, arg, envelope)

    return build


_REGISTRY: dict[str, GovernorBuilder] = {**RULES, **{algo: _sb3_builder(algo) for algo in SB3_ALGOS}}


def register(name: str) -> Callable[[GovernorBuilder], GovernorBuilder]:
    """Decorator for a governor of one's own: ``@register("my_rule")`` on ``(envelope, argument) -> Governor``.

    Registration lives in this process only; process and Ray workers see it if the module that registers is
    imported there too (e.g. by the suite's governor factory)."""

    def deco(builder: GovernorBuilder) -> GovernorBuilder:
        _REGISTRY[name] = builder
        return builder

    return deco


def available() -> list[str]:
    """Every registered name, sorted."""
    return sorted(_REGISTRY)


def make_governor(spec: str, envelope: EnvelopeConfig | None = None) -> Governor:
    """A governor from a spec: ``adamw``, ``lbw_guard``, ``lbw_guard:configs/governors/x.yaml``, ``ppo:run.zip``."""
    name, _, arg = spec.partition(":")
    if name not in _REGISTRY:
        raise ConfigError(f"governor {spec!r}: unknown name {name!r}; expected one of {', '.join(available())}")
    return _REGISTRY[name](envelope or EnvelopeConfig(), arg)
