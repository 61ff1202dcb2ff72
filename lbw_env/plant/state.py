"""Model + optimizer state in reusable buffers: the snapshot behind rollbacks and cached initial states.

Parameters, the optimizer's per-parameter state and the governed optimizer's rolling statistics, copied into
preallocated buffers, for any torch optimizer. :class:`~lbw_env.plant.trainer.Plant` builds its snapshots on it,
and the integrations use it for their rollback targets.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from .optimizer import GovernedOptimizer


@dataclasses.dataclass
class TrainState:
    """Trainable parameters, the optimizer's per-parameter state and the governed optimizer's statistics.

    Only tensors that training changes are copied: frozen parameters (a LoRA base) are not in ``params``.
    """

    params: list[torch.Tensor]
    """Copies of the trainable parameters, in the order of the ``params`` list they were taken from."""
    opt_state: list[dict[str, Any]]
    """Per parameter, a copy of ``optimizer.state[p]`` (``{}``: no state yet, e.g. before the first step)."""
    opt_groups: list[dict[str, Any]]
    """Per parameter group, a copy of what the optimizer keeps there besides the parameters and the schedule's LR
    (:data:`SCHEDULE_KEYS`): Prodigy's and D-Adaptation's step-size estimates and step counts, schedule-free's
    weight sums and train/eval mode. Plain AdamW keeps only its hyperparameters there."""
    governed_state: dict[str, Any]
    """:meth:`GovernedOptimizer.state_dict` (rolling loss/gradient statistics, skip-budget history)."""


SCHEDULE_KEYS = frozenset({"params", "lr", "initial_lr"})
"""Group entries a snapshot leaves alone: the parameters themselves, and the LR, which belongs to the schedule (the
plant writes it before every step; a torch LR scheduler owns it in the integrations)."""


def _copy_value(value: Any, old: Any) -> Any:
    """``value`` copied into ``old``'s buffer when shapes and dtypes allow, else into a new one."""
    if not isinstance(value, torch.Tensor):
        return copy.deepcopy(value)  # e.g. an int step count some optimizers keep
    if isinstance(old, torch.Tensor) and old.shape == value.shape and old.dtype == value.dtype:
        old.copy_(value)
        return old
    return value.detach().clone()


def capture_train_state(
    params: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    governed: GovernedOptimizer,
    into: TrainState | None = None,
) -> TrainState:
    """Copy the training state of ``params`` (and their ``optimizer`` state) into ``into``'s buffers if given.

    Reusing buffers makes a snapshot a plain memory copy after the first one. Every copy stays on its
    tensor's device and is exact, so a restore replays bit for bit. Memory: one copy of the trainable
    parameters and their optimizer state (for AdamW 3x the trainable parameters), and the group-level state.
    """
    detached = [p.detach() for p in params]
    if into is None or len(into.params) != len(detached):
        snap_params = [p.clone() for p in detached]
    else:
        snap_params = into.params
        torch._foreach_copy_(snap_params, detached)
    opt_state: list[dict[str, Any]] = []
    for i, p in enumerate(params):
        st = optimizer.state.get(p, {})  # .get: the state is a defaultdict, and reading must not create entries
        old = into.opt_state[i] if into is not None and i < len(into.opt_state) else {}
        opt_state.append({k: _copy_value(v, old.get(k)) for k, v in st.items()})
    groups = [{k: copy.deepcopy(v) for k, v in g.items() if k not in SCHEDULE_KEYS} for g in optimizer.param_groups]
    return TrainState(snap_params, opt_state, groups, copy.deepcopy(governed.state_dict()))


def restore_train_state(
    state: TrainState,
    params: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    governed: GovernedOptimizer,
) -> None:
    """Put ``state`` back into ``params``, ``optimizer`` and ``governed`` (``state`` stays valid for reuse).

    Gradients are dropped: whatever was accumulated belongs to the state being left.
    """
    with torch.no_grad():
        torch._foreach_copy_([p.detach() for p in params], state.params)
    for p, saved in zip(params, state.opt_state, strict=True):
        if not saved:
            optimizer.state.pop(p, None)
            continue
        st = optimizer.state[p]
        for k in [k for k in st if k not in saved]:
            del st[k]
        for k, v in saved.items():
            cur = st.get(k)
            if isinstance(v, torch.Tensor) and isinstance(cur, torch.Tensor) and cur.shape == v.shape:
                cur.copy_(v)
            elif isinstance(v, torch.Tensor):
                st[k] = v.clone()
            else:
                st[k] = copy.deepcopy(v)
    for group, saved_group in zip(optimizer.param_groups, state.opt_groups, strict=True):
        group.update(copy.deepcopy(saved_group))
    for p in params:
        p.grad = None
    governed.load_state_dict(copy.deepcopy(state.governed_state))
