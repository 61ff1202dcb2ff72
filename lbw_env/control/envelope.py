"""The safety envelope: action spaces, their decoding into a bounded control, and the rollback policy.

Whatever a governor answers, NaN included, the envelope turns it into a :class:`~lbw_env.plant.optimizer.Control`
inside the configured bounds:

* **LR scale** — action component 0 moves the scale multiplicatively, up by at most ``max_factor`` and down
  by at most ``max_cut`` per decision (the slew-rate bound), and the result is clamped to
  ``[lr_scale_min, lr_scale_max]``.
* **Skip gate** — component 1 sets how many rolling standard deviations above its rolling mean a step's loss
  or log gradient norm may be before the step is skipped; the top of the range means *never*. How much the gate
  may skip is bounded by the skip budget, enforced per step in :class:`~lbw_env.plant.optimizer.GovernedOptimizer`.
* **Rollback** — the plant is rolled back to the last good snapshot when the governor asks with component 2
  (``rollback_action``), and, with ``auto_rollback``, by the envelope itself after ``nonfinite_streak``
  consecutive non-finite steps or a runaway loss (smoothed loss above ``runaway_ratio`` x the best so far). At
  most ``max_rollbacks`` per episode; when the envelope's own criterion needs one more, the run has diverged
  beyond what the envelope can recover, and the episode terminates.

**The default envelope is the one the evaluation suites measure** (``configs/suites/*.yaml``: ``rollback_action:
true``, ``auto_rollback: false``): plain AdamW (the neutral action) stays plain AdamW, and every rollback is a
governor's decision. The env ids, the integrations and the suites all start from these defaults, so a governor
trained on an id's defaults is evaluated and deployed under the envelope it learned in.

Every correction of a well-formed action (NaN, inf, out of range) is counted in :attr:`Envelope.interventions` and
reported in the env's ``info``. A malformed action — wrong size, not numbers, complex or boolean values, an integer
array for the continuous space (a ``MultiDiscrete`` policy's output), fractional bins for the discrete one — is a
one-line ``ValueError`` naming ``action``: coercing it would run a policy in a space it was not built for.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Literal

import gymnasium as gym
import numpy as np

from ..config import check, is_int, is_real
from ..plant.optimizer import Control, GateConfig


@dataclasses.dataclass
class EnvelopeConfig:
    """Bounds on what any governor can do, and when the envelope itself steps in."""

    action_mode: Literal["continuous", "discrete"] = "continuous"
    """``continuous``: ``Box(-1, 1)``; ``discrete``: ``MultiDiscrete`` with ``lr_bins`` x ``gate_bins``."""
    lr_scale_min: float = 0.005
    """Lowest LR scale the governor can reach (1/200: enough to bring a 100x-too-high LR back to sanity)."""
    lr_scale_max: float = 2.0
    """Highest LR scale (above 1 a governor may speed training up beyond the schedule)."""
    lr_scale_init: float = 1.0
    """LR scale at the start of an episode (1: the schedule as configured)."""
    max_factor: float = 2.0
    """Largest multiplicative increase of the LR scale in one decision (action +1 = x max_factor)."""
    max_cut: float = 8.0
    """Largest multiplicative decrease in one decision (action -1 = / max_cut). Cutting the LR fast is safe;
    raising it fast is not, so the slew bound is asymmetric."""
    gate_min: float = 2.0
    """Tightest skip gate, in rolling standard deviations."""
    gate_max: float = 8.0
    """Loosest finite skip gate; action component 1 at or above ``never_above`` means never skip."""
    never_above: float = 0.9
    """Continuous component 1 at or above this value disables the gate."""
    lr_bins: int = 5
    """Discrete mode: LR moves evenly spaced in log scale from /max_cut to x max_factor; odd, so that the middle
    bin holds the scale (the neutral action)."""
    gate_bins: int = 5
    """Discrete mode: gates evenly spaced in [gate_min, gate_max], the last bin meaning "never"."""
    max_skip_fraction: float = 0.25
    """Skip budget: at most this fraction of the last ``budget_window`` steps may be skipped by the gate."""
    budget_window: int = 32
    """Window of the skip budget, in optimizer steps."""
    rollback_action: bool = True
    """Add action component 2: a value > 0 (continuous) or 1 (discrete) asks for a rollback. On by default, as in
    every evaluation suite: with ``auto_rollback`` off, a governor's request is the only way back."""
    auto_rollback: bool = False
    """Roll back by itself on a non-finite streak or a runaway loss. Off by default, as in every evaluation suite:
    plain AdamW must run as plain AdamW (an automatic rollback would be a guard of its own)."""
    nonfinite_streak: int = 6
    """Consecutive non-finite steps that trigger a rollback."""
    runaway_ratio: float = 2.0
    """Smoothed training loss above this multiple of the best smoothed loss counts as a runaway."""
    max_rollbacks: int = 3
    """Rollbacks allowed per episode. When the envelope's own criterion needs one more, the run has diverged
    (``terminated``); a governor's request beyond the budget is refused and counted."""

    def validate(self) -> None:
        """One-line :class:`~lbw_env.config.ConfigError` naming the field: types, finiteness, then the relations.

        Finiteness first: ``inf`` passes every ordering check (``lr_scale_max: .inf`` would let the LR scale double
        every decision without bound), and ``nan`` fails them with a misleading message.
        """
        check(self.action_mode in ("continuous", "discrete"), "action_mode", "continuous | discrete", self.action_mode)
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            check(is_real(value) and math.isfinite(value), name, "a finite number", value)
        for name in _INT_FIELDS:
            value = getattr(self, name)
            check(is_int(value), name, "an int", value)
        for name in ("rollback_action", "auto_rollback"):
            check(isinstance(getattr(self, name), bool), name, "true or false", getattr(self, name))
        check(self.lr_scale_min > 0, "lr_scale_min", "a float > 0", self.lr_scale_min)
        check(
            self.lr_scale_min <= self.lr_scale_init,
            "lr_scale_init",
            f">= lr_scale_min ({self.lr_scale_min})",
            self.lr_scale_init,
        )
        check(
            self.lr_scale_init <= self.lr_scale_max,
            "lr_scale_max",
            f">= lr_scale_init ({self.lr_scale_init})",
            self.lr_scale_max,
        )
        check(self.max_factor > 1, "max_factor", "a float > 1", self.max_factor)
        check(self.max_cut > 1, "max_cut", "a float > 1", self.max_cut)
        check(self.gate_min > 0, "gate_min", "a float > 0", self.gate_min)
        check(self.gate_min <= self.gate_max, "gate_max", f">= gate_min ({self.gate_min})", self.gate_max)
        check(-1 < self.never_above <= 1, "never_above", "a float in (-1, 1]", self.never_above)
        check(
            self.lr_bins >= 3 and self.lr_bins % 2 == 1,
            "lr_bins",
            "an odd int >= 3 (the middle bin holds the LR scale)",
            self.lr_bins,
        )
        check(self.gate_bins >= 2, "gate_bins", "an int >= 2", self.gate_bins)
        check(0 <= self.max_skip_fraction <= 1, "max_skip_fraction", "a float in [0, 1]", self.max_skip_fraction)
        check(self.budget_window >= 1, "budget_window", "an int >= 1", self.budget_window)
        check(self.nonfinite_streak >= 1, "nonfinite_streak", "an int >= 1", self.nonfinite_streak)
        check(self.runaway_ratio > 1, "runaway_ratio", "a float > 1", self.runaway_ratio)
        check(self.max_rollbacks >= 0, "max_rollbacks", "an int >= 0", self.max_rollbacks)

    def gate_config(self) -> GateConfig:
        return GateConfig(max_skip_fraction=self.max_skip_fraction, budget_window=self.budget_window)


_FLOAT_FIELDS = (
    "lr_scale_min",
    "lr_scale_max",
    "lr_scale_init",
    "max_factor",
    "max_cut",
    "gate_min",
    "gate_max",
    "never_above",
    "max_skip_fraction",
    "runaway_ratio",
)
_INT_FIELDS = ("lr_bins", "gate_bins", "budget_window", "nonfinite_streak", "max_rollbacks")


def _brief(action: object) -> str:
    """An action for a one-line error message: on one line (array reprs wrap), at most ~120 characters."""
    try:
        text = repr(np.asarray(action).tolist())
    except (TypeError, ValueError):
        text = repr(action)
    text = " ".join(text.split())
    return text if len(text) <= 120 else text[:117] + "..."


@dataclasses.dataclass
class Decision:
    """A decoded action: the control for the next interval and whether a rollback was asked for."""

    control: Control
    rollback_requested: bool
    lr_move: float
    """The multiplicative LR move actually applied this decision (after the slew and range bounds)."""


class Envelope:
    """Decodes actions into bounded controls and keeps the LR-scale state between decisions."""

    def __init__(self, cfg: EnvelopeConfig) -> None:
        cfg.validate()  # a config built in code skips from_dict's validation; its bounds must hold all the same
        self.cfg = cfg
        n = 3 if cfg.rollback_action else 2
        if cfg.action_mode == "continuous":
            self.action_space: gym.Space = gym.spaces.Box(-1.0, 1.0, (n,), dtype=np.float32)
        else:
            nvec = [cfg.lr_bins, cfg.gate_bins] + ([2] if cfg.rollback_action else [])
            self.action_space = gym.spaces.MultiDiscrete(nvec)
        # The discrete tables (also used by rule governors to invert the decoding).
        self.lr_moves = np.linspace(-1.0, 1.0, cfg.lr_bins)
        self.gates = [*np.linspace(cfg.gate_min, cfg.gate_max, cfg.gate_bins - 1).tolist(), math.inf]
        self.reset()

    def reset(self) -> None:
        self.lr_scale = float(self.cfg.lr_scale_init)
        self.rollbacks = 0
        self.interventions = {
            "action_nonfinite": 0,
            "action_clipped": 0,
            "lr_scale_bounded": 0,
            "rollbacks": 0,
            "rollback_refused": 0,
        }

    # -- decoding ---------------------------------------------------------------------------------------

    def neutral_action(self) -> np.ndarray:
        """The action of plain AdamW: hold the LR scale, never skip (and never ask for a rollback)."""
        if self.cfg.action_mode == "continuous":
            a = [0.0, 1.0] + ([-1.0] if self.cfg.rollback_action else [])
            return np.asarray(a, dtype=np.float32)
        bins = [self.cfg.lr_bins // 2, self.cfg.gate_bins - 1] + ([0] if self.cfg.rollback_action else [])
        return np.asarray(bins, dtype=np.int64)

    def _sanitize(self, action: object) -> np.ndarray:
        """Flatten to the space's shape; NaN -> neutral, inf and out-of-range -> the nearest bound (counted).

        A malformed action raises (see the module docstring): the checks look at the values' kind, because a
        float conversion would silently turn a complex number, a boolean mask or another space's bins into an
        action of this space.
        """
        a = self._as_floats(action)
        n = a.size
        neutral = self.neutral_action().astype(np.float64)
        nan = np.isnan(a)
        if nan.any():
            self.interventions["action_nonfinite"] += 1
            a = np.where(nan, neutral, a)
        if self.cfg.action_mode == "continuous":
            lo, hi = np.full(n, -1.0), np.full(n, 1.0)
        else:
            lo, hi = np.zeros(n), np.asarray(self.action_space.nvec, dtype=np.float64) - 1  # type: ignore[attr-defined]
        clipped = np.clip(a, lo, hi)
        if np.any(clipped != a):
            self.interventions["action_clipped"] += 1
        return clipped

    def _as_floats(self, action: object) -> np.ndarray:
        """The action as a flat float64 vector of the space's size, or a one-line ``ValueError`` naming ``action``."""
        n = self.action_space.shape[0]  # type: ignore[index]
        space = self.action_space
        try:
            raw = np.asarray(action)
            kind = raw.dtype.kind
            if kind in "USV" or (kind == "O" and not all(isinstance(x, numbers.Real) for x in raw.flat)):
                raise TypeError("not numbers")  # strings, None (which astype would turn into NaN) ...
            if kind == "O":  # real numbers of mixed types (Decimal, Fraction ...)
                raw, kind = raw.astype(np.float64), "f"
        except (TypeError, ValueError) as e:
            raise ValueError(f"action: expected {n} numbers for {space}, got {_brief(action)}") from e
        if kind == "c":
            raise ValueError(f"action: expected {n} real numbers for {space}, got complex values {_brief(action)}")
        if kind == "b":
            raise ValueError(f"action: expected {n} numbers for {space}, got booleans {_brief(action)}")
        if raw.size != n:
            raise ValueError(f"action: expected shape ({n},) for {space}, got {raw.shape}")
        continuous = self.cfg.action_mode == "continuous"
        if continuous and isinstance(action, np.ndarray) and kind in "iu":
            raise ValueError(
                f"action: expected floats in [-1, 1] for {space}, got an integer array {_brief(action)} "
                "(a MultiDiscrete policy's bins? use envelope.action_mode: discrete)"
            )
        a = raw.astype(np.float64).reshape(-1)
        finite = np.isfinite(a)
        if not continuous and np.any(a[finite] != np.rint(a[finite])):
            raise ValueError(f"action: expected integer bins for {space}, got {_brief(a)}")
        return a

    def decode(self, action: object) -> Decision:
        """Apply the bounds and move the LR-scale state. Never raises for NaN/inf/out-of-range values; a malformed
        action (see the module docstring) raises ``ValueError`` before any state moves."""
        a = self._sanitize(action)
        if self.cfg.action_mode == "continuous":
            move, gate_raw = float(a[0]), float(a[1])
            gate = math.inf if gate_raw >= self.cfg.never_above else self._continuous_gate(gate_raw)
            rollback = self.cfg.rollback_action and float(a[2]) > 0.0
        else:
            # Integral by now (_as_floats refuses fractions); int() only changes the type to index with.
            move = float(self.lr_moves[int(a[0])])
            gate = self.gates[int(a[1])]
            rollback = self.cfg.rollback_action and int(a[2]) == 1
        old = self.lr_scale
        target = old * self.move_factor(move)
        new = min(max(target, self.cfg.lr_scale_min), self.cfg.lr_scale_max)
        if new != target and not math.isclose(new, target, rel_tol=1e-12):
            self.interventions["lr_scale_bounded"] += 1
        self.lr_scale = new
        return Decision(Control(lr_scale=new, skip_gate=gate), bool(rollback), new / old)

    def move_factor(self, move: float) -> float:
        """The multiplicative LR move of an action value in [-1, 1]: x max_factor**m up, / max_cut**-m down."""
        return self.cfg.max_factor**move if move >= 0 else self.cfg.max_cut**move

    def _continuous_gate(self, raw: float) -> float:
        frac = (raw + 1.0) / (self.cfg.never_above + 1.0)
        return self.cfg.gate_min + frac * (self.cfg.gate_max - self.cfg.gate_min)

    # -- rollback policy --------------------------------------------------------------------------------

    def needs_rollback(self, nonfinite_streak: int, smoothed_loss: float, best_loss: float, requested: bool) -> str:
        """Why the plant must be rolled back now (``""``: it need not)."""
        if requested:
            return "requested"
        if not self.cfg.auto_rollback:
            return ""
        if nonfinite_streak >= self.cfg.nonfinite_streak:
            return "nonfinite"
        if not math.isfinite(smoothed_loss) or smoothed_loss > self.cfg.runaway_ratio * best_loss:
            return "runaway"
        return ""

    def take_rollback(self) -> bool:
        """Count a rollback; False if the budget is spent (the episode must then terminate)."""
        if self.rollbacks >= self.cfg.max_rollbacks:
            return False
        self.rollbacks += 1
        self.interventions["rollbacks"] += 1
        return True
