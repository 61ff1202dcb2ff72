"""Telemetry: the per-step record every governed optimizer step emits, and rolling statistics over it.

``StepRecord`` is the contract between the plant and everything above it (the env's observation, the
reward, evaluation records, the integrations). ``RollingStats`` are the exponentially weighted mean and
variance a skip gate and the observation's z-scores are measured against.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np

SkipReason = Literal["none", "gate", "nonfinite", "forced"]


@dataclasses.dataclass(slots=True)
class StepRecord:
    """What one optimizer step did. Every governed step emits exactly one, skipped or not."""

    step: int
    """Index of this step in the run (batches consumed before it)."""
    loss: float
    """Training loss of the batch (mean token cross-entropy, nats); may be NaN/inf when ``nonfinite``."""
    grad_norm: float
    """Global L2 norm of the gradient before any clipping; may be NaN/inf when ``nonfinite``."""
    update_ratio: float
    """‖Δθ‖/‖θ‖ over the trainable parameters (0 on a skipped step)."""
    param_norm: float
    """‖θ‖ of the trainable parameters after the step."""
    lr: float
    """Effective learning rate applied (scheduled LR x ``lr_scale``); 0 on a skipped step."""
    lr_scale: float
    """The governor's multiplier on the scheduled LR for this step."""
    skipped: bool
    """True if the optimizer step was not taken (a true skip: no parameter, moment or step-count change)."""
    skip_reason: SkipReason
    """``none``; ``gate`` (loss or gradient norm above the skip gate); ``nonfinite``; ``forced`` (asked for)."""
    nonfinite: bool
    """The loss or a gradient was NaN/inf."""
    loss_z: float
    """z-score of the loss against the rolling statistics of applied steps (0 until they exist)."""
    grad_z: float
    """z-score of log(grad_norm) against the rolling statistics of applied steps (0 until they exist)."""
    tokens: int = 0
    """Tokens in the batch."""
    seconds: float = dataclasses.field(default=0.0, compare=False)
    """Wall time of the whole step (forward, backward, governed optimizer step); not part of equality, so
    that records of identical runs compare equal."""

    def __eq__(self, other: object) -> bool:
        """Field by field except ``seconds``, with NaN equal to NaN: the records of identical runs compare equal
        even where a step's loss or gradient norm was NaN (the generated ``__eq__`` would say NaN != NaN)."""
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(_same(getattr(self, name), getattr(other, name)) for name in _COMPARED)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the generated eq=True dataclass

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (non-finite floats become strings so that the JSON stays valid)."""
        return {
            f.name: (_json_float(v) if isinstance(v, float) else v)
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        }


_COMPARED = tuple(f.name for f in dataclasses.fields(StepRecord) if f.compare)


def _same(a: object, b: object) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


@dataclasses.dataclass
class RollingStats:
    """Exponentially weighted mean and variance of a signal, with a warm-up count.

    ``z(x)`` is 0 until ``min_count`` values were seen: a fresh run has no statistics to compare against,
    so a z-gate cannot fire on the first steps (a governor must handle those by other means).
    """

    alpha: float = 0.05
    """Weight of a new value (0.05 = a memory of about 20 steps)."""
    min_count: int = 8
    """Values needed before ``z`` is defined."""
    mean: float = 0.0
    var: float = 0.0
    count: int = 0

    def update(self, x: float) -> None:
        """Add a finite value (non-finite values are ignored: they would poison the statistics)."""
        if not math.isfinite(x):
            return
        if self.count == 0:
            self.mean, self.var = x, 0.0
        else:
            # During warm-up weight values equally (a plain running mean), then decay exponentially.
            a = max(self.alpha, 1.0 / (self.count + 1))
            delta = x - self.mean
            self.mean += a * delta
            self.var = (1 - a) * (self.var + a * delta * delta)
        self.count += 1

    @property
    def ready(self) -> bool:
        return self.count >= self.min_count

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))

    def z(self, x: float, floor: float = 1e-3) -> float:
        """How many standard deviations ``x`` lies above the mean (0 before warm-up; inf for non-finite)."""
        if not math.isfinite(x):
            return math.inf
        if not self.ready:
            return 0.0
        return (x - self.mean) / max(self.std, floor * max(abs(self.mean), 1.0))

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), int(state["count"])


# ----------------------------------------------------------------------------------------------------------
# Observation: a rolling window of per-decision telemetry features
# ----------------------------------------------------------------------------------------------------------

OBS_BOUND = 5.0
"""Every feature is clipped to [-OBS_BOUND, OBS_BOUND]; the observation space is exactly that box."""

FEATURES: dict[str, str] = {
    "valid": "1 for a real decision interval, 0 for padding before the episode has W intervals.",
    "loss": "Smoothed training loss / ln(vocab): 1 = a uniform guess; where the run stands.",
    "loss_trend": "Relative change of the smoothed loss over the interval, x10: is training still improving?",
    "loss_vs_best": "Smoothed loss / best smoothed loss so far - 1: a runaway shows here before it diverges.",
    "loss_cv": "Rolling std / rolling mean of the step loss, x10: how noisy the loss is (converts ratios to z).",
    "loss_z_max": "Largest loss z-score in the interval / 2: a loss spike relative to recent history.",
    "grad_z_max": "Largest log-grad-norm z-score in the interval / 2: gradient spikes (they rise with the loss).",
    "log_grad_norm": "log10 of the mean gradient norm: absolute gradient scale.",
    "log_update_ratio": "log10(mean ‖Δθ‖/‖θ‖) + 3: how hard the optimizer pushes the weights (~1e-3 is healthy).",
    "log_lr": "log10(mean effective LR) + 3: the absolute LR actually applied (schedule x scale x faults).",
    "lr_scale": "log2 of the governor's current LR scale / 2: what the governor itself has done.",
    "skip_rate": "Fraction of the interval's steps that were skipped.",
    "nonfinite_rate": "Fraction of the interval's steps with a NaN/inf loss or gradient.",
    "rollbacks": "Rollbacks used / rollbacks allowed.",
    "progress": "Fraction of the step budget spent: schedules and urgency depend on it.",
}
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURES)


def _clip(x: float) -> float:
    if math.isnan(x):
        return 0.0
    return max(-OBS_BOUND, min(OBS_BOUND, x))


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else 0.0


def _z_feature(zs: list[float]) -> float:
    """Largest z-score / 2; a non-finite one (a NaN step) saturates the feature."""
    if not zs:
        return 0.0
    return OBS_BOUND if not all(math.isfinite(z) for z in zs) else max(zs) / 2.0


def _log10(x: float) -> float:
    return math.log10(x) if x > 0 and math.isfinite(x) else (-OBS_BOUND if x == 0 or math.isnan(x) else OBS_BOUND)


class TelemetryWindow:
    """Turns each decision interval's StepRecords into a feature row and keeps the last ``window`` rows.

    It also keeps the smoothed training loss (EWM over finite losses of applied steps), the best value it
    reached, and the current streak of non-finite steps — the signals the envelope and the reward use.
    """

    def __init__(self, window: int, vocab_size: int, total_steps: int, max_rollbacks: int, alpha: float = 0.1):
        self.window = window
        self.log_vocab = math.log(max(vocab_size, 2))
        self.total_steps = max(total_steps, 1)
        self.max_rollbacks = max(max_rollbacks, 1)
        self.alpha = alpha
        self.reset(self.log_vocab)

    @property
    def shape(self) -> tuple[int]:
        return (self.window * len(FEATURE_NAMES),)

    def reset(self, initial_loss: float) -> None:
        self.rows: list[np.ndarray] = []
        self.smoothed_loss = float(initial_loss)
        self.best_loss = float(initial_loss)
        self.nonfinite_streak = 0

    def rebase(self, loss: float) -> None:
        """After a rollback: the smoothed loss returns to the restored state's level."""
        self.smoothed_loss = float(loss)
        self.nonfinite_streak = 0

    def push(self, records: list[StepRecord], lr_scale: float, rollbacks: int, step: int, loss_cv: float = 0.0) -> None:
        prev = self.smoothed_loss
        for r in records:
            if r.nonfinite:
                self.nonfinite_streak += 1
                continue
            self.nonfinite_streak = 0
            if not r.skipped:
                self.smoothed_loss += self.alpha * (r.loss - self.smoothed_loss)
        self.best_loss = min(self.best_loss, self.smoothed_loss)
        applied = [r for r in records if not r.skipped]
        n = max(len(records), 1)
        row = {
            "valid": 1.0,
            "loss": self.smoothed_loss / self.log_vocab,
            "loss_trend": 10.0 * (self.smoothed_loss - prev) / max(abs(prev), 1e-6),
            "loss_vs_best": self.smoothed_loss / max(self.best_loss, 1e-6) - 1.0,
            "loss_cv": 10.0 * loss_cv,
            "loss_z_max": _z_feature([r.loss_z for r in records]),
            "grad_z_max": _z_feature([r.grad_z for r in records]),
            "log_grad_norm": _log10(_mean([r.grad_norm for r in records if math.isfinite(r.grad_norm)])),
            "log_update_ratio": _log10(_mean([r.update_ratio for r in applied])) + 3.0 if applied else -OBS_BOUND,
            "log_lr": _log10(_mean([r.lr for r in applied])) + 3.0 if applied else -OBS_BOUND,
            "lr_scale": math.log2(lr_scale) / 2.0,
            "skip_rate": sum(r.skipped for r in records) / n,
            "nonfinite_rate": sum(r.nonfinite for r in records) / n,
            "rollbacks": rollbacks / self.max_rollbacks,
            "progress": step / self.total_steps,
        }
        self.rows.append(np.array([_clip(row[k]) for k in FEATURE_NAMES], dtype=np.float32))
        if len(self.rows) > self.window:
            self.rows.pop(0)

    def observation(self) -> np.ndarray:
        """The last ``window`` rows, oldest first, zero-padded at the front; float32, finite, in bounds."""
        out = np.zeros((self.window, len(FEATURE_NAMES)), dtype=np.float32)
        if self.rows:
            out[-len(self.rows) :] = np.stack(self.rows)
        return out.reshape(-1)
