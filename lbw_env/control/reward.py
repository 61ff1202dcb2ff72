"""Reward terms: pure functions, each reported in ``info["reward_terms"]``.

The reward telescopes, so that an episode's return tracks the final validation loss:

* per decision: ``progress = L_prev - L_now``, the decrease of the smoothed training log-loss over the interval;
  summed over an episode this is ``L_0 - L_T`` (everything in between cancels);
* at the end: ``final_correction = L_T - V_T``, which turns that sum into ``L_0 - V_T``, the decrease from the
  starting loss to the measured validation loss. ``L_0`` is fixed by the scenario, so ranking episodes by
  return ranks them by final validation loss (before costs);
* costs: ``skip_cost`` per skipped step and ``rollback_cost`` per rollback (compute thrown away);
* divergence: ``divergence_penalty`` when the run ends ``terminated``.

All values are in nats of loss and scaled by ``scale``.
"""

from __future__ import annotations

import dataclasses
import math

from ..config import check

# Stand-in loss for a non-finite measurement: worse than a uniform model over any vocabulary we use.
LOSS_CAP = 20.0


@dataclasses.dataclass
class RewardConfig:
    """Weights of the reward terms."""

    scale: float = 1.0
    """Multiplier on every term (keeps returns in a range PPO's value function learns well)."""
    skip_cost: float = 0.002
    """Cost per skipped optimizer step (a skipped batch is compute thrown away)."""
    rollback_cost: float = 0.05
    """Cost per rollback."""
    divergence_penalty: float = 2.0
    """Cost when the run diverges beyond recovery (the episode ends ``terminated``)."""

    def validate(self) -> None:
        # Finite too: an infinite weight times a zero term is NaN, and every reward would be NaN.
        check(math.isfinite(self.scale) and self.scale > 0, "scale", "a positive finite float", self.scale)
        for name in ("skip_cost", "rollback_cost", "divergence_penalty"):
            value = getattr(self, name)
            check(math.isfinite(value) and value >= 0, name, "a finite float >= 0", value)


def capped(loss: float) -> float:
    """A loss usable in arithmetic: non-finite or huge values become ``LOSS_CAP``."""
    return min(loss, LOSS_CAP) if math.isfinite(loss) else LOSS_CAP


def progress(prev_loss: float, loss: float) -> float:
    """Decrease of the smoothed training loss over one decision interval."""
    return capped(prev_loss) - capped(loss)


def final_correction(train_loss: float, valid_loss: float) -> float:
    """Replace the last smoothed training loss by the measured validation loss (the telescoping end)."""
    return capped(train_loss) - capped(valid_loss)


def reward_terms(
    cfg: RewardConfig,
    prev_loss: float,
    loss: float,
    skipped: int,
    rollbacks: int,
    diverged: bool,
    valid_loss: float | None,
) -> dict[str, float]:
    """All terms of one decision's reward (already scaled); the reward is their sum."""
    terms = {
        "progress": progress(prev_loss, loss),
        "final_correction": final_correction(loss, valid_loss) if valid_loss is not None else 0.0,
        "skip_cost": -cfg.skip_cost * skipped,
        "rollback_cost": -cfg.rollback_cost * rollbacks,
        "divergence_penalty": -cfg.divergence_penalty if diverged else 0.0,
    }
    return {k: v * cfg.scale for k, v in terms.items()}
