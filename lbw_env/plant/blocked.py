"""torch's own Adam/AdamW step, taken block by block between the telemetry's reads: the same numbers, fewer passes
over memory.

A foreach AdamW step is about ten passes over all of the parameters and their state (weight decay, the two moments,
the square root, the division, the update), each a separate multi-tensor call over every tensor: on a model
whose θ, gradient and moments (16 bytes a parameter) outgrow a core's cache, each pass streams them in again.
The telemetry then reads θ again for ‖Δθ‖ and ‖θ‖ (:class:`~lbw_env.plant.norms.UpdateBuffer`). Here the
optimizer's own functional step (``torch.optim.adam.adam``, the function ``Adam.step`` calls, with the same
arguments) runs on one block of parameters at a time, right before the telemetry measures that block: the block's
state stays in cache across the passes, and θ_new is still there when it is measured.

Why the numbers are the same: every operation of the step is elementwise on one tensor with scalars from its
group and its own step counter, and on the CPU a multi-tensor call is a loop over its tensors, so a tensor's new
values do not depend on which other tensors share the call (tests/test_optimizer_overhead_equivalence.py compares
parameters, moments and step counters bit for bit against ``optimizer.step()``). A block is whole parameters:
a row range of a large matrix would call the step twice on it and count two steps.

What it refuses, leaving ``optimizer.step()`` to run as usual: any optimizer other than torch's ``Adam``/``AdamW``;
capturable or differentiable groups, tensor LRs or betas, AMP's grad scaling; a parameter without a gradient or
without state yet (the first step initialises it); any step hook (per optimizer or global) and any wrapper of
``step`` on the instance (an LR scheduler's call counter), which only ``optimizer.step()`` would run.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch.optim import optimizer as torch_optimizer
from torch.optim.adam import adam

_SAME_STEP = (torch.optim.Adam, torch.optim.AdamW)
"""Optimizers whose ``step`` is exactly ``adam(...)`` per param group (AdamW only sets decoupled weight decay)."""
_ARGUMENTS = {
    *("amsgrad", "has_complex", "beta1", "beta2", "lr", "weight_decay", "eps", "maximize", "foreach"),
    *("capturable", "differentiable", "fused", "decoupled_weight_decay"),
}
_KNOWN_SIGNATURE = set(inspect.signature(adam).parameters) >= _ARGUMENTS
"""The functional step takes the arguments :meth:`BlockedAdam.step` passes (torch 2.13's); a torch whose ``adam``
differs leaves every step to ``optimizer.step()``."""


class BlockedAdam:
    """Steps a torch ``Adam``/``AdamW`` one block of parameters at a time (:meth:`step`), when :meth:`ready`."""

    @staticmethod
    def supports(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> bool:
        """Whether blocks of ``params`` can replace ``optimizer.step()``: torch's Adam or AdamW, groups that take
        plain float hyperparameters, and exactly these parameters (a parameter left out would not be stepped)."""
        if not _KNOWN_SIGNATURE or type(optimizer) not in _SAME_STEP:
            return False
        for group in optimizer.param_groups:
            if group["capturable"] or group["differentiable"]:
                return False
            if any(isinstance(v, torch.Tensor) for v in (group["lr"], *group["betas"])):
                return False
        held = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        return len(held) == len(params) and {id(p) for p in held} == {id(p) for p in params}

    def __init__(self, optimizer: torch.optim.Optimizer, blocks: Sequence[Sequence[torch.Tensor]]) -> None:
        self.optimizer = optimizer
        group_of = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
        self.blocks: list[list[tuple[int, list[torch.Tensor]]]] = []
        """Per block: (index of a param group, its parameters in the block), groups in order. Indices, not the
        group dicts: ``optimizer.load_state_dict`` replaces the dicts (with the same parameters in them)."""
        for block in blocks:
            indices = sorted({group_of[id(p)] for p in block})
            self.blocks.append([(i, [p for p in block if group_of[id(p)] == i]) for i in indices])
        self.params = [p for block in blocks for p in block]

    def ready(self) -> bool:
        """Whether this step may go block by block: every parameter has a gradient and Adam state, and nothing
        (a hook, a wrapper of ``step``, AMP's scaler) expects ``optimizer.step()`` to be called."""
        opt = self.optimizer
        if "step" in vars(opt) or opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks:
            return False
        if torch_optimizer._global_optimizer_pre_hooks or torch_optimizer._global_optimizer_post_hooks:
            return False
        if getattr(opt, "grad_scale", None) is not None or getattr(opt, "found_inf", None) is not None:
            return False
        state = opt.state
        return all(p.grad is not None and "step" in state.get(p, ()) for p in self.params)

    def step(self, block: int, lr_scale: float = 1.0) -> None:
        """``optimizer.step()`` restricted to one block, at ``lr_scale`` times each group's LR."""
        state, groups = self.optimizer.state, self.optimizer.param_groups
        for index, params in self.blocks[block]:
            group = groups[index]
            states = [state[p] for p in params]
            beta1, beta2 = group["betas"]
            amsgrad = group["amsgrad"]
            adam(
                params,
                [p.grad for p in params],  # type: ignore[misc]  # ready() saw every gradient
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [s["max_exp_avg_sq"] for s in states] if amsgrad else [],
                [s["step"] for s in states],
                amsgrad=amsgrad,
                has_complex=False,  # float32 parameters only (UpdateBuffer.supports)
                beta1=beta1,
                beta2=beta2,
                lr=group["lr"] * lr_scale,  # x 1.0 is exact: no special case
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
                foreach=group["foreach"],
                capturable=False,
                differentiable=False,
                fused=group["fused"],
                decoupled_weight_decay=group["decoupled_weight_decay"],
            )
