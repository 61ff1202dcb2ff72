"""What rule governors share: the action codec (intent -> action) and the :class:`RuleGovernor` base class.

Every governor answers SB3's ``predict`` (the protocol is :class:`lbw_env.control.protocol.Governor`); rule
governors reason instead in the envelope's own units — a target LR scale, a skip gate in z-units, a rollback —
and this module turns that intent into an action of the env's space, exactly as the envelope will decode it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from lbw_env.control.envelope import Envelope, EnvelopeConfig
from lbw_env.control.features import ObservationView
from lbw_env.control.protocol import Governor

GovernorBuilder = Callable[[EnvelopeConfig, str], Governor]
"""A registry entry: ``(envelope, argument) -> Governor``; the argument is what follows ``name:`` in a spec."""


def one_environment(observation: np.ndarray, who: str) -> tuple[np.ndarray, bool]:
    """The one observation of a ``predict`` call and whether it came batched (SB3's ``(n_envs, dim)``): governors
    that keep per-episode memory refuse several environments at once, with one line naming ``who``."""
    obs = np.asarray(observation)
    batched = obs.ndim == 2
    if batched and obs.shape[0] != 1:
        raise ValueError(f"{who} keep per-episode memory: give them one environment at a time")
    return (obs[0] if batched else obs), batched


class ActionCodec:
    """Turns a rule governor's intent (target LR scale, skip gate) into an action of the env's space.

    The envelope still bounds the result; the codec only inverts its decoding, so that rules can be
    written in the envelope's own units.
    """

    def __init__(self, envelope: EnvelopeConfig) -> None:
        self.cfg = envelope
        # The envelope's own decoding tables and move law: the codec inverts them, it does not restate them.
        self._envelope = Envelope(envelope)
        self._gates = self._envelope.gates
        self._moves = self._envelope.lr_moves

    def encode(self, current_scale: float, target_scale: float, gate: float, rollback: bool = False) -> np.ndarray:
        """The action that moves the LR scale from ``current_scale`` toward ``target_scale`` with ``gate``."""
        c = self.cfg
        move = self._move(target_scale / max(current_scale, 1e-12))
        if c.action_mode == "continuous":
            if math.isinf(gate):
                g = 1.0
            else:
                frac = (min(max(gate, c.gate_min), c.gate_max) - c.gate_min) / max(c.gate_max - c.gate_min, 1e-12)
                g = min(frac * (c.never_above + 1.0) - 1.0, c.never_above - 1e-6)
            action = [move, g] + ([1.0 if rollback else -1.0] if c.rollback_action else [])
            return np.asarray(action, dtype=np.float32)
        lr_bin = int(np.argmin(np.abs(self._moves - move)))
        gate_bin = (
            len(self._gates) - 1 if math.isinf(gate) else int(np.argmin(np.abs(np.array(self._gates[:-1]) - gate)))
        )
        bins = [lr_bin, gate_bin] + ([int(rollback)] if c.rollback_action else [])
        return np.asarray(bins, dtype=np.int64)

    def _move(self, ratio: float) -> float:
        """The action value in [-1, 1] whose move is closest to the multiplicative ``ratio``."""
        ratio = max(ratio, 1e-12)
        bound = self.cfg.max_factor if ratio >= 1 else self.cfg.max_cut
        return max(-1.0, min(1.0, math.log(ratio) / math.log(bound)))

    def correct(self, action: np.ndarray, correction: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
        """``action`` moved by a learned ``correction`` in [-1, 1]^2, scaled by ``bounds``, in the envelope's own
        action units: component 0 (the LR move) and component 1 (the skip gate's position, "never" at the top);
        the rollback component is left as it is. Continuous actions only: a correction of discrete bins would
        have no size. The result is clipped to the action space, and the envelope bounds it further."""
        if self.cfg.action_mode != "continuous":
            raise ValueError("a residual correction needs envelope.action_mode: continuous")
        out = np.asarray(action, dtype=np.float64).copy()
        out[:2] = np.clip(
            out[:2] + np.asarray(bounds, dtype=np.float64) * np.asarray(correction, np.float64)[:2], -1, 1
        )
        return out.astype(np.float32)

    def scale_of(self, current_scale: float, action: np.ndarray) -> float:
        """The LR scale the envelope will reach from ``current_scale`` with ``action`` (a continuous action or
        discrete bins; NaN and out-of-range values as the envelope treats them)."""
        c = self.cfg
        if c.action_mode == "continuous":
            move = float(np.asarray(action, dtype=np.float32)[0])  # as the envelope reads it
            move = 0.0 if math.isnan(move) else min(max(move, -1.0), 1.0)
        else:
            move = float(self._moves[int(np.clip(np.asarray(action).reshape(-1)[0], 0, len(self._moves) - 1))])
        return min(max(current_scale * self._envelope.move_factor(move), c.lr_scale_min), c.lr_scale_max)

    def scale_after(self, current_scale: float, target_scale: float) -> float:
        """The LR scale the envelope will reach from ``current_scale`` when asked for ``target_scale``."""
        c = self.cfg
        move = self._move(target_scale / max(current_scale, 1e-12))
        if c.action_mode == "discrete":
            move = float(self._moves[int(np.argmin(np.abs(self._moves - move)))])
        return min(max(current_scale * self._envelope.move_factor(move), c.lr_scale_min), c.lr_scale_max)


class RuleGovernor:
    """Base class of hand-written governors: per-episode memory reset on ``episode_start``.

    Subclasses implement :meth:`decide` on an :class:`ObservationView` and return (target LR scale, gate,
    rollback). The base class tracks the LR scale the envelope will apply (as the envelope computes it), so
    rules reason in absolute scales.
    """

    def __init__(self, envelope: EnvelopeConfig | None = None) -> None:
        self.envelope = envelope or EnvelopeConfig()
        self.codec = ActionCodec(self.envelope)
        self.reset()

    def reset(self) -> None:
        self.scale = self._scale_before = self.envelope.lr_scale_init
        self._answer: np.ndarray | None = None

    def decide(self, obs: ObservationView) -> tuple[float, float, bool]:
        raise NotImplementedError

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        row, batched = one_environment(observation, "rule governors")
        action = self.respond(row, episode_start)
        return (action[None] if batched else action), state

    def respond(
        self,
        observation: np.ndarray,
        episode_start: np.ndarray | bool | None = None,
        correction: np.ndarray | None = None,
        bounds: tuple[float, float] = (0.0, 0.0),
    ) -> np.ndarray:
        """The action for one (unbatched) observation; with a non-zero ``correction`` (a residual governor's
        learned part, see :mod:`policies.residual`), the rule's action moved by :meth:`ActionCodec.correct`.

        The LR scale tracked for the rules is the one the envelope will reach with the action actually sent, so
        that the rule reasons about the real run. A zero (or absent) correction takes exactly the rule's own path.
        """
        view = ObservationView(observation)
        if (episode_start is not None and bool(np.asarray(episode_start).reshape(-1)[0])) or not view.started:
            self.reset()
        self._scale_before = self.scale
        target, gate, rollback = self.decide(view)
        action = self.codec.encode(self.scale, target, gate, rollback)
        if correction is None or not np.any(correction):
            self.scale = self.codec.scale_after(self.scale, target)
        else:
            action = self.codec.correct(action, correction, bounds)
            self.scale = self.codec.scale_of(self.scale, action)
        self._answer = action
        return action

    def follow(self, action: np.ndarray) -> None:
        """Another policy sent ``action`` instead of the one :meth:`respond` just answered (DAgger: the rule labels
        the states a learner visits): track the LR scale the envelope reaches with it, so that the rule keeps
        reasoning about the real run. Following its own answer changes nothing."""
        if self._answer is None or not np.array_equal(np.asarray(action).reshape(-1), self._answer):
            self.scale = self.codec.scale_of(self._scale_before, action)
