"""Governors: rule governors (the LBW guard, literature baselines), learned SB3 governors, and their registry.

``make_governor(spec, envelope)`` builds any of them from a spec string; the CLIs hand it (or, for
``--trust-pickle``, ``make_trusted_governor``) to the ``lbw_env`` engine, which never imports this package.
Modules: :mod:`.base` (action codec, rule base class), :mod:`.rules`, :mod:`.oracles` (bound analyses),
:mod:`.sb3`, :mod:`.residual` (a rule plus a bounded learned correction), :mod:`.registry` (names -> builders).
"""

from .registry import available, make_governor, make_trusted_governor, register

__all__ = ["available", "make_governor", "make_trusted_governor", "register"]
