"""Oracles for bound analyses, not governors one would ship: what knowing the answer is worth under the envelope.

* ``fixed_scale:<x>`` — AdamW at ``x`` times the configured LR from the first action (given the tuned LR, the best
  a governor that knows it can ask for). The envelope still applies it: the first interval runs at no less than
  1/``max_cut`` of the configured LR, then ``x``.
* ``fixed_scale_rollback:<x>`` — the same, rolling that first interval back at its first decision (an oracle that
  undoes its probe).

``configs/suites/envelope_bound.yaml`` runs them (README, "The envelope's bound on a high-LR fine-tune").
"""

from __future__ import annotations

from lbw_env.control.envelope import EnvelopeConfig
from lbw_env.control.features import ObservationView
from lbw_env.control.protocol import Governor

from .base import GovernorBuilder
from .rules import ConstantGovernor, number_argument


class RollbackFirstInterval(ConstantGovernor):
    """:class:`ConstantGovernor` that asks for one rollback at its first decision with telemetry.

    The envelope bounds every decision's cut (``max_cut``), so the first interval runs at least at 1/``max_cut`` of
    the configured LR whatever a governor knows; this oracle undoes that interval (back to the starting weights,
    the only rollback target then) and holds its scale from there: what knowing the right LR is worth under the
    envelope when the configured one is far too high."""

    def reset(self) -> None:
        super().reset()
        self.rolled_back = False

    def decide(self, obs: ObservationView) -> tuple[float, float, bool]:
        rollback = obs.started and not self.rolled_back
        self.rolled_back = self.rolled_back or rollback
        return self.target, self.gate, rollback


def _fixed_scale(name: str) -> GovernorBuilder:
    """``fixed_scale:<x>`` / ``fixed_scale_rollback:<x>``: the argument is required (there is no default oracle)."""

    def build(envelope: EnvelopeConfig, arg: str) -> Governor:
        what = "the LR scale to hold (e.g. the tuned LR / the configured LR), within the envelope's scales"
        scale = number_argument(name, arg, what, envelope.lr_scale_min, envelope.lr_scale_max)
        kind = RollbackFirstInterval if name == "fixed_scale_rollback" else ConstantGovernor
        return kind(envelope, scale=scale)

    return build


ORACLES: dict[str, GovernorBuilder] = {name: _fixed_scale(name) for name in ("fixed_scale", "fixed_scale_rollback")}
"""The oracles by registered name; each takes its scale as a required argument."""
