"""ZClip: adaptive gradient clipping by the z-score of the global gradient norm (Kumar et al. 2025).

A faithful reimplementation of the ``zclip`` package's ``ZClip`` (version 1.0.0), fed with the norm the governed
step has already measured instead of computing its own over a model: the package's ``step(model)`` sums the
parameters' norms again, and it would see, and be poisoned by, a non-finite step that the governed step skips.
Here the clipper sees only the steps that are applied, after the skip decision, so a true skip leaves its state
alone as it leaves the optimizer's. ``tests/test_optimizers.py`` checks it against the package, norm by norm.

The rule, per applied step with gradient norm ``g``:

* warm-up (the first ``warmup_steps`` applied steps): collect ``g``; clip only at the fixed cap (``max_norm``,
  the package's ``max_grad_norm``); at the end, the EMA starts from the buffer's mean and (population) variance;
* then ``z = (g - mean) / (std + eps)``; if ``z > z_thresh``, the threshold is ``mean + z_thresh * std / (z /
  z_thresh)`` times ``clip_factor`` (adaptive scaling; ``clip_option: mean`` uses the mean), else none
  (``mode: percentile``: always ``mean + z_thresh * std``, applied when ``g`` exceeds it);
* the effective threshold is the smaller of that (or ``g`` when there is none) and ``max_norm``; the gradient is
  scaled only when ``g`` exceeds it;
* the EMA takes the clipped threshold, or ``g`` when nothing was clipped (``mean`` first, then ``var`` with the
  new mean, as the package does), unless ``skip_update_on_spike`` and the step was an outlier.
"""

from __future__ import annotations

from typing import Any

from .config import ZClipConfig

EPS = 1e-6
"""The package's ``eps``: keeps the z-score finite when the EMA variance is zero."""


class ZClip:
    """The ZClip rule as a clipper of the governed step: :meth:`cap` answers the max norm to clip ``g`` to."""

    def __init__(self, cfg: ZClipConfig, max_norm: float = 0.0) -> None:
        self.cfg = cfg
        self.max_norm = float(max_norm)
        """The fixed cap on top (the package's ``max_grad_norm``; 0: none)."""
        self.buffer: list[float] = []
        self.mean: float | None = None
        self.var: float | None = None

    def _threshold(self, g: float) -> float | None:
        """The adaptive clip value for ``g`` (the package's ``_compute_clip_val``), or None: no clipping."""
        c = self.cfg
        assert self.mean is not None and self.var is not None
        std = self.var**0.5
        if c.mode == "percentile":
            threshold = self.mean + c.z_thresh * std
            return threshold if g > threshold else None
        z = (g - self.mean) / (std + EPS)
        if z <= c.z_thresh:
            return None
        if c.clip_option == "mean":
            return self.mean
        return (self.mean + (c.z_thresh * std) / (z / c.z_thresh)) * c.clip_factor

    def cap(self, g: float) -> float:
        """The norm to clip this applied step's gradient to (0: leave it), and the statistics updated with it.

        Call once per applied step, with its finite global norm ``g``."""
        if self.mean is None or self.var is None:  # warm-up: collect, clip only at the fixed cap
            self.buffer.append(g)
            if len(self.buffer) >= self.cfg.warmup_steps:
                n = len(self.buffer)
                self.mean = sum(self.buffer) / n
                self.var = sum((x - self.mean) ** 2 for x in self.buffer) / n
                self.buffer = []
            return self.max_norm
        clip_val = self._threshold(g)
        effective = clip_val if clip_val is not None else g
        if self.max_norm > 0:
            effective = min(effective, self.max_norm)
        if clip_val is None or not self.cfg.skip_update_on_spike:
            x = clip_val if clip_val is not None else g
            a = self.cfg.alpha
            self.mean = a * self.mean + (1 - a) * x
            self.var = a * self.var + (1 - a) * (x - self.mean) ** 2
        return effective if g > effective else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": list(self.buffer), "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer = list(state["buffer"])
        self.mean, self.var = state["mean"], state["var"]
