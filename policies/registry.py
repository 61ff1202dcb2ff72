"""Governors by name, so that configs and command lines can name them: ``make_governor(spec, envelope)``.

A spec is ``name`` or ``name:argument``: ``adamw``, ``lbw_guard``, ``lbw_guard:configs/governors/x.yaml``,
``skip_step:6``, ``ewm_skip:1.2``, ``plateau``, ``ppo:runs/x/best_model`` (a governor file; likewise ``a2c:``,
``sac:``, ``recurrent_ppo:``). The table is built here from what :mod:`.rules` and :mod:`.oracles` define, and
the learned names from :mod:`.sb3`; they do not know the registry, so imports run one way (registry -> rules,
sb3 -> base).

Learned governors load from governor files, which run no code. SB3's own ``.zip`` (+ ``.pkl``) is read by
pickle, which runs whatever the file holds, so it needs ``trust_pickle=True``: the keyword of
:func:`make_governor`, or :func:`make_trusted_governor` where a two-argument factory is wanted.

Both are module-level functions on purpose: the evaluation engine pickles its
:data:`~lbw_env.control.protocol.GovernorFactory` into process and Ray workers.
"""

from __future__ import annotations

from collections.abc import Callable

from lbw_env.config import ConfigError
from lbw_env.control.envelope import EnvelopeConfig
from lbw_env.control.protocol import Governor

from .base import GovernorBuilder
from .oracles import ORACLES
from .residual import with_base
from .rules import RULES
from .sb3 import SB3_ALGOS, load_sb3_governor

_REGISTRY: dict[str, GovernorBuilder] = RULES | ORACLES
"""Rule governors and registered ones. The learned names (:data:`SB3_ALGOS`) are not builders of this table:
their loading depends on ``trust_pickle``, which a rule never sees."""


def register(name: str) -> Callable[[GovernorBuilder], GovernorBuilder]:
    """Decorator for a governor of one's own: ``@register("my_rule")`` on ``(envelope, argument) -> Governor``.

    Registration lives in this process only; process and Ray workers see it if the module that registers is
    imported there too (e.g. by the suite's governor factory). The learned names are reserved."""
    if name in SB3_ALGOS:
        raise ConfigError(f"register({name!r}): reserved for learned governors ({', '.join(SB3_ALGOS)})")

    def deco(builder: GovernorBuilder) -> GovernorBuilder:
        _REGISTRY[name] = builder
        return builder

    return deco


def available() -> list[str]:
    """Every registered name, sorted."""
    return sorted({*_REGISTRY, *SB3_ALGOS})


def make_governor(spec: str, envelope: EnvelopeConfig | None = None, *, trust_pickle: bool = False) -> Governor:
    """A governor from a spec: ``adamw``, ``lbw_guard``, ``lbw_guard:configs/governors/x.yaml``, ``ppo:<folder>``.

    ``trust_pickle``: also load SB3 zips (and their ``.pkl``), which runs any code they hold; refused without.
    A learned governor ignores ``envelope``: it acts in the space it was trained for (see its ``settings``)."""
    name, _, arg = spec.partition(":")
    if name in SB3_ALGOS:  # a residual governor's file names its base rule, which this registry builds
        return with_base(load_sb3_governor(name, arg, trust_pickle=trust_pickle), make_governor)
    if name not in _REGISTRY:
        raise ConfigError(f"governor {spec!r}: unknown name {name!r}; expected one of {', '.join(available())}")
    return _REGISTRY[name](envelope or EnvelopeConfig(), arg)


def make_trusted_governor(spec: str, envelope: EnvelopeConfig | None = None) -> Governor:
    """:func:`make_governor` with ``trust_pickle=True``: the factory for ``--trust-pickle`` on the CLIs."""
    return make_governor(spec, envelope, trust_pickle=True)
