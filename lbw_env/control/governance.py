"""Decision-level governance, in one place: the envelope, the telemetry window and the rollback targets.

The env (:class:`~lbw_env.env.LBWEnv`), the plain-PyTorch wrapper and the Hugging Face integration
(:mod:`lbw_env.integrations`) all govern through :class:`Governance`, so an action means the same bounded
control, an interval produces the same observation, and a runaway is rolled back to the same state
everywhere. Per decision interval::

    observation() --> governor.predict --> decide(action) -> Decision (bounded Control, rollback request)
        ... the interval's optimizer steps run under decision.control (GovernedOptimizer: telemetry, true skip) ...
    end_interval(records, ...) --> TelemetryWindow.push --> envelope.needs_rollback
                               --> roll back to the last *good* state / declare divergence / keep a candidate
                               --> IntervalOutcome(reason, rolled_back, terminated, prev_loss, loss)

**Rollback targets.** A state becomes *good* only once the interval *after* it was healthy too: damage done
by a step shows in the losses of the steps that follow it, not in its own. So a healthy interval leaves a
*candidate* snapshot, and the next healthy interval promotes it to good; an unhealthy interval drops it.

The snapshots themselves are taken and restored through callables the caller passes
(:mod:`lbw_env.plant.state` for a model and its optimizer), so this module never touches a model.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import gymnasium as gym
import numpy as np

from ..config import ConfigError, check, is_int, is_real
from ..plant.records import RollingStats, StepRecord
from .envelope import Decision, Envelope, EnvelopeConfig
from .features import FEATURE_NAMES, OBS_BOUND, TelemetryWindow


@dataclasses.dataclass
class GovernanceConfig:
    """How often the governor decides, what it sees, and the envelope it acts within.

    The one definition of these settings: :class:`~lbw_env.env.EnvConfig` extends it, and the integrations take
    it as it is, so a governor trained in the env is deployed with the same interval, window and envelope.

    **The defaults are what the evaluation suites run** (``configs/suites/*.yaml``: interval 8, window 4, the
    envelope with ``rollback_action`` on and ``auto_rollback`` off): ``GovernanceConfig()`` in a plain loop,
    ``EnvConfig()`` behind every env id and a suite without an ``env:`` section all govern alike, and the
    numbers the suites report are the ones a default deployment gets.
    """

    decision_interval: int = 8
    """Optimizer steps per governor decision (per env step)."""
    window: int = 4
    """Decision intervals in the observation."""
    envelope: EnvelopeConfig = dataclasses.field(default_factory=EnvelopeConfig)
    """Action space and safety bounds (LR-scale range and slew, skip gate and budget, rollback policy)."""
    healthy_ratio: float = 1.1
    """An interval whose smoothed loss is within this multiple of the best can leave a rollback candidate (and
    promote the previous one to the last good snapshot)."""

    def validate(self) -> None:
        """One-line :class:`~lbw_env.config.ConfigError` naming the field (``envelope.<key>`` for the envelope's).

        The envelope is validated here too: a config built in code (``GovernanceConfig(envelope=EnvelopeConfig(
        lr_scale_max=math.inf))``) never passes through ``from_dict``, whose validation it would otherwise skip.
        """
        for name in ("decision_interval", "window"):
            value = getattr(self, name)
            check(is_int(value) and value >= 1, name, "an int >= 1", value)
        ratio = self.healthy_ratio
        check(is_real(ratio) and math.isfinite(ratio) and ratio >= 1, "healthy_ratio", "a finite float >= 1", ratio)
        check(isinstance(self.envelope, EnvelopeConfig), "envelope", "an EnvelopeConfig", self.envelope)
        try:
            self.envelope.validate()
        except ConfigError as e:
            raise ConfigError(f"envelope.{e}") from None


@dataclasses.dataclass(frozen=True)
class IntervalOutcome:
    """What the envelope made of one decision interval."""

    reason: str
    """Why a rollback was needed (``requested``, ``nonfinite``, ``runaway``), or ``""``."""
    rolled_back: int
    """1 if the state was restored to the last good snapshot, else 0."""
    terminated: bool
    """The run diverged beyond what the envelope can recover (a rollback was needed and the budget is spent)."""
    prev_loss: float
    """Smoothed training loss before the interval."""
    loss: float
    """Smoothed training loss after it (after a rollback: the restored state's)."""
    healthy: bool
    """The interval was healthy (it left a rollback candidate)."""


S = TypeVar("S")
SnapshotFn = Callable[[Any], Any]
"""``snapshot_fn(into)``: capture the current state, reusing ``into``'s buffers when it is not ``None``."""
RestoreFn = Callable[[Any], None]
"""``restore_fn(snapshot)``: put a captured state back (model and optimizer, not the data position)."""


def loss_cv(stats: RollingStats) -> float:
    """The ``loss_cv`` feature's input: rolling std / |rolling mean| of the step loss (0 before warm-up)."""
    return stats.std / max(abs(stats.mean), 1e-6) if stats.ready else 0.0


def check_run(vocab_size: Any, total_steps: Any, initial_loss: Any = None) -> None:
    """What a governed run is told about itself, checked: the ``loss`` feature divides by ln(``vocab_size``), so a
    vocabulary below 2 (or not an int) would turn every observation into inf or NaN; ``progress`` divides by
    ``total_steps``; a given ``initial_loss`` starts the smoothed loss, so it must be a finite number."""

    def count(v: Any) -> bool:  # numpy ints too: a vocabulary size often comes from an array's shape or max
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    check(count(vocab_size) and vocab_size >= 2, "vocab_size", "an int >= 2", vocab_size)
    check(count(total_steps) and total_steps >= 1, "total_steps", "an int >= 1", total_steps)
    ok = initial_loss is None or (is_real(initial_loss) and math.isfinite(initial_loss))
    check(ok, "initial_loss", "a finite number or None", initial_loss)


class Governance(Generic[S]):
    """The envelope, the telemetry window and the rollback targets of one governed run.

    It never touches a model: snapshots are taken and restored through the callables the caller passes, so
    the same object governs the env's trainer, a plain loop and a Hugging Face ``Trainer``.
    """

    def __init__(self, config: GovernanceConfig) -> None:
        self.config = config
        self.cfg = config.envelope
        self.envelope = Envelope(config.envelope)
        self.window_size = config.window
        self.healthy_ratio = config.healthy_ratio
        self.window: TelemetryWindow | None = None
        self.good: S | None = None
        self.candidate: S | None = None
        self.good_loss = math.nan
        self.candidate_loss = math.nan
        self.initial_loss = math.nan
        self._start_pending = False

    @property
    def action_space(self) -> gym.Space:
        return self.envelope.action_space

    def observation_space(self) -> gym.spaces.Box:
        """The observation's Box (the same shape for every run of this configuration; the env's space)."""
        return gym.spaces.Box(-OBS_BOUND, OBS_BOUND, (self.window_size * len(FEATURE_NAMES),), dtype=np.float32)

    # -- run start --------------------------------------------------------------------------------------

    def reset(
        self,
        initial_loss: float | None,
        snapshot_fn: SnapshotFn,
        *,
        vocab_size: int,
        total_steps: int,
    ) -> np.ndarray:
        """Start a run: a fresh envelope and window, and the initial state as the first rollback target.

        ``initial_loss`` is the loss the smoothed training loss starts from (the env uses the validation
        loss of the initial weights). ``None``: the first finite step loss of the first interval, for loops
        that do not evaluate before training. Returns the first observation (all padding).
        """
        check_run(vocab_size, total_steps, initial_loss)
        self.envelope.reset()
        self.window = TelemetryWindow(self.window_size, vocab_size, total_steps, self.cfg.max_rollbacks)
        self._start_pending = initial_loss is None
        start = self.window.log_vocab if initial_loss is None else float(initial_loss)
        self.window.reset(start)
        self.good = snapshot_fn(self.good)
        self.candidate = None
        self.good_loss = self.candidate_loss = self.initial_loss = start
        return self.observation()

    def forget_snapshots(self) -> None:
        """Drop the rollback buffers (before governing a model of other shapes: they cannot be reused)."""
        self.good = None
        self.candidate = None

    # -- one decision -----------------------------------------------------------------------------------

    def decide(self, action: object) -> Decision:
        """The bounded control for the next interval (never raises for NaN/inf/out-of-range actions)."""
        return self.envelope.decode(action)

    def end_interval(
        self,
        records: list[StepRecord],
        step: int,
        loss_stats: RollingStats,
        rollback_requested: bool,
        snapshot_fn: SnapshotFn,
        restore_fn: RestoreFn,
    ) -> IntervalOutcome:
        """Push the interval's telemetry, then apply the rollback policy and manage the rollback targets.

        ``step``: optimizer steps taken so far in the run; ``loss_stats``: the governed optimizer's rolling loss
        statistics (the ``loss_cv`` feature, see :func:`loss_cv`).
        """
        window, envelope = self.window, self.envelope
        if window is None:
            raise RuntimeError("Governance.end_interval() called before reset()")
        if self._start_pending:
            self._start_from(records)
        prev_loss = window.smoothed_loss
        window.push(records, envelope.lr_scale, envelope.rollbacks, step, loss_cv(loss_stats))

        # The envelope's rollback policy: restore the last good weights, or declare divergence.
        terminated, rolled_back = False, 0
        reason = envelope.needs_rollback(
            window.nonfinite_streak, window.smoothed_loss, window.best_loss, rollback_requested
        )
        healthy = (
            not reason
            and window.nonfinite_streak == 0
            and window.smoothed_loss <= self.healthy_ratio * window.best_loss
        )
        if reason:
            if envelope.take_rollback():
                restore_fn(self.good)
                window.rebase(self.good_loss)
                self.candidate = None  # it was not followed by a healthy interval
                rolled_back = 1
            elif reason == "requested":
                envelope.interventions["rollback_refused"] += 1  # the governor asked; the budget says no
                # A refused request must not mask a divergence the envelope's own criteria see.
                own = envelope.needs_rollback(window.nonfinite_streak, window.smoothed_loss, window.best_loss, False)
                if own:
                    reason, terminated = own, True
            else:
                terminated = True  # the run diverged and the envelope can no longer recover it
        elif healthy:
            if self.candidate is not None:  # the candidate was followed by this healthy interval: promote it
                self.good, self.candidate = self.candidate, self.good
                self.good_loss = self.candidate_loss
            self.candidate = snapshot_fn(self.candidate)
            self.candidate_loss = window.smoothed_loss
        else:
            self.candidate = None
        return IntervalOutcome(reason, rolled_back, terminated, prev_loss, window.smoothed_loss, healthy)

    def _start_from(self, records: list[StepRecord]) -> None:
        """Deferred start (``initial_loss=None``): the first finite loss of the first interval."""
        self._start_pending = False
        finite = [r.loss for r in records if math.isfinite(r.loss)]
        if finite and self.window is not None:
            self.window.reset(finite[0])
            self.good_loss = self.candidate_loss = self.initial_loss = finite[0]

    # -- what the governor sees -------------------------------------------------------------------------

    def observation(self) -> np.ndarray:
        """The last ``window`` decision intervals as a float32 vector (see ``FEATURE_NAMES``)."""
        if self.window is None:
            raise RuntimeError("Governance.observation() called before reset()")
        return self.window.observation()

    @property
    def lr_scale(self) -> float:
        return self.envelope.lr_scale

    @property
    def rollbacks(self) -> int:
        return self.envelope.rollbacks

    @property
    def interventions(self) -> dict[str, int]:
        return self.envelope.interventions
