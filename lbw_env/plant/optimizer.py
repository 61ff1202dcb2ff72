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
after the step), so its price is memory traffic and per-call overhead, not arithmetic. Every norm is computed
by exactly the reductions of :func:`_partial_norms` (float32 row norms of large matrices, one norm per other
tensor, then the norm of those), so the numbers are the reference's bits whatever the bookkeeping. What is
saved: each layout is planned once and filled in place (:class:`_NormPlan`); on the CPU, θ lives in one
buffer whose rows of equal length lie together, measured chunk by chunk while in cache and kept from one
step to the next, so no copy of θ is taken before a step that follows an applied one (:class:`_UpdateBuffer`).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import time
from collections.abc import Iterable

import torch

from .records import Clipper, RollingStats, SkipReason, StepRecord

_FLAT_NORM_MAX = 1 << 14
"""Tensors up to this many elements are reduced flat; larger matrices row by row first. A flat float32 norm on
the CPU loses precision linearly with length (measured: 1e-6 relative at 16k elements, 2.5e-5 on qwen2-tiny's
131k-element tied-embedding gradient, 6e-5 on qwen2-m's: enough to clip above the cap); row norms, then the
norm of those, stay within ~1e-7 at a cost within measurement noise (under 0.3 % of a qwen2-tiny step)."""


def _by_rows(t: torch.Tensor) -> bool:
    return t.dim() >= 2 and t.numel() > _FLAT_NORM_MAX


def _flat_norms(flat: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    # dtype only where needed: foreach norms of bf16/fp16 tensors would come back rounded to that dtype.
    if all(t.dtype == torch.float32 for t in flat):
        return torch._foreach_norm(flat)
    return torch._foreach_norm(flat, dtype=torch.float32)


def _partial_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Float32 L2 norms of the tensors (of each row, for large matrices): the global norm is the norm of these.

    The reference layout: the row norms of each large matrix in order, then one norm per other tensor in order.
    """
    flat: list[torch.Tensor] = []
    parts: list[torch.Tensor] = []
    for t in tensors:
        if _by_rows(t):
            parts.append(torch.linalg.vector_norm(t.flatten(1), dim=1, dtype=torch.float32))
        else:
            flat.append(t)
    if flat:
        parts.append(torch.stack(_flat_norms(flat)))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm as a 0-d float32 tensor (no host sync)."""
    return torch.linalg.vector_norm(_partial_norms(tensors))


class _NormPlan:
    """:func:`_partial_norms` for a fixed list of tensor shapes, planned once, written into preallocated rows.

    The same reductions on the same tensors, so the same bits; what it saves is the per-step sorting, the
    allocations and the ``cat`` (one call per large matrix and one for all the other tensors remain).
    """

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.rows = [i for i, t in enumerate(tensors) if _by_rows(t)]
        self.flat = [i for i, t in enumerate(tensors) if not _by_rows(t)]
        self.row_counts = [tensors[i].shape[0] for i in self.rows]
        self.size = sum(self.row_counts) + len(self.flat)

    def targets(self, out: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Views of a 1-d buffer of :attr:`size` elements: one per large matrix, then one for the other norms."""
        starts = list(itertools.accumulate(self.row_counts, initial=0))
        return [out[a:b] for a, b in itertools.pairwise(starts)], out[starts[-1] :]

    def fill(self, tensors: list[torch.Tensor], targets: tuple[list[torch.Tensor], torch.Tensor]) -> None:
        """Write the partial norms of ``tensors`` (shaped as planned) into ``targets``."""
        row_out, flat_out = targets
        for i, out in zip(self.rows, row_out):
            torch.linalg.vector_norm(tensors[i].flatten(1), dim=1, dtype=torch.float32, out=out)
        if self.flat:
            torch.stack(_flat_norms([tensors[i] for i in self.flat]), out=flat_out)


@dataclasses.dataclass
class _Chunk:
    """Parameters (or row ranges of a large matrix) measured together: their part of θ and of the update buffer
    fits in a core's cache."""

    params: list[torch.Tensor] = dataclasses.field(default_factory=list)
    rows: list[tuple[int, int] | None] = dataclasses.field(default_factory=list)
    """Per parameter: the range of its rows in this chunk, or None for all of it."""
    views: list[torch.Tensor] = dataclasses.field(default_factory=list)
    """Their places in the update buffer."""
    blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=list)
    """Runs of rows of equal length in the buffer, and where the norms of those rows go (θ, Δθ)."""


class _UpdateBuffer:
    """A copy of θ that outlives the step, and ‖θ‖, ‖Δθ‖ measured from it chunk by chunk (CPU, float32).

    Layout: one buffer in which every row of a large matrix and every other tensor is a row, rows of equal
    length side by side, so that the norms of a run of them take one row-wise reduction. A contiguous row is
    reduced by the same kernel whether it is a tensor of its own or a row of a block, so the norms are the
    reference's bits; a fixed permutation puts them in :class:`_NormPlan` order.

    After the optimizer step, chunk by chunk (about :attr:`CHUNK` elements, so that the chunk's θ and buffer
    stay in a core's cache while they are read four times): subtract θ_new (the buffer holds θ_old − θ_new,
    Δθ up to its sign), take the row norms, copy θ_new back in, take its row norms. The buffer then holds
    θ_new, which is the next step's θ_old unless something changed the parameters in between. Any in-place
    change bumps a tensor's version counter and a new storage changes its data pointer, so a stamp of both
    says when the copy before the next step can be skipped. Writes through ``.data`` (or a numpy view) bypass
    the version counter: after such a change call :meth:`GovernedOptimizer.invalidate`.
    """

    CHUNK = 1 << 17
    """Elements per chunk: 512 KiB of θ and 512 KiB of buffer, well inside a 1-2 MiB L2 cache."""

    @staticmethod
    def supports(params: list[torch.Tensor]) -> bool:
        """Float32 contiguous parameters, all on the CPU (a GPU's multi-tensor norm is another kernel)."""
        return all(
            p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous() and p.numel() > 0 for p in params
        )

    def __init__(self, params: list[torch.Tensor], plan: _NormPlan) -> None:
        rows = {i: params[i].shape[0] for i in plan.rows} | {i: 1 for i in plan.flat}
        planned = plan.rows + plan.flat
        first_row = dict(zip(planned, itertools.accumulate([rows[i] for i in planned], initial=0)))
        length = {i: params[i].numel() // rows[i] for i in planned}
        layout = sorted(planned, key=lambda i: (length[i], first_row[i]))  # equal row lengths side by side
        buffer = torch.empty(sum(p.numel() for p in params), dtype=torch.float32)
        self.norms = torch.empty(2, plan.size, dtype=torch.float32)
        """Row norms of θ (0) and of the update (1), in layout order."""
        self.chunks: list[_Chunk] = []
        order: list[int] = []  # plan position of each layout row
        start: dict[int, int] = {}  # where each parameter begins in the buffer
        offset = row = size = run_offset = run_row = 0
        run_length = -1
        for i in layout:
            k, n = rows[i], length[i]
            per_piece = k if k * n <= self.CHUNK else max(1, self.CHUNK // n)  # a large matrix by row ranges
            start[i] = offset
            for a in range(0, k, per_piece):
                b = min(a + per_piece, k)
                if not self.chunks or (size + (b - a) * n > self.CHUNK and size >= self.CHUNK // 4):
                    self.chunks.append(_Chunk())
                    size, run_length = 0, -1
                chunk = self.chunks[-1]
                whole = b - a == k
                chunk.params.append(params[i])
                chunk.rows.append(None if whole else (a, b))
                view = buffer[offset : offset + (b - a) * n]
                chunk.views.append(view.view(params[i].shape if whole else (b - a, n)))
                if n != run_length:  # a new run of rows of this length
                    run_length, run_offset, run_row = n, offset, row
                    chunk.blocks.append((buffer, buffer, buffer))  # placeholder, set below
                order.extend(range(first_row[i] + a, first_row[i] + b))
                offset, row, size = offset + (b - a) * n, row + b - a, size + (b - a) * n
                run = buffer[run_offset:offset].view(-1, n)
                chunk.blocks[-1] = (run, self.norms[0, run_row:row], self.norms[1, run_row:row])
        self.params = [params[i] for i in layout]
        self.views = [buffer[start[i] : start[i] + params[i].numel()].view(params[i].shape) for i in layout]
        position = [0] * plan.size
        for layout_row, plan_row in enumerate(order):
            position[plan_row] = layout_row
        self.perm = torch.tensor(position, dtype=torch.long)
        self.stamp: list[tuple[int, int]] | None = None
        """Version and data pointer of each parameter when the buffer last held θ (None: it does not)."""

    def save(self) -> None:
        """Make the buffer hold θ (before the optimizer step), unless it still does."""
        if self.stamp != [(p._version, p.data_ptr()) for p in self.params]:
            torch._foreach_copy_(self.views, self.params)

    def measure(self, out: torch.Tensor) -> None:
        """Row norms of θ_new and of the update into ``out`` (2 x plan size, plan order); keeps θ_new."""
        for chunk in self.chunks:
            new = chunk.params
            if any(chunk.rows):  # row ranges of a large matrix: views of them, taken now (never stale)
                new = [p if r is None else p.flatten(1)[r[0] : r[1]] for p, r in zip(chunk.params, chunk.rows)]
            torch._foreach_sub_(chunk.views, new)  # θ_old − θ_new
            for block, _, delta in chunk.blocks:
                torch.linalg.vector_norm(block, dim=1, out=delta)
            torch._foreach_copy_(chunk.views, new)
            for block, theta, _ in chunk.blocks:
                torch.linalg.vector_norm(block, dim=1, out=theta)
        torch.index_select(self.norms, 1, self.perm, out=out)
        self.stamp = [(p._version, p.data_ptr()) for p in self.params]


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
        self._plan: _NormPlan | None = None
        if all(p.device == device for p in self.params):
            self._plan = _NormPlan(self.params)
            self._partials = torch.empty(3, self._plan.size, dtype=torch.float32, device=device)
            self._targets = [self._plan.targets(row) for row in self._partials]
        # θ before the step: the chunked buffer where it applies, else one buffer like each parameter (both
        # allocated at the first applied step).
        self._chunked = self._plan is not None and _UpdateBuffer.supports(self.params)
        self._update: _UpdateBuffer | None = None
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
        return float(_global_norm(tensors)) if tensors else 0.0

    def _grad_norm(self) -> float:
        """Global L2 norm of the gradients that exist (0 if none does)."""
        grads = [p.grad for p in self.params]
        if self._plan is None or any(g is None for g in grads):
            present = [g for g in grads if g is not None]
            return float(_global_norm(present)) if present else 0.0
        self._plan.fill(grads, self._targets[0])  # type: ignore[arg-type]  # none is None here
        return float(torch.linalg.vector_norm(self._partials[0]))

    def _save_params(self) -> None:
        """Hold θ before the optimizer step, for Δθ."""
        if self._chunked:
            if self._update is None:
                assert self._plan is not None
                self._update = _UpdateBuffer(self.params, self._plan)
            self._update.save()
            return
        if self._prev is None:
            self._prev = [torch.empty_like(p) for p in self.params]
        torch._foreach_copy_(self._prev, self.params)

    def _update_norms(self) -> tuple[float, float]:
        """‖θ‖ and ‖Δθ‖ after the step, both in one host transfer."""
        if self._update is not None:
            self._update.measure(self._partials[1:])
            both = torch.linalg.vector_norm(self._partials[1:], dim=1)
        else:
            assert self._prev is not None
            torch._foreach_sub_(self._prev, self.params)  # θ_old − θ_new: Δθ up to the sign, exactly
            if self._plan is None:
                both = torch.stack([_global_norm(self.params), _global_norm(self._prev)])
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

    @torch.no_grad()
    def step(self, loss: torch.Tensor | float, control: Control = Control(), tokens: int = 0) -> StepRecord:
        """Measure, decide, then apply or truly skip one optimizer step. Returns its :class:`StepRecord`."""
        t0 = time.perf_counter()
        loss_value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
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
            if scale == 1.0:  # x 1.0 changes no LR: spare the scale-and-restore
                self.optimizer.step()
            else:
                saved = [g["lr"] for g in groups]
                for g in groups:
                    g["lr"] = g["lr"] * scale
                self.optimizer.step()
                for g, lr_g in zip(groups, saved):
                    g["lr"] = lr_g
            self._drop_grads()
            lr = scheduled_lr * scale
            if self.measure_update:
                self._param_norm, update_norm = self._update_norms()
                update_ratio = update_norm / max(self._param_norm, 1e-12)
            else:
                self._param_norm = self._norm(self.params)
                update_ratio = math.nan
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
