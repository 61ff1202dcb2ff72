"""Governors: rule governors (the LBW guard, literature baselines), learned SB3 governors, and their registry.

``make_governor(spec, envelope)`` builds any of them from a spec string; the CLIs hand it to the ``lbw_env``
engine, which never imports this package.
"""

from .base import available, make_governor

__all__ = ["available", "make_governor"]
