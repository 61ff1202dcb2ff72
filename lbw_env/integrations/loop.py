"""Govern any torch optimizer in a plain training loop.

The loop stays the user's: their model, data, loss and LR scheduler. Only ``optimizer.step()`` changes::

    loop = GovernedLoop(optimizer, "lbw_guard", total_steps=1000, vocab_size=model.config.vocab_size,
                        params=model.parameters(), make_governor=policies.make_governor)
    for step in range(1000):
        loss = model(input_ids=x, labels=y).loss
        loss.backward()
        record = loop.step(loss)          # instead of optimizer.step(); optimizer.zero_grad()
        scheduler.step()                  # the user's schedule: the governor scales it, never replaces it
        if loop.terminated:               # diverged beyond recovery (only with envelope.auto_rollback: true)
            break

Every step goes through :class:`~lbw_env.plant.optimizer.GovernedOptimizer` (telemetry, true skip, the LR scale of the
current decision); every ``decision_interval`` steps the interval's records go to
:class:`~lbw_env.control.governance.Governance`, and the governor's ``predict`` is asked for the next action with the
observation, exactly as :class:`~lbw_env.env.LBWEnv` and :mod:`lbw_env.evaluation` do. So with the same model,
batches, schedule and governor the loop produces the env's StepRecords bit for bit (tested).

**Settings.** Without ``config`` the loop governs with :class:`~lbw_env.control.governance.GovernanceConfig`'s
defaults, which are the evaluation suites' settings (interval 8, window 4, rollback on the governor's request,
no automatic rollback): the default guard here is the guard the suites measured. A governor that carries the
settings it was trained with (a ``settings`` attribute with ``decision_interval``, ``window``, ``envelope`` and
optionally ``healthy_ratio``, as learned governors loaded from a policy file do) is run with those, unless
``config`` is passed and differs: that is a one-line :class:`~lbw_env.config.ConfigError` naming the fields
(the same weights under another window or action space would be an untested controller).

Rollback (``rollback=True``) keeps two copies of the trainable parameters and their optimizer state (the last
good state and a candidate), restored in place: training then continues from the good weights on the next
batches, with the user's schedule untouched. ``rollback=False`` keeps no copies and gives the envelope no
rollback budget (``max_rollbacks: 0``): a governor's rollback request is refused (and counted); with
``envelope.auto_rollback: true`` a runaway or a non-finite streak then ends the run (``terminated``), as in the
env with ``max_rollbacks: 0``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import numpy as np
import torch

from ..config import ConfigError
from ..control.compat import settings_of
from ..control.envelope import Decision, EnvelopeConfig
from ..control.governance import Governance, GovernanceConfig, IntervalOutcome, check_run
from ..control.protocol import Governor, GovernorFactory
from ..plant.optimizer import Control, GovernedOptimizer
from ..plant.records import StepRecord
from ..plant.state import TrainState, capture_train_state, restore_train_state


class ScheduleLR(torch.optim.lr_scheduler.LRScheduler):
    """An LR scheduler from a function of the step: after ``t`` calls of ``step()`` every group's LR is ``fn(t)``.

    Unlike ``LambdaLR`` (``base_lr * factor``) the function's value is used as it is, so a schedule written as
    absolute LRs (``Plant.scheduled_lr``) is reproduced exactly, bit for bit.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, fn: Callable[[int], float], last_epoch: int = -1) -> None:
        self.fn = fn
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        lr = float(self.fn(self.last_epoch))
        return [lr for _ in self.optimizer.param_groups]


@dataclasses.dataclass(frozen=True)
class IntervalReport:
    """One decision interval of a governed loop: the control it ran under and what the envelope made of it."""

    start: int
    """First step of the interval."""
    end: int
    """Steps taken at its end (exclusive end)."""
    control: Control
    """The bounded control the interval ran under."""
    rollback_requested: bool
    """The governor asked for a rollback at the start of the interval."""
    skipped: int
    """Steps of the interval that were skipped."""
    outcome: IntervalOutcome
    """Rollback reason, rollback, termination, smoothed losses."""


def check_governor(governor: Governor | str, make_governor: GovernorFactory | None) -> None:
    """Raise a one-line ConfigError unless ``governor`` is a governor object, or a spec with a factory to build it."""
    if isinstance(governor, str) and make_governor is None:
        raise ConfigError(
            f"governor {governor!r} is a spec string: also pass make_governor=policies.make_governor "
            "(lbw_env never imports policies), or pass a governor object (e.g. policies.make_governor(spec))"
        )


def governance_for(governor: object, config: GovernanceConfig | None) -> GovernanceConfig:
    """The settings a run of ``governor`` uses: ``config``, else the governor's own, else the defaults.

    A governor's training settings are adopted when no ``config`` is given; a ``config`` that sets any of them
    differently is refused with one line naming the fields (an equal one is fine).
    """
    settings = settings_of(governor)
    if settings is None:
        return config if config is not None else GovernanceConfig()
    if config is None:
        return settings.config()
    conflicts = settings.conflicts(config)
    if conflicts:
        raise ConfigError(
            f"{'; '.join(conflicts)} (the governor's training settings; pass no governance config to adopt them, "
            "or use a governor trained for this one)"
        )
    return config


def enforced_envelope(envelope: EnvelopeConfig, rollback: bool) -> EnvelopeConfig:
    """The envelope a loop really enforces: without rollback targets there is no rollback budget."""
    return envelope if rollback else dataclasses.replace(envelope, max_rollbacks=0)


def resolve_governor(
    governor: Governor | str,
    config: GovernanceConfig | None,
    *,
    rollback: bool,
    make_governor: GovernorFactory | None,
) -> tuple[Governor, GovernanceConfig]:
    """The governor object and the settings to run it with (see :func:`governance_for`).

    A spec is built by ``make_governor`` for the envelope the loop will enforce; if the governor it builds
    carries other settings (a learned one), it is built again for those, so its actions match the envelope.
    """
    check_governor(governor, make_governor)
    if not isinstance(governor, str):
        return governor, governance_for(governor, config)
    assert make_governor is not None
    first = config if config is not None else GovernanceConfig()
    built = make_governor(governor, enforced_envelope(first.envelope, rollback))
    cfg = governance_for(built, config)
    if cfg.envelope != first.envelope:
        built = make_governor(governor, enforced_envelope(cfg.envelope, rollback))
    return built, cfg


class GovernedLoop:
    """A governor on any torch optimizer: call :meth:`step` after ``loss.backward()`` instead of
    ``optimizer.step()``.

    Args:
        optimizer: any torch optimizer (AdamW, SGD, ...); its param groups' LR is the *scheduled* LR.
        governor: a :class:`~lbw_env.control.protocol.Governor` (SB3-style ``predict``), or a spec
            (``"lbw_guard"``, ``"adamw"``, ``"ppo:runs/x/best_model"``) that ``make_governor`` builds. If it
            has ``settings`` (the interval, window and envelope it was trained with), they are used.
        total_steps: the planned number of optimizer steps (the ``progress`` feature; a final interval ends
            there even if shorter).
        vocab_size: the model's vocabulary (the ``loss`` feature is loss / ln(vocab)).
        config: decision interval, window, envelope and healthy ratio (as in the env's config). ``None``: the
            governor's training settings if it has any, else the defaults (the evaluation suites' settings).
            Given, it must agree with the governor's training settings (one-line ConfigError otherwise).
        params: the trainable parameters to measure, e.g. ``model.parameters()`` (those that do not require
            gradients, like a LoRA base, are left out). Default: the optimizer's parameters in param-group order.
            The order matters only at the last bit: a float32 norm depends on the order of its partial sums, and
            the env measures in the model's order.
        clip_norm: max-norm gradient clipping applied *after* measuring the unclipped norm (0: off). Clip here,
            not before the call: the telemetry and the skip gate must see the real gradient norm.
        rollback: keep rollback targets (see the module docstring).
        initial_loss: the loss the smoothed training loss starts from (the env uses the validation loss of the
            initial weights); ``None``: the first finite loss of the run.
        deterministic: passed to ``governor.predict``.
        keep_records: keep every StepRecord in :attr:`records` (a few hundred bytes a step).
        make_governor: the :data:`~lbw_env.control.protocol.GovernorFactory` for a spec ``governor``, usually
            ``policies.make_governor`` (``lbw_env`` never imports ``policies``). It is given the envelope the
            loop really enforces (``max_rollbacks: 0`` without rollback), so a governor's actions match it.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        governor: Governor | str,
        *,
        total_steps: int,
        vocab_size: int,
        config: GovernanceConfig | None = None,
        params: Iterable[torch.Tensor] | None = None,
        clip_norm: float = 0.0,
        rollback: bool = True,
        initial_loss: float | None = None,
        deterministic: bool = True,
        keep_records: bool = True,
        make_governor: GovernorFactory | None = None,
    ) -> None:
        if config is not None:
            config.validate()
        check_run(vocab_size, total_steps, initial_loss)  # before anything is built
        self.governor: Governor
        self.governor, cfg = resolve_governor(governor, config, rollback=rollback, make_governor=make_governor)
        envelope = enforced_envelope(cfg.envelope, rollback)
        self.config = dataclasses.replace(cfg, envelope=envelope)
        self.optimizer = optimizer
        self.governed = GovernedOptimizer(optimizer, params, clip_norm=clip_norm, gate=envelope.gate_config())
        self.governance: Governance[TrainState | None] = Governance(self.config)
        self.total_steps = int(total_steps)
        self.rollback = rollback
        self.deterministic = deterministic
        self.keep_records = keep_records
        self.t = 0
        self.records: list[StepRecord] = []
        self.history: list[IntervalReport] = []
        self.terminated = False
        self._interval: list[StepRecord] = []
        self._decision: Decision | None = None
        self._state: tuple[np.ndarray, ...] | None = None  # a recurrent governor's hidden state
        self._episode_start = True
        self._decided_at = -1  # the step at which the current interval's action was decided
        self.governance.reset(initial_loss, self._snapshot, vocab_size=vocab_size, total_steps=self.total_steps)

    # -- the governed step ------------------------------------------------------------------------------

    def step(self, loss: torch.Tensor | float, tokens: int = 0) -> StepRecord:
        """Apply (or truly skip) one optimizer step for ``loss`` (whose gradients are in ``.grad``).

        Also clears the gradients. Every ``decision_interval`` steps the governor decides the next control.
        """
        if self.terminated:
            raise RuntimeError(
                "GovernedLoop.step(): the run diverged beyond what the envelope can recover (terminated); "
                "stop training, or restart with a lower LR"
            )
        if not self._interval and self._decided_at != self.t:  # once per interval, even if a step is refused
            self._decide()
            self._decided_at = self.t
        assert self._decision is not None
        record = self.governed.step(loss, self._decision.control, tokens=tokens)
        record.step = self.t
        self.t += 1
        self._interval.append(record)
        if self.keep_records:
            self.records.append(record)
        if len(self._interval) == self.config.decision_interval or self.t == self.total_steps:
            self._end_interval()
        return record

    def _decide(self) -> None:
        """Ask the governor for the next interval's action (as the evaluator does), and bound it."""
        obs = self.governance.observation()
        episode_start = np.array([self._episode_start], dtype=bool)
        action, self._state = self.governor.predict(
            obs, state=self._state, episode_start=episode_start, deterministic=self.deterministic
        )
        self._episode_start = False
        self._decision = self.governance.decide(action)

    def _end_interval(self) -> None:
        assert self._decision is not None
        records, self._interval = self._interval, []
        outcome = self.governance.end_interval(
            records,
            self.t,
            self.governed.loss_stats,
            self._decision.rollback_requested,
            snapshot_fn=self._snapshot,
            restore_fn=self._restore,
        )
        self.history.append(
            IntervalReport(
                start=records[0].step,
                end=self.t,
                control=self._decision.control,
                rollback_requested=self._decision.rollback_requested,
                skipped=sum(r.skipped for r in records),
                outcome=outcome,
            )
        )
        self.terminated = outcome.terminated

    # -- rollback targets -------------------------------------------------------------------------------

    def _snapshot(self, into: TrainState | None) -> TrainState | None:
        if not self.rollback:
            return None  # no rollback budget: nothing will ever be restored
        return capture_train_state(self.governed.params, self.optimizer, self.governed, into=into)

    def _restore(self, state: TrainState | None) -> None:
        if state is None:  # pragma: no cover - the envelope has no budget without snapshots
            raise RuntimeError("GovernedLoop: a rollback without a snapshot")
        restore_train_state(state, self.governed.params, self.optimizer, self.governed)

    # -- what is going on -------------------------------------------------------------------------------

    @property
    def control(self) -> Control:
        """The control of the current (or, between intervals, the last) decision."""
        return self._decision.control if self._decision is not None else Control()

    @property
    def should_stop(self) -> bool:
        """Training should stop: the run diverged beyond what the envelope can recover."""
        return self.terminated

    def metrics(self) -> dict[str, float]:
        """Scalars for a logger, grouped like the env's metric names (``governor/``, ``telemetry/``)."""
        last = self.records[-1] if self.records else None
        skipped = sum(h.skipped for h in self.history) + sum(r.skipped for r in self._interval)
        out = {
            "governor/lr_scale": float(self.governance.lr_scale),
            "governor/skip_gate": float(self.control.skip_gate) if math.isfinite(self.control.skip_gate) else -1.0,
            "governor/rollbacks": float(self.governance.rollbacks),
            "governor/skipped_steps": float(skipped),
        }
        if last is not None:
            out["telemetry/grad_norm"] = float(last.grad_norm)
            out["telemetry/update_ratio"] = float(last.update_ratio)
            out["telemetry/effective_lr"] = float(last.lr)
        return out
