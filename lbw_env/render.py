"""What ``LBWEnv.render()`` shows: the episode so far, as one line of text (``ansi``) or an RGB image (``rgb_array``).

The env appends each decision interval to an :class:`EpisodeTrace` (a few floats per optimizer step, always:
cheap, and a frame must be drawable at any moment); the image is drawn only when ``render()`` is called.

The ``rgb_array`` frame (:func:`draw_frame`) is a fixed-size ``uint8`` array of shape ``(FRAME_HEIGHT,
FRAME_WIDTH, 3)`` — the same shape every call, as video recorders (SB3's ``VecVideoRecorder``, Gymnasium's
``RecordVideo``) require — with three panels over the optimizer steps of the run:

1. **loss**: every step's training loss (grey), the smoothed loss the governor sees at each decision (blue),
   skipped steps (red crosses; non-finite ones at the top edge), rollbacks (purple dashed lines);
2. **LR scale**: the governor's multiplier on the schedule (log axis), with the envelope's bounds (dotted);
3. **skips**: skipped steps per decision interval (bars), and the running count of rollbacks.

matplotlib is imported on the first drawn frame, not with the env: most envs are never rendered, and a fresh
matplotlib install builds its font cache on first import.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .plant.records import StepRecord

FRAME_WIDTH = 640
FRAME_HEIGHT = 480
"""Frame size in pixels (even, as video codecs need; 4:3)."""
_DPI = 80


@dataclasses.dataclass
class EpisodeTrace:
    """The episode so far, as the frames draw it: per step, per decision, and the rollbacks."""

    scenario: str = ""
    total_steps: int = 0
    initial_loss: float = math.nan
    steps: list[int] = dataclasses.field(default_factory=list)
    losses: list[float] = dataclasses.field(default_factory=list)
    lr_scales: list[float] = dataclasses.field(default_factory=list)
    skipped: list[bool] = dataclasses.field(default_factory=list)
    decision_ends: list[int] = dataclasses.field(default_factory=list)
    """Steps taken at the end of each decision interval."""
    smoothed: list[float] = dataclasses.field(default_factory=list)
    """The smoothed training loss after each decision interval (after a rollback: the restored state's)."""
    interval_skips: list[int] = dataclasses.field(default_factory=list)
    rollbacks: list[int] = dataclasses.field(default_factory=list)
    """Steps at which the run was rolled back."""
    final_ppl: float | None = None

    @classmethod
    def start(cls, scenario: str, total_steps: int, initial_loss: float) -> EpisodeTrace:
        """An empty trace for a new episode (the smoothed loss starts at ``initial_loss``)."""
        return cls(scenario, total_steps, initial_loss, decision_ends=[0], smoothed=[initial_loss])

    def add(self, records: Sequence[StepRecord], smoothed_loss: float, rolled_back: bool) -> None:
        """Append one decision interval."""
        for r in records:
            self.steps.append(r.step)
            self.losses.append(float(r.loss))
            self.lr_scales.append(float(r.lr_scale))
            self.skipped.append(bool(r.skipped))
        end = records[-1].step + 1 if records else (self.decision_ends[-1] if self.decision_ends else 0)
        self.decision_ends.append(end)
        self.smoothed.append(float(smoothed_loss))
        self.interval_skips.append(sum(r.skipped for r in records))
        if rolled_back:
            self.rollbacks.append(end)


def ansi_line(info: Mapping[str, Any], records: Sequence[StepRecord]) -> str:
    """One line for the last decision interval (``render_mode="ansi"``)."""
    if not records:
        return f"[{info.get('scenario')}] step 0: reset"
    finite = [r.loss for r in records if math.isfinite(r.loss)]
    line = (
        f"[{info['scenario']}] step {info['step']:5d}  loss {np.mean(finite) if finite else math.nan:7.4f}  "
        f"lr_scale {info['control']['lr_scale']:.3f}  gate {info['control']['skip_gate']:.1f}  "
        f"skipped {sum(r.skipped for r in records)}/{len(records)}"
    )
    if info.get("rollback"):
        line += f"  ROLLBACK ({info['rollback']})"
    if "final" in info:
        line += f"  final valid ppl {info['final']['valid_ppl']:.2f}"
    return line


def draw_frame(trace: EpisodeTrace | None, lr_bounds: tuple[float, float]) -> np.ndarray:
    """The episode so far as an RGB ``uint8`` image of shape ``(FRAME_HEIGHT, FRAME_WIDTH, 3)``.

    ``trace`` None: before the first reset (an empty frame of the same shape). ``lr_bounds``: the envelope's
    ``(lr_scale_min, lr_scale_max)``, drawn as the LR-scale panel's limits.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(FRAME_WIDTH / _DPI, FRAME_HEIGHT / _DPI), dpi=_DPI)
    canvas = FigureCanvasAgg(fig)
    loss_ax, lr_ax, skip_ax = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.4]})
    if trace is None:
        fig.suptitle("LBWEnv: call reset() first", fontsize=11)
    else:
        _draw_loss(loss_ax, trace)
        _draw_lr(lr_ax, trace, lr_bounds)
        _draw_skips(skip_ax, trace)
        loss_ax.set_xlim(0, max(trace.total_steps, 1))
        fig.suptitle(_title(trace), fontsize=11)
    skip_ax.set_xlabel("optimizer step", fontsize=9)
    for ax in (loss_ax, lr_ax, skip_ax):
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    fig.tight_layout(pad=0.6)
    canvas.draw()
    return np.array(canvas.buffer_rgba())[..., :3]  # a copy: the canvas buffer goes with the figure


def _title(trace: EpisodeTrace) -> str:
    done = trace.decision_ends[-1] if trace.decision_ends else 0
    text = (
        f"{trace.scenario}   step {done}/{trace.total_steps}   skipped {sum(trace.skipped)}   "
        f"rollbacks {len(trace.rollbacks)}"
    )
    if trace.final_ppl is not None:
        text += f"   valid ppl {trace.final_ppl:.1f}"
    return text


def _draw_loss(ax: Any, trace: EpisodeTrace) -> None:
    steps = np.asarray(trace.steps, dtype=float)
    losses = np.asarray(trace.losses, dtype=float)
    finite = losses[np.isfinite(losses)]
    reference = [x for x in (*finite.tolist(), trace.initial_loss, *trace.smoothed) if math.isfinite(x)]
    lo = min(reference) if reference else 0.0
    # Spikes (an LR shock) would flatten the rest of the curve: the top is held near the typical loss.
    typical = max(float(np.percentile(finite, 95)) if finite.size else lo, trace.initial_loss, lo)
    hi = typical * 1.25 if math.isfinite(typical) else lo + 1.0
    ax.plot(steps, np.where(np.isfinite(losses), losses, np.nan), color="0.6", lw=0.8, label="step loss")
    ax.plot(trace.decision_ends, trace.smoothed, color="tab:blue", lw=1.8, marker=".", label="smoothed (governor)")
    skipped = np.asarray(trace.skipped, dtype=bool)
    if skipped.any():
        y = np.where(np.isfinite(losses), np.minimum(losses, hi), hi)[skipped]
        ax.plot(steps[skipped], y, "x", color="tab:red", ms=5, label="skipped")
    for i, step in enumerate(trace.rollbacks):
        ax.axvline(step, color="tab:purple", ls="--", lw=1.2, label="rollback" if i == 0 else None)
    ax.set_ylim(lo - 0.02 * abs(lo) - 1e-3, hi)
    ax.set_ylabel("loss (nats)", fontsize=9)
    ax.legend(loc="upper right", fontsize=7, ncol=2)


def _draw_lr(ax: Any, trace: EpisodeTrace, lr_bounds: tuple[float, float]) -> None:
    lo, hi = lr_bounds
    if trace.steps:
        ax.step(trace.steps, trace.lr_scales, where="post", color="tab:green", lw=1.5)
    ax.axhline(lo, color="0.4", ls=":", lw=1)
    ax.axhline(hi, color="0.4", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_ylim(lo / 1.5, hi * 1.5)
    ax.set_ylabel("LR scale", fontsize=9)


def _draw_skips(ax: Any, trace: EpisodeTrace) -> None:
    starts, ends = trace.decision_ends[:-1], trace.decision_ends[1:]
    widths = [max(b - a, 1) for a, b in zip(starts, ends)]
    ax.bar(starts, trace.interval_skips, width=widths, align="edge", color="tab:red", alpha=0.6, label="skips")
    ax.set_ylabel("skips", fontsize=9)
    top = max([*trace.interval_skips, 1])
    ax.set_ylim(0, top * 1.3)
    if trace.rollbacks:
        twin = ax.twinx()
        k = len(trace.rollbacks)
        xs, ys = [0, *trace.rollbacks, trace.decision_ends[-1]], [*range(k + 1), k]
        twin.step(xs, ys, where="post", color="tab:purple", lw=1.5)
        twin.set_ylim(0, len(trace.rollbacks) + 0.5)
        twin.set_ylabel("rollbacks", fontsize=8, color="tab:purple")
        twin.tick_params(labelsize=7)
