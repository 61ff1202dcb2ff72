"""The governor in real training loops.

* :mod:`lbw_env.integrations.loop` — :class:`GovernedLoop`: govern any torch optimizer in a plain loop
  (``loss.backward(); record = loop.step(loss)``), with :class:`ScheduleLR` for exact step-function schedules.
* :mod:`lbw_env.integrations.hf` — :class:`GovernedTrainer` (and :class:`GovernedTrainerMixin` for other
  ``transformers.Trainer`` subclasses): the same governance inside a Hugging Face ``Trainer`` run.

Both run every optimizer step through :class:`~lbw_env.plant.optimizer.GovernedOptimizer` (telemetry, true skip) and
every decision through :class:`~lbw_env.control.governance.Governance` (envelope, telemetry window, rollback targets):
the same code as :class:`~lbw_env.env.LBWEnv`, so a governor trained or evaluated in the env behaves the same
here, record for record.

``hf`` is imported lazily (it imports ``transformers.Trainer``, which plain loops do not need).
"""

from __future__ import annotations

from typing import Any

from .loop import GovernedLoop, IntervalReport, ScheduleLR

__all__ = ["GovernedLoop", "GovernedTrainer", "GovernedTrainerMixin", "IntervalReport", "PlantBlocks", "ScheduleLR"]


def __getattr__(name: str) -> Any:
    if name in ("GovernedTrainer", "GovernedTrainerMixin", "PlantBlocks"):
        from . import hf

        return getattr(hf, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
