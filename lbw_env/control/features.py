"""Observation features: one row of named, normalised telemetry per decision interval, and their decoding.

Encoding (:class:`TelemetryWindow`) and decoding (:class:`ObservationView`) live side by side, so a rule that
reads a feature in physical units (an LR, an update ratio, a loss CV) never restates the encoding's constants.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

from ..plant.records import StepRecord

OBS_BOUND = 5.0
"""Every feature is clipped to [-OBS_BOUND, OBS_BOUND]; the observation space is exactly that box."""

Transform = Literal["", "log10", "log2"]


@dataclasses.dataclass(frozen=True)
class Feature:
    """One observation feature: what it means, and the affine (optionally logarithmic) map that encodes it.

    ``encode(x) = scale * T(x) + offset`` with ``T`` the identity, log10 or log2, then clipped to
    ``[-OBS_BOUND, OBS_BOUND]``; ``decode`` inverts it. The constants are chosen so that a healthy run's
    values land near [-1, 1] (e.g. an update ratio of 1e-3 encodes to 0), and they live only here: a rule that
    reads a feature in physical units calls :meth:`decode` (or :meth:`ObservationView.physical`).
    """

    doc: str
    """What the feature tells a governor (rendered into the env's docstring table)."""
    scale: float = 1.0
    offset: float = 0.0
    transform: Transform = ""

    def encode(self, x: float) -> float:
        """Physical value -> feature value (before clipping). Non-positive/NaN inputs of a log saturate low."""
        if self.transform == "log10":
            x = _log10(x)
        elif self.transform == "log2":
            x = math.log2(x) if x > 0 else -math.inf
        return self.scale * x + self.offset if self.scale != 1.0 else x + self.offset

    def decode(self, v: float) -> float:
        """Feature value -> physical value (exactly inverts :meth:`encode` up to float rounding)."""
        x = (v - self.offset) / self.scale
        if self.transform == "log10":
            return 10**x
        if self.transform == "log2":
            return 2**x
        return x


FEATURES: dict[str, Feature] = {
    "valid": Feature("1 for a real decision interval, 0 for padding before the episode has W intervals."),
    "loss": Feature("Smoothed training loss / ln(vocab): 1 = a uniform guess; where the run stands."),
    "loss_trend": Feature(
        "Relative change of the smoothed loss over the interval, x10: is training still improving?", scale=10.0
    ),
    "loss_vs_best": Feature("Smoothed loss / best smoothed loss so far - 1: a runaway shows here before it diverges."),
    "loss_cv": Feature(
        "Rolling std / rolling mean of the step loss, x10: how noisy the loss is (converts ratios to z).", scale=10.0
    ),
    "loss_z_max": Feature(
        "Largest loss z-score in the interval / 2: a loss spike relative to recent history.", scale=0.5
    ),
    "grad_z_max": Feature(
        "Largest log-grad-norm z-score in the interval / 2: gradient spikes (they rise with the loss).", 0.5
    ),
    "log_grad_norm": Feature("log10 of the mean gradient norm: absolute gradient scale.", transform="log10"),
    "log_update_ratio": Feature(
        "log10(mean ‖Δθ‖/‖θ‖) + 3: how hard the optimizer pushes the weights (~1e-3 is healthy).",
        offset=3.0,
        transform="log10",
    ),
    "log_lr": Feature(
        "log10(mean effective LR) + 3: the absolute LR actually applied (schedule x scale x faults).",
        offset=3.0,
        transform="log10",
    ),
    "lr_scale": Feature(
        "log2 of the governor's current LR scale / 2: what the governor itself has done.", 0.5, 0.0, "log2"
    ),
    "skip_rate": Feature("Fraction of the interval's steps that were skipped."),
    "nonfinite_rate": Feature("Fraction of the interval's steps with a NaN/inf loss or gradient."),
    "rollbacks": Feature("Rollbacks used / rollbacks allowed."),
    "progress": Feature("Fraction of the step budget spent: schedules and urgency depend on it."),
}
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURES)


def _clip(x: float) -> float:
    if math.isnan(x):
        return 0.0
    return max(-OBS_BOUND, min(OBS_BOUND, x))


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else 0.0


def _max_z(zs: list[float]) -> float:
    """Largest z-score; a non-finite one (a NaN step) is ``inf``, which saturates the feature."""
    if not zs:
        return 0.0
    return math.inf if not all(math.isfinite(z) for z in zs) else max(zs)


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
        # Physical values; ``None`` marks a feature with nothing to measure this interval (no applied step),
        # which saturates low, below anything a real value encodes to.
        mean_update = _mean([r.update_ratio for r in applied]) if applied else None
        mean_lr = _mean([r.lr for r in applied]) if applied else None
        physical: dict[str, float | None] = {
            "valid": 1.0,
            "loss": self.smoothed_loss / self.log_vocab,
            "loss_trend": (self.smoothed_loss - prev) / max(abs(prev), 1e-6),
            "loss_vs_best": self.smoothed_loss / max(self.best_loss, 1e-6) - 1.0,
            "loss_cv": loss_cv,
            "loss_z_max": _max_z([r.loss_z for r in records]),
            "grad_z_max": _max_z([r.grad_z for r in records]),
            "log_grad_norm": _mean([r.grad_norm for r in records if math.isfinite(r.grad_norm)]),
            "log_update_ratio": mean_update,
            "log_lr": mean_lr,
            "lr_scale": lr_scale,
            "skip_rate": sum(r.skipped for r in records) / n,
            "nonfinite_rate": sum(r.nonfinite for r in records) / n,
            "rollbacks": rollbacks / self.max_rollbacks,
            "progress": step / self.total_steps,
        }
        row = [-OBS_BOUND if (x := physical[k]) is None else _clip(FEATURES[k].encode(x)) for k in FEATURE_NAMES]
        self.rows.append(np.array(row, dtype=np.float32))
        if len(self.rows) > self.window:
            self.rows.pop(0)

    def observation(self) -> np.ndarray:
        """The last ``window`` rows, oldest first, zero-padded at the front; float32, finite, in bounds."""
        out = np.zeros((self.window, len(FEATURE_NAMES)), dtype=np.float32)
        if self.rows:
            out[-len(self.rows) :] = np.stack(self.rows)
        return out.reshape(-1)


# ----------------------------------------------------------------------------------------------------------
# Decoding: what rule governors read
# ----------------------------------------------------------------------------------------------------------


class ObservationView:
    """Named access to the newest row of a (flattened) telemetry window: ``view["loss"]``, ``view.row(-2)``.

    ``view[name]`` is the feature value as the governor sees it; :meth:`physical` decodes it into the quantity
    it measures (an LR, an update ratio, a coefficient of variation), through the feature's own encoding.
    """

    def __init__(self, observation: np.ndarray) -> None:
        obs = np.asarray(observation, dtype=np.float32)
        self.rows = obs.reshape(-1, len(FEATURE_NAMES))
        self.index = {name: i for i, name in enumerate(FEATURE_NAMES)}

    def __getitem__(self, name: str) -> float:
        return float(self.rows[-1, self.index[name]])

    def row(self, i: int) -> dict[str, float]:
        return {name: float(self.rows[i, j]) for name, j in self.index.items()}

    def physical(self, name: str) -> float | None:
        """The newest row's ``name`` in physical units; ``None`` when it sits at the low clip bound, which for
        ``log_lr``/``log_update_ratio`` means no step was applied in the interval (nothing was measured)."""
        v = self[name]
        if v <= -OBS_BOUND:
            return None
        return FEATURES[name].decode(v)

    @property
    def started(self) -> bool:
        """False on the observation of ``reset`` (no interval has run yet)."""
        return bool(self.rows[-1, self.index["valid"]] > 0)
