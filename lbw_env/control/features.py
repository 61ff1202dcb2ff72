"""Observation features: one row of named, normalised telemetry per decision interval, and their decoding.

Encoding (:class:`TelemetryWindow`) and decoding (:class:`ObservationView`) live side by side, so a rule that
reads a feature in physical units (an LR, an update ratio, a loss CV) never restates the encoding's constants.
"""

from __future__ import annotations

import math

import numpy as np

from ..plant.records import StepRecord

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
