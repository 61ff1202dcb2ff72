"""The torch optimizers the plant can train with (``optim.name``), each at the settings its authors recommend.

Every optimizer runs under the same governed step (:class:`~lbw_env.plant.optimizer.GovernedOptimizer`:
telemetry, true skip, the governor's LR scale) and the same schedule: the plant writes the scheduled LR into
every parameter group before each step, and the governed step scales it. What differs is what that LR means:

* ``adamw`` — ``torch.optim.AdamW`` (foreach): the LR is the step size. The reference optimizer.
* ``prodigy`` — ``prodigyopt.Prodigy``: the LR multiplies a step size Prodigy estimates itself. Its README:
  "We recommend using lr=1. (default) for all networks", no scheduler or cosine annealing, and
  ``safeguard_warmup=True`` "to avoid issues with warm-up" (the LR leaves the denominator of the D estimate),
  so it is set whenever the schedule warms up. Decoupled (AdamW-style) decay is its default; the plant's betas
  and decay are passed as they are (its README lists 0.1 among the standard decays).
* ``dadapt_adam`` — ``dadaptation.DAdaptAdam``: as Prodigy, "Set the LR parameter to 1.0" and "Use the same
  learning rate scheduler you would normally use"; ``decouple=True``, because its default is Adam's coupled L2
  ("if you are replacing your adam implementation, make sure you use decoupled if necessary"), and what it
  replaces here is AdamW.
* ``schedulefree_adamw`` — ``schedulefree.AdamWScheduleFree``: no decay schedule ("no scheduler is needed"), so
  the config must say ``schedule: constant``; its LR is a real step size (the README: typically 1-10x the one
  a scheduled AdamW would use). The warmup stays the plant's: its README asks for the optimizer's own
  ``warmup_steps`` instead of a scheduler, and the plant's linear warmup writes the same ramp into the group's
  LR, ``lr x (t + 1) / warmup`` (the optimizer's counts only applied steps; a skip is no step of its own), and
  keeps the telemetry's LR the one applied. Evaluation must see the averaged weights ``x``, training the
  interpolated ``y``: see :func:`eval_weights`.

The recommended LR itself (1.0 for the LR-free two) is set by the arms that run them
(:mod:`lbw_env.evaluation.arms`), not here: the config's ``lr`` is always what is used, so that a sweep can move it.

Every optimizer keeps its global state (Prodigy's and D-Adaptation's step-size estimate, schedule-free's
average weights and mode) in its parameter groups, not in ``optimizer.state``: snapshots copy both
(:mod:`lbw_env.plant.state`).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from .config import OptimConfig, OptimizerName

Groups = list[dict[str, Any]]
Builder = Callable[[Groups, OptimConfig], torch.optim.Optimizer]


def _adamw(groups: Groups, o: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, foreach=True)


def _prodigy(groups: Groups, o: OptimConfig) -> torch.optim.Optimizer:
    from prodigyopt import Prodigy

    return Prodigy(
        groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, decouple=True, safeguard_warmup=o.warmup_steps > 0
    )


def _dadapt_adam(groups: Groups, o: OptimConfig) -> torch.optim.Optimizer:
    from dadaptation import DAdaptAdam

    return DAdaptAdam(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, decouple=True)


def _schedulefree_adamw(groups: Groups, o: OptimConfig) -> torch.optim.Optimizer:
    from schedulefree import AdamWScheduleFree

    optimizer = AdamWScheduleFree(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, warmup_steps=0, foreach=True)
    optimizer.train()  # it starts in eval mode and refuses to step there; the plant trains unless it evaluates
    return optimizer


OPTIMIZERS: dict[OptimizerName, Builder] = {
    "adamw": _adamw,
    "prodigy": _prodigy,
    "dadapt_adam": _dadapt_adam,
    "schedulefree_adamw": _schedulefree_adamw,
}
"""``optim.name`` -> a builder of the optimizer over parameter groups (each with its own ``weight_decay``)."""


def build_optimizer(groups: Groups, o: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer ``o.name`` over ``groups``, at ``o``'s LR, betas and eps (the groups carry the decay).

    Prodigy and D-Adaptation print a line when decoupled decay is on; it is swallowed (runs print nothing)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return OPTIMIZERS[o.name]([dict(g) for g in groups], o)


def is_schedule_free(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` keeps schedule-free modes (``train()``/``eval()`` and ``train_mode`` in its groups)."""
    return all("train_mode" in g for g in optimizer.param_groups) and callable(getattr(optimizer, "eval", None))


@contextlib.contextmanager
def eval_weights(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> Iterator[None]:
    """Within the block, the parameters hold the weights to evaluate; after it, exactly the ones training left.

    Plain optimizers: nothing to do. Schedule-free: training holds ``y`` (the point gradients are taken at) and
    evaluation must see the average ``x``, which ``optimizer.eval()`` computes from ``y`` and ``z``. Its
    ``train()`` would compute ``y`` back, but a float lerp there and back is not the identity, and an evaluation
    must not move a run; so ``y`` is copied before and copied back after, bit for bit, with the train flag set.
    """
    if not is_schedule_free(optimizer) or not all(g["train_mode"] for g in optimizer.param_groups):
        yield
        return
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
    optimizer.eval()  # type: ignore[attr-defined]
    try:
        yield
    finally:
        with torch.no_grad():
            torch._foreach_copy_([p.detach() for p in params], saved)
        for g in optimizer.param_groups:
            g["train_mode"] = True
