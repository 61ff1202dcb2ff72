"""The governed optimizer: one component that measures telemetry and executes a control on any torch optimizer.

This is the only place where a governor's decision touches training. The env's trainer, the plain-PyTorch
wrapper and the Hugging Face integration all call :meth:`GovernedOptimizer.step`, so telemetry and the
true skip have one implementation.

One governed step, in order::

    loss, grads  --> global grad norm (before clipping), finiteness, z-scores vs rolling statistics
                 --> decide: nonfinite -> skip | forced -> skip | above the gate (within budget) -> skip
                 --> skip:  drop the gradients. Nothing else happens: no parameter change, no weight decay,
                            no moment update, no optimizer step count. (Zeroing the gradient and stepping
                            is *not* a skip for AdamW: decay and momentum would still move the weights.)
                 --> apply: clip (baseline option), lr = scheduled lr x lr_scale, optimizer.step(),
                            measure ‖Δθ‖/‖θ‖, update the rolling statistics

Cost. The telemetry is a few passes over the parameters (the gradient norm; θ_old kept; Δθ, ‖θ‖ and ‖Δθ‖
after the step), computed by exactly the reductions of the definition (:mod:`lbw_env.plant.norms`), so its
price is memory traffic and per-call overhead, not arithmetic. Inside a training step both are paid with cold
caches (forward, backward and the optimizer evict the telemetry's data and code), where every Python object
and torch call touched costs several times what a warm loop measures: the step below touches few of them
(no context-manager objects, one host transfer per norm). Where the optimizer is torch's own
Adam/AdamW on float32 CPU parameters, its own step is taken inside the measurement, one cache-sized block of
parameters at a time (:mod:`.blocked`): the same numbers, bit for bit, with the block's θ, gradient and moments
still in cache across the step's passes and θ_new still there when it is measured.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable, Iterable

import torch

from .blocked import BlockedAdam
from .norms import NormPlan, global_norm
from .norms import UpdateBuffer as _UpdateBuffer  # under this name the equivalence tests shrink its CHUNK
from .records import Clipper, RollingStats, SkipReason, StepRecord


@dataclasses.dataclass(frozen=True, slots=True)
class Control:
    """A bounded control for the next optimizer step(s), as the envelope hands it to the plant."""

    lr_scale: float = 1.0
    """Multiplier on the scheduled learning rate."""
    skip_gate: float = math.inf
    """Skip a step whose loss or log gradient norm is more than this many rolling standard deviations above
    its rolling mean (``inf``: never skip for that reason)."""
    force_skip: bool = False
    """Skip the step whatever its telemetry (used by tests and by rule governors that hold training)."""


@dataclasses.dataclass
class GateConfig:
    """How the skip gate measures a step against the past, and how much it may skip."""

    stats_alpha: float = 0.05
    """EWM weight of the rolling loss / log-grad-norm statistics (0.05 = about 20 steps of memory)."""
    stats_warmup: int = 8
    """Applied steps before z-scores (and so the gate) exist."""
    max_skip_fraction: float = 0.25
    """At most this fraction of the last ``budget_window`` steps may be skipped by the gate."""
    budget_window: int = 32
    """Length of the window over which the skip budget is counted."""


class GovernedOptimizer:
    """Wraps a torch optimizer: per step, telemetry in a :class:`StepRecord`, and the :class:`Control` applied.

    Call :meth:`step` after ``loss.backward()`` instead of ``optimizer.step()``; it also clears the
    gradients (a skipped step's gradient must not leak into the next). The learning rate the optimizer's
    param groups hold (set by a schedule or a torch LR scheduler) is the *scheduled* LR; the control scales
    it for this step only.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: Iterable[torch.Tensor] | None = None,
        clip_norm: float = 0.0,
        gate: GateConfig | None = None,
        measure_update: bool = True,
        clipper: Clipper | None = None,
    ) -> None:
        self.optimizer = optimizer
        # The trainable parameters over which norms and update ratios are measured.
        if params is None:
            params = (p for g in optimizer.param_groups for p in g["params"])
        self.params: list[torch.Tensor] = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("GovernedOptimizer: the optimizer has no trainable parameters")
        self.clip_norm, self.clipper = float(clip_norm), clipper  # a clipper's (ZClip's) cap replaces clip_norm
        self.gate = gate or GateConfig()
        self.measure_update = measure_update
        self.loss_stats = RollingStats(self.gate.stats_alpha, self.gate.stats_warmup)
        self.grad_stats = RollingStats(self.gate.stats_alpha, self.gate.stats_warmup)
        self._gate_history: collections.deque[bool] = collections.deque(maxlen=self.gate.budget_window)
        self.steps = 0
        # Partial norms of the gradient, θ and Δθ (rows 0, 1, 2), laid out once. Parameters spread over several
        # devices have no common buffer: they take the reference path.
        device = self.params[0].device
        self._plan: NormPlan | None = None
        if all(p.device == device for p in self.params):
            self._plan = NormPlan(self.params)
            self._partials = torch.empty(3, self._plan.size, dtype=torch.float32, device=device)
            self._targets = [self._plan.targets(row) for row in self._partials]
        # θ before the step: the chunked buffer where it applies, else one buffer like each parameter (both
        # allocated at the first applied step).
        self._chunked = self._plan is not None and _UpdateBuffer.supports(self.params)
        self._update: _UpdateBuffer | None = None
        self._blocked: BlockedAdam | None = None
        """torch's Adam/AdamW step taken chunk by chunk inside the measurement (:mod:`.blocked`), where it applies."""
        self._prev: list[torch.Tensor] | None = None
        self._param_norm = self._norm(self.params)

    def invalidate(self) -> None:
        """Forget the kept copy of θ: call after changing parameters through ``.data`` or a numpy view, which
        no version counter sees (in-place tensor ops, ``load_state_dict`` and snapshot restores need not)."""
        if self._update is not None:
            self._update.stamp = None

    # -- measurement ------------------------------------------------------------------------------------

    @torch.no_grad()
    def _norm(self, tensors: list[torch.Tensor]) -> float:
        """Global L2 norm, accumulated in float32 whatever the parameter dtype (bf16 norms are not rounded to bf16)."""
        if self._plan is not None and tensors is self.params:
            self._plan.fill(tensors, self._targets[1])
            return float(torch.linalg.vector_norm(self._partials[1]))
        return float(global_norm(tensors)) if tensors else 0.0

    def _grad_norm(self) -> float:
        """Global L2 norm of the gradients that exist (0 if none does)."""
        grads = [p.grad for p in self.params]
        if self._plan is None or any(g is None for g in grads):
            present = [g for g in grads if g is not None]
            return float(global_norm(present)) if present else 0.0
        self._plan.fill(grads, self._targets[0])  # type: ignore[arg-type]  # none is None here
        return float(torch.linalg.vector_norm(self._partials[0]))

    def _save_params(self) -> None:
        """Hold θ before the optimizer step, for Δθ."""
        if self._chunked:
            if self._update is None:
                assert self._plan is not None
                self._update = _UpdateBuffer(self.params, self._plan)
                if BlockedAdam.supports(self.optimizer, self.params):
                    self._blocked = BlockedAdam(self.optimizer, self._update.blocks())
            self._update.save()
            return
        if self._prev is None:
            self._prev = [torch.empty_like(p) for p in self.params]
        torch._foreach_copy_(self._prev, self.params)

    def _update_norms(self, step: Callable[[int], None] | None = None) -> tuple[float, float]:
        """‖θ‖ and ‖Δθ‖ after the step, both in one host transfer; ``step``: the optimizer step, by blocks of the
        update buffer, if it has not been taken yet."""
        if self._update is not None:
            self._update.measure(self._partials[1:], step)
            both = torch.linalg.vector_norm(self._partials[1:], dim=1)
        else:
            assert self._prev is not None
            torch._foreach_sub_(self._prev, self.params)  # θ_old − θ_new: Δθ up to the sign, exactly
            if self._plan is None:
                both = torch.stack([global_norm(self.params), global_norm(self._prev)])
            else:
                self._plan.fill(self.params, self._targets[1])
                self._plan.fill(self._prev, self._targets[2])
                both = torch.linalg.vector_norm(self._partials[1:], dim=1)
        param_norm, update_norm = both.tolist()
        return param_norm, update_norm

    def _drop_grads(self) -> None:
        """``optimizer.zero_grad(set_to_none=True)``: every gradient of the optimizer's parameters to None. Where
        the optimizer keeps torch's ``zero_grad``, the same assignments without its per-call profiler scope and
        set-up, which cost more than the assignments (about 0.1 ms a step on a loaded 2-core CPU)."""
        if type(self.optimizer).zero_grad is not torch.optim.Optimizer.zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
            return
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                p.grad = None

    def _gate_allows(self) -> bool:
        """The skip budget: one more gate skip must keep the skipped fraction of the window in bounds."""
        window = self.gate.budget_window
        return (sum(self._gate_history) + 1) <= self.gate.max_skip_fraction * window

    # -- the governed step ------------------------------------------------------------------------------

    def step(self, loss: torch.Tensor | float, control: Control = Control(), tokens: int = 0) -> StepRecord:
        """Measure, decide, then apply or truly skip one optimizer step. Returns its :class:`StepRecord`."""
        grad_mode = torch.is_grad_enabled()  # off as under torch.no_grad(), without its context objects (~30 us cold)
        torch._C._set_grad_enabled(False)
        try:
            return self._step(loss, control, tokens)
        finally:
            torch._C._set_grad_enabled(grad_mode)

    def _step(self, loss: torch.Tensor | float, control: Control, tokens: int) -> StepRecord:
        t0 = time.perf_counter()
        try:  # free unless it fails (zero-cost exceptions): the step's hot path stays as it was
            loss_value = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
        except (RuntimeError, TypeError, ValueError):
            what = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else repr(loss)[:80]
            raise ValueError(f"loss: expected a one-element tensor or a number, got {what}") from None
        grad_norm = self._grad_norm()
        nonfinite = not (math.isfinite(loss_value) and math.isfinite(grad_norm))
        log_grad = math.log(grad_norm) if grad_norm > 0 and math.isfinite(grad_norm) else grad_norm
        loss_z = self.loss_stats.z(loss_value)
        grad_z = self.grad_stats.z(log_grad) if grad_norm > 0 else 0.0

        reason: SkipReason = "none"
        if nonfinite:
            reason = "nonfinite"  # never let NaN/inf reach the weights or the moments
        elif control.force_skip:
            reason = "forced"
        elif max(loss_z, grad_z) > control.skip_gate and self._gate_allows():
            reason = "gate"
        self._gate_history.append(reason == "gate")

        groups = self.optimizer.param_groups
        scheduled_lr = float(groups[0]["lr"])
        if reason != "none":
            # The true skip: drop the gradient and touch nothing else.
            self._drop_grads()
            update_ratio, lr = 0.0, 0.0
        else:
            cap = self.clip_norm if self.clipper is None else self.clipper.cap(grad_norm)
            if cap > 0:  # clip with the norm we already measured (the same arithmetic as clip_grad_norm_)
                torch.nn.utils.clip_grads_with_norm_(self.params, cap, torch.tensor(grad_norm))
            if self.measure_update:
                self._save_params()
            scale = control.lr_scale
            blocked = self._blocked
            if blocked is not None and blocked.ready():  # the step is taken inside the measurement, by blocks
                self._param_norm, update_norm = self._update_norms(lambda k: blocked.step(k, scale))
            else:
                if scale == 1.0:  # x 1.0 changes no LR: spare the scale-and-restore
                    self.optimizer.step()
                else:
                    saved = [g["lr"] for g in groups]
                    for g in groups:
                        g["lr"] = g["lr"] * scale
                    self.optimizer.step()
                    for g, lr_g in zip(groups, saved):
                        g["lr"] = lr_g
                if self.measure_update:
                    self._param_norm, update_norm = self._update_norms()
                else:
                    self._param_norm, update_norm = self._norm(self.params), math.nan
            self._drop_grads()
            lr = scheduled_lr * scale
            update_ratio = update_norm / max(self._param_norm, 1e-12)
            self.loss_stats.update(loss_value)
            self.grad_stats.update(log_grad)
            self.steps += 1

        return StepRecord(
            step=-1,
            loss=loss_value,
            grad_norm=grad_norm,
            update_ratio=update_ratio,
            param_norm=self._param_norm,
            lr=lr,
            lr_scale=float(control.lr_scale),
            skipped=reason != "none",
            skip_reason=reason,
            nonfinite=nonfinite,
            loss_z=loss_z,
            grad_z=grad_z,
            tokens=tokens,
            seconds=time.perf_counter() - t0,
        )

    # -- state (snapshot/restore of the governor-side statistics) ---------------------------------------

    def state_dict(self) -> dict[str, object]:
        return {
            "loss_stats": self.loss_stats.state_dict(),
            "grad_stats": self.grad_stats.state_dict(),
            "gate_history": list(self._gate_history),
            "steps": self.steps,
            "param_norm": self._param_norm,
            "clipper": None if self.clipper is None else self.clipper.state_dict(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.loss_stats.load_state_dict(state["loss_stats"])  # type: ignore[arg-type]
        self.grad_stats.load_state_dict(state["grad_stats"])  # type: ignore[arg-type]
        self._gate_history = collections.deque(state["gate_history"], self.gate.budget_window)  # type: ignore[call-overload]
        self.steps = int(state["steps"])  # type: ignore[call-overload]
        self._param_norm = float(state["param_norm"])  # type: ignore[arg-type]
        if self.clipper is not None:
            self.clipper.load_state_dict(state["clipper"])  # type: ignore[arg-type]
        self.invalidate()  # a restore bumps the version counters anyway; this does not rely on it
