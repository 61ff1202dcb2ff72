"""Telemetry: the per-step record every governed optimizer step emits, and rolling statistics over it.

``StepRecord`` is the contract between the plant and everything above it (the env's observation, the
reward, evaluation records, the integrations). ``RollingStats`` are the exponentially weighted mean and
variance a skip gate and the observation's z-scores are measured against; a ``Clipper`` keeps statistics of
the gradient norm that say where to clip it (:class:`~lbw_env.plant.clipping.ZClip`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Protocol

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


def safe_exp(x: float) -> float:
    """``exp(x)`` that saturates to ``inf`` instead of overflowing: perplexity from a (possibly huge) loss."""
    return math.exp(x) if x < 700 else math.inf


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


class Clipper(Protocol):
    """Adaptive gradient clipping inside the governed step: called on applied steps only, after the skip decision
    (a skipped or non-finite step never reaches it), with the global norm the step measured."""

    def cap(self, grad_norm: float) -> float:
        """The max norm to clip this step's gradient to (0: leave it); updates the clipper's statistics."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
