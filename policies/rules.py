"""Rule governors: plain AdamW, the LBW guard, and literature baselines — all in the env's action space.

* ``adamw`` — the constant governor: scale 1, never skip. Plain AdamW under the same envelope.
* ``lbw_guard`` — our rule-based guard (thresholds in ``configs/governors/lbw_guard.yaml``).
* ``lbw_guard_ratio`` — the guard with an LR cap read from the first interval's update ratio
  (:attr:`GuardConfig.target_update_ratio`; ``configs/governors/lbw_guard_ratio.yaml``): a configured LR far
  above the useful one is cut to it, not merely survived.
* ``lbw_guard_probe`` — ``lbw_guard_ratio`` that also rolls back to the starting weights when the first interval
  (the probe of the LR, at 1/8 of the configured one) ran hotter than the cap's target by a calibrated multiple
  (:attr:`GuardConfig.probe_rollback`; ``configs/governors/lbw_guard_probe.yaml``).
* ``lbw_guard_tuned`` — the guard with thresholds from a larger CMA-ES search on the tiny family's train and val
  scenarios (``configs/governors/lbw_guard_tuned.yaml``, written by ``benchmarks/calibrate_guard.py``): the bar a
  learned governor must clear, next to the shipped guard (a 12-candidate search that tied its hand-set start).
* ``skip_step`` — OLMo-core / Levanter style: skip a step whose loss or gradient norm is more than 6σ above
  its rolling mean; LR untouched.
* ``ewm_skip`` — metaseq style: skip a step whose loss exceeds ``ratio`` x its exponentially weighted mean.
* ``plateau`` — ReduceLROnPlateau style: halve the LR scale when the smoothed loss stops improving.
* ``lbw_guard_no_slow_start``, ``lbw_guard_no_rollback``, ``lbw_guard_no_ceiling`` — the guard with one feature
  off (starts at the full scale; never asks for a rollback; remembers no LR ceiling): ablations.

Clipping baselines are trainer options (``optim.clip_norm``, ``optim.clip: zclip``) run with ``adamw``, as are the
other optimizers (``optim.name``); the named arms that combine them are in ``lbw_env.evaluation.arms``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal

from lbw_env.cache import sha256_file
from lbw_env.config import ConfigError, check, config_dir, load, read_yaml
from lbw_env.control.envelope import EnvelopeConfig
from lbw_env.control.features import ObservationView
from lbw_env.control.protocol import Governor

from .base import GovernorBuilder, RuleGovernor

# ----------------------------------------------------------------------------------------------------------
# Plain AdamW and literature baselines
# ----------------------------------------------------------------------------------------------------------


class ConstantGovernor(RuleGovernor):
    """Hold the LR scale at ``scale`` and the skip gate at ``gate`` (``inf``: plain AdamW)."""

    def __init__(self, envelope: EnvelopeConfig | None = None, scale: float = 1.0, gate: float = math.inf) -> None:
        self.target, self.gate = scale, gate
        super().__init__(envelope)

    def decide(self, obs: ObservationView) -> tuple[float, float, bool]:
        return self.target, self.gate, False


class EWMSkipGovernor(RuleGovernor):
    """metaseq-style spike skipping: skip when loss > ``ratio`` x EWM(loss).

    The plant's gate is in z-units, so the ratio is converted with the observed coefficient of variation of
    the loss: ``loss > ratio * mean`` <=> ``z > (ratio - 1) / cv``. Before statistics exist it does not skip.
    """

    def __init__(self, envelope: EnvelopeConfig | None = None, ratio: float = 1.2) -> None:
        self.ratio = ratio
        super().__init__(envelope)

    def decide(self, obs: ObservationView) -> tuple[float, float, bool]:
        cv = obs.physical("loss_cv") or 0.0
        gate = (self.ratio - 1.0) / cv if cv > 1e-6 else math.inf
        return 1.0, gate, False


class PlateauGovernor(RuleGovernor):
    """ReduceLROnPlateau: multiply the LR scale by ``factor`` after ``patience`` decisions without a relative
    improvement of ``threshold`` in the smoothed training loss; never below ``min_scale``."""

    def __init__(
        self,
        envelope: EnvelopeConfig | None = None,
        factor: float = 0.5,
        patience: int = 3,
        threshold: float = 1e-3,
        min_scale: float = 0.05,
    ) -> None:
        self.factor, self.patience, self.threshold, self.min_scale = factor, patience, threshold, min_scale
        super().__init__(envelope)

    def reset(self) -> None:
        super().reset()
        self.best = math.inf
        self.bad = 0
        self.target = self.envelope.lr_scale_init

    def decide(self, obs: ObservationView) -> tuple[float, float, bool]:
        if obs.started:
            loss = obs["loss"]
            if loss < self.best * (1 - self.threshold):
                self.best, self.bad = loss, 0
            else:
                self.bad += 1
            if self.bad > self.patience:
                self.target = max(self.target * self.factor, self.min_scale)
                self.bad = 0
        return self.target, math.inf, False


# ----------------------------------------------------------------------------------------------------------
# The LBW guard
# ----------------------------------------------------------------------------------------------------------

Regime = Literal["stable", "warning", "unstable", "recovering"]


@dataclasses.dataclass
class GuardConfig:
    """Thresholds of the LBW guard. The reasoning for each value is in ``configs/governors/lbw_guard.yaml``; the
    searched ones are the output of ``benchmarks/calibrate_guard.py`` on train+val scenarios (its provenance section
    says on which), and the defaults here equal that file (a test keeps them in step)."""

    start_scale: float = 0.0575
    """Slow start: the LR scale of the first decision, before any telemetry exists."""
    slow_start_growth: float = 2.0
    """Multiplicative growth per healthy decision, up to the remembered ceiling (TCP slow start). The envelope
    bounds a rise to its ``max_factor`` (2) a decision, so under the default envelope larger values act as 2."""
    max_scale: float = 1.0
    """Highest LR scale the guard asks for."""
    backoff: float = 0.232
    """Multiplicative decrease when the run turns unstable."""
    ceiling_margin: float = 0.253
    """On instability the effective-LR ceiling becomes at most ``margin`` x the effective LR that caused it
    (and at most the effective LR of the last healthy interval)."""
    ceiling_probe: float = 1.02
    """Per healthy decision, the ceiling creeps up by this factor (a stale ceiling must not bind forever)."""
    warn_vs_best: float = 0.03
    """Smoothed loss this far above its best (relative) is a warning."""
    unstable_vs_best: float = 0.0967
    """... and this far above it is instability: back off."""
    rollback_vs_best: float = 0.0967
    """... and this far above it asks for a rollback (damaged weights are worse than lost steps)."""
    warn_trend: float = 0.05
    """``loss_trend`` feature (10 x relative change per interval) above this is a warning."""
    spike_z: float = 3.0
    """Loss z-score (the ``loss_z_max`` feature x 2) above which an interval counts as spiking."""
    max_update_ratio: float = 0.02
    """‖Δθ‖/‖θ‖ per step above this is a warning whatever the loss says (too-high LR looks 'normal' to z)."""
    damage_update_ratio: float = 0.0949
    """‖Δθ‖/‖θ‖ per step above this rewrites the model: instability, and a rollback."""
    max_skip_rate: float = 0.5
    """An interval in which the gate had to skip this fraction of steps is unstable (something systematic)."""
    gate_stable: float = 6.0
    """Skip gate (z-units) in the stable regime: only gross outliers are skipped."""
    gate_alert: float = 3.0
    """Skip gate in the warning, unstable and recovering regimes."""
    recover_decisions: int = 2
    """Healthy decisions in ``recovering`` before growth resumes."""
    target_update_ratio: float = math.inf
    """LR cap from the first interval's update ratio (``inf``: no cap; the shipped ``lbw_guard``). After the first
    interval, the guard caps its LR scale at the one under which that interval's mean ‖Δθ‖/‖θ‖ would have been
    this value: ``cap = scale x target / ratio``. Why it can: in the first steps of AdamW every coordinate moves by
    about the LR (m/√v is ±1 at step 1), so the update ratio is the LR over the weights' RMS, proportional to
    the LR whatever the configured one (measured in the first 8 steps, ratio/LR: 8.6, 8.3, 7.2 and 6.5 for the
    qwen2-s, llama-tiny and qwen2-tiny fine-tunes and a qwen2-tiny from scratch, at LRs 1e-3 to 1e-2). The cap is
    a scale, so the configured schedule keeps its shape under it. Used by ``lbw_guard_ratio``
    (``configs/governors/lbw_guard_ratio.yaml``, whose value ``benchmarks/calibrate_guard.py`` chose)."""
    probe_rollback: float = math.inf
    """With ``target_update_ratio``: when the first interval's update ratio was more than this multiple of the
    target, also ask for a rollback at the next decision (``inf``: never, as ``lbw_guard_ratio``). The first
    interval is then a probe that ran too hot: its damage outlasts it (llama-tiny at 20x the reference LR:
    validation ppl 215 -> 383 in those 8 steps, still 199 against tuned AdamW's 188 after 200), below the damage
    threshold that already rolls back at 100x. The rollback lands after the next interval (run at the cap), on
    the starting weights, so it costs two intervals of steps. Not when a rollback already happened. A first
    5-point grid over 1-4 on lr_stress and full_param train+val scored every value exactly like ``inf``: those
    splits then held no LR multiple between 10x (whose first interval stays under the target) and 33x (whose
    first interval already crosses the damage threshold and rolls back). Both families' val splits now hold 17x
    (``lr5e-2``), on which ``lbw_guard_probe`` (``configs/governors/lbw_guard_probe.yaml``) calibrated it."""
    rollback: bool = True
    """Ask for rollbacks at all. False only for the ``lbw_guard_no_rollback`` ablation (what rollback adds)."""
    ceiling: bool = True
    """Remember an LR ceiling on instability. False only for the ``lbw_guard_no_ceiling`` ablation (growth then
    returns to ``max_scale`` after every back-off)."""
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    """Where the thresholds came from (scenarios, seeds, search, scores, code version), as written by
    ``benchmarks/calibrate_guard.py``. Kept so that a loaded guard can say how it was calibrated; never read by
    the guard, and left out of equality: two configs with the same thresholds are the same guard."""

    def validate(self) -> None:
        # Finiteness first: a NaN threshold fails every comparison, so the guard would silently never react to
        # its signal; inf means "never" only where a field says so.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                never = field.name in UNBOUNDED_THRESHOLDS and value == math.inf
                check(
                    never,
                    field.name,
                    "a finite float" + (" or .inf" if field.name in UNBOUNDED_THRESHOLDS else ""),
                    value,
                )
        check(0 < self.start_scale <= self.max_scale, "start_scale", "0 < start_scale <= max_scale", self.start_scale)
        check(self.slow_start_growth >= 1, "slow_start_growth", "a float >= 1", self.slow_start_growth)
        check(0 < self.backoff < 1, "backoff", "a float in (0, 1)", self.backoff)
        check(0 < self.ceiling_margin <= 1, "ceiling_margin", "a float in (0, 1]", self.ceiling_margin)
        check(
            0 <= self.warn_vs_best <= self.unstable_vs_best <= self.rollback_vs_best,
            "warn_vs_best",
            "0 <= warn_vs_best <= unstable_vs_best <= rollback_vs_best",
            self.warn_vs_best,
        )
        check(self.recover_decisions >= 0, "recover_decisions", "an int >= 0", self.recover_decisions)
        check(
            self.target_update_ratio > 0, "target_update_ratio", "a float > 0 (.inf: no cap)", self.target_update_ratio
        )
        check(self.probe_rollback >= 1, "probe_rollback", "a float >= 1 (.inf: never)", self.probe_rollback)
        for name in ("spike_z", "max_update_ratio", "damage_update_ratio", "gate_stable", "gate_alert"):
            check(getattr(self, name) > 0, name, "a float > 0", getattr(self, name))
        check(
            self.ceiling_probe >= 1,
            "ceiling_probe",
            "a float >= 1 (1: the ceiling never creeps up)",
            self.ceiling_probe,
        )
        check(0 <= self.max_skip_rate <= 1, "max_skip_rate", "a float in [0, 1]", self.max_skip_rate)


UNBOUNDED_THRESHOLDS = ("target_update_ratio", "probe_rollback")
"""The guard thresholds for which ``.inf`` has a meaning (no LR cap; never roll back after the probe)."""


class LBWGuard(RuleGovernor):
    """Bounded LR back-off, spike skipping and gradual recovery, driven by a regime read from telemetry.

    Regimes, re-assessed every decision from the newest telemetry row:

    * **stable** — the loss is near its best and not rising: grow the LR scale (fast below the first
      trouble, slowly once a ceiling is known), loose skip gate.
    * **warning** — the loss drifts above its best, rises, spikes, or updates are too large: hold the scale,
      tighten the gate.
    * **unstable** — the loss is clearly above its best, or a step was non-finite: multiplicative back-off,
      remember a ceiling below the scale that caused it, tight gate, and ask for a rollback when the damage is
      large.
    * **recovering** — after instability: hold until ``recover_decisions`` healthy decisions have passed.

    Why this shape (what calibration showed): the gradient norm rises *with* the spike, not before it, so
    the guard reads the loss relative to its best; a fine-tune at a far-too-high LR is damaged on its first
    steps, before statistics exist, so the guard starts slow; skipping after the damage leaves damaged
    weights, so large damage asks for a rollback; and a persistently too-high LR looks normal to z-scores, so
    the guard remembers an LR ceiling, as TCP congestion control remembers its threshold.
    """

    def __init__(self, envelope: EnvelopeConfig | None = None, config: GuardConfig | None = None) -> None:
        self.gcfg = config or GuardConfig()
        super().__init__(envelope)

    def reset(self) -> None:
        super().reset()
        self.target = self.gcfg.start_scale
        self.ceiling_lr = math.inf  # remembered ceiling on the *effective* LR (absolute, not a scale)
        self.last_good_lr = math.inf  # effective LR of the most recent healthy interval
        self.regime: Regime = "stable"
        self.healthy_run = 0
        self.ratio_cap = math.inf  # LR-scale cap from the first measured update ratio (target_update_ratio)
        self.ratio_measured = not math.isfinite(self.gcfg.target_update_ratio)

    def assess(self, obs: ObservationView) -> tuple[Regime, bool]:
        """The regime of the newest interval, and whether the damage warrants a rollback."""
        g = self.gcfg
        vs_best = obs["loss_vs_best"]
        nonfinite = obs["nonfinite_rate"] > 0
        update_ratio = obs.physical("log_update_ratio") or 0.0
        spiking = (obs.physical("loss_z_max") or 0.0) > g.spike_z
        trend = obs["loss_trend"]
        if update_ratio > g.damage_update_ratio:
            return "unstable", True
        # Gate skips only: non-finite steps are skipped by the plant anyway and say nothing about the LR.
        gate_skips = obs["skip_rate"] - obs["nonfinite_rate"]
        if (vs_best > g.unstable_vs_best and trend > 0) or gate_skips >= g.max_skip_rate:
            return "unstable", vs_best > g.rollback_vs_best
        # A non-finite step was skipped by the plant and is no evidence against the LR: tighten the gate only.
        # A loss above its best but falling fast is recovering from damage, not being damaged.
        warn = nonfinite or spiking or update_ratio > g.max_update_ratio or trend > g.warn_trend
        if warn or (vs_best > g.warn_vs_best and trend > -g.warn_trend):
            return "warning", False
        return "stable", False

    def _cap(self, target: float, scheduled_lr: float | None) -> float:
        """Keep the next interval's effective LR under the remembered ceiling."""
        if scheduled_lr and math.isfinite(self.ceiling_lr):
            target = min(target, self.ceiling_lr / scheduled_lr)
        return max(min(target, self.gcfg.max_scale, self.ratio_cap), self.envelope.lr_scale_min)

    def decide(self, obs: ObservationView) -> tuple[float, float, bool]:
        g = self.gcfg
        if not obs.started:
            return self.target, g.gate_stable, False  # slow start, before any telemetry
        # The effective LR of the last interval (schedule x our scale x any fault) and the schedule behind it:
        # ceilings are kept on the effective LR, so that a shock or a schedule change is seen through the scale.
        effective_lr = obs.physical("log_lr")  # None: no step was applied in the interval
        scheduled_lr = effective_lr / self.scale if effective_lr else None
        probe_hot = False
        if not self.ratio_measured:
            update_ratio = obs.physical("log_update_ratio")
            if effective_lr and update_ratio:  # the first interval with applied steps
                self.ratio_cap = self.scale * g.target_update_ratio / update_ratio
                self.ratio_measured = True
                probe_hot = update_ratio > g.probe_rollback * g.target_update_ratio and obs["rollbacks"] == 0
        target, gate, rollback = self._react(obs, effective_lr, scheduled_lr)
        return target, gate, rollback or (probe_hot and g.rollback)

    def _react(
        self, obs: ObservationView, effective_lr: float | None, scheduled_lr: float | None
    ) -> tuple[float, float, bool]:
        """The regime's answer: back off, hold or grow the scale, the gate, and whether to roll back."""
        g = self.gcfg
        regime, rollback = self.assess(obs)
        if regime == "unstable":
            if effective_lr and g.ceiling:
                self.ceiling_lr = min(self.ceiling_lr, effective_lr * g.ceiling_margin, self.last_good_lr)
            self.target = self._cap(self.scale * g.backoff, scheduled_lr)
            self.regime, self.healthy_run = "unstable", 0
            return self.target, g.gate_alert, rollback and g.rollback
        if regime == "warning":
            self.healthy_run = 0
            if self.regime != "unstable":
                self.regime = "warning"
            self.target = self._cap(self.scale, scheduled_lr)  # hold (and respect the ceiling)
            return self.target, g.gate_alert, False
        # stable telemetry
        if effective_lr:
            self.last_good_lr = effective_lr
        self.healthy_run += 1
        if self.regime in ("unstable", "recovering") and self.healthy_run <= g.recover_decisions:
            self.regime = "recovering"
            self.target = self._cap(self.scale, scheduled_lr)
            return self.target, g.gate_alert, False
        self.regime = "stable"
        if math.isfinite(self.ceiling_lr):
            self.ceiling_lr *= g.ceiling_probe  # probe: a stale ceiling must not bind forever
        self.target = self._cap(self.scale * g.slow_start_growth, scheduled_lr)
        return self.target, g.gate_stable, False


def load_guard_config(path: str | Path | None = None) -> GuardConfig:
    """The guard's thresholds from YAML (default: ``configs/governors/lbw_guard.yaml``), with the file's
    ``provenance:`` section, if any, in :attr:`GuardConfig.provenance`."""
    p = Path(path) if path else config_dir() / "governors" / "lbw_guard.yaml"
    return load(GuardConfig, read_yaml(p))


# ----------------------------------------------------------------------------------------------------------
# Builders by name (policies.registry lists them; argument = what follows ``name:`` in a spec)
# ----------------------------------------------------------------------------------------------------------


def _no_argument(name: str, arg: str) -> None:
    if arg:
        raise ConfigError(f"governor '{name}:{arg}': {name} takes no argument (expected the bare name {name!r})")


def number_argument(name: str, arg: str, what: str, low: float, high: float = math.inf, strict: bool = False) -> float:
    """A rule's numeric argument: finite, at least (``strict``: above) ``low`` and at most ``high``, else one line
    naming the spec and what it takes. A NaN or out-of-range argument must not run as a rule that silently does
    something else (the envelope would clamp it, or read NaN as "never")."""
    try:
        value = float(arg)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and (value > low if strict else value >= low) and value <= high):
        bounds = f"{'>' if strict else '>='} {low:g}" + (f" and <= {high:g}" if math.isfinite(high) else "")
        raise ConfigError(f"governor '{name}:{arg}': expected {what}, a finite number {bounds}; got {arg!r}")
    return value


def _adamw(envelope: EnvelopeConfig, arg: str) -> Governor:
    _no_argument("adamw", arg)
    return ConstantGovernor(envelope)


def _lbw_guard(envelope: EnvelopeConfig, arg: str) -> Governor:
    return LBWGuard(envelope, load_guard_config(arg or None))


ABLATIONS: dict[str, dict[str, Any]] = {
    "lbw_guard_no_slow_start": {"start_scale": None},  # None: max_scale (start at the full LR scale)
    "lbw_guard_no_rollback": {"rollback": False},
    "lbw_guard_no_ceiling": {"ceiling": False},
}
"""Guard ablations: the shipped thresholds with one feature turned off, to measure what each one adds."""


def _ablation(name: str) -> GovernorBuilder:
    def build(envelope: EnvelopeConfig, arg: str) -> Governor:
        path = Path(arg) if arg else config_dir() / "governors" / "lbw_guard.yaml"
        cfg = load_guard_config(path)
        changes: dict[str, Any] = {k: cfg.max_scale if v is None else v for k, v in ABLATIONS[name].items()}
        guard = LBWGuard(envelope, dataclasses.replace(cfg, **changes))
        # Records name the thresholds it ran with (the guard's file) and what was turned off.
        guard.governor_hash = f"{sha256_file(path)}:{name.removeprefix('lbw_guard_')}"  # type: ignore[attr-defined]
        return guard

    return build


def _guard_file(name: str) -> GovernorBuilder:
    """The guard with the thresholds of ``configs/governors/<name>.yaml``, or of the file the spec names."""

    def build(envelope: EnvelopeConfig, arg: str) -> Governor:
        return LBWGuard(envelope, load_guard_config(arg or config_dir() / "governors" / f"{name}.yaml"))

    return build


def _skip_step(envelope: EnvelopeConfig, arg: str) -> Governor:
    # The envelope cannot gate tighter than gate_min: a lower argument would be clamped up without a word.
    what = "the skip gate in rolling standard deviations, within the envelope's gates"
    gate = number_argument("skip_step", arg, what, envelope.gate_min, envelope.gate_max) if arg else 6.0
    return ConstantGovernor(envelope, gate=gate)


def _ewm_skip(envelope: EnvelopeConfig, arg: str) -> Governor:
    what = "the loss ratio to its EWM above which a step is skipped (1.2: 20 % above)"
    return EWMSkipGovernor(envelope, ratio=number_argument("ewm_skip", arg, what, 1.0, strict=True) if arg else 1.2)


def _plateau(envelope: EnvelopeConfig, arg: str) -> Governor:
    _no_argument("plateau", arg)
    return PlateauGovernor(envelope)


RULES: dict[str, GovernorBuilder] = {
    "adamw": _adamw,
    "lbw_guard": _lbw_guard,
    "lbw_guard_ratio": _guard_file("lbw_guard_ratio"),
    "lbw_guard_tuned": _guard_file("lbw_guard_tuned"),
    "lbw_guard_probe": _guard_file("lbw_guard_probe"),
    "skip_step": _skip_step,
    "ewm_skip": _ewm_skip,
    "plateau": _plateau,
    **{name: _ablation(name) for name in ABLATIONS},
}
"""The rule governors by registered name: ``adamw``, ``lbw_guard[:<yaml>]``, ``skip_step[:<gate>]``,
``ewm_skip[:<ratio>]``, ``plateau``, ``lbw_guard_ratio[:<yaml>]`` (the guard with an LR cap from the update
ratio), ``lbw_guard_probe[:<yaml>]`` (that cap plus a rollback after a first interval that ran too hot),
``lbw_guard_tuned[:<yaml>]`` (the guard's thresholds from a larger black-box search), and the guard ablations
``lbw_guard_no_slow_start[:<yaml>]``, ``lbw_guard_no_rollback[:<yaml>]``, ``lbw_guard_no_ceiling[:<yaml>]``.
The oracles of bound analyses are in :mod:`.oracles`."""
