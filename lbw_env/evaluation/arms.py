"""Baseline arms by name: what a practitioner would pick instead of a governor, usable as a bare string in a suite.

A bare string in a suite's ``arms:`` list is looked up here first, and only then taken as a governor spec
(``lbw_guard``, ``ppo:<folder>`` ...). Each entry is a governor plus trainer and env overrides, with the reason
for its settings. The overrides are those an explicit arm would write, so that a named arm and the explicit
``{label, governor, trainer_overrides}`` it stands for give the same runs and the same config hashes (an
explicit arm keeps working, and records made by either are the same records).
"""

from __future__ import annotations

import dataclasses
from typing import Any

LR_FREE = {
    "prodigy": ("optim.name=prodigy", "optim.lr=1.0"),
    "dadapt_adam": ("optim.name=dadapt_adam", "optim.lr=1.0"),
    "schedulefree_adamw": ("optim.name=schedulefree_adamw", "optim.schedule=constant"),
}
"""Trainer overrides of the LR-free (and schedule-free) optimizers at their recommended settings: the LR-free two at
``lr=1.0`` as their READMEs say, used as the schedule's peak (their estimate is the step size, the LR a multiplier
of it); schedule-free with no decay schedule and the scenario's LR, since it is not LR-free (its README: an LR
like a scheduled AdamW's, 1-10x) and the question a stress scenario asks is whether it survives that LR."""


@dataclasses.dataclass(frozen=True)
class NamedArm:
    """A governor on a modified trainer (and env), under a name."""

    governor: str
    trainer_overrides: tuple[str, ...] = ()
    env_overrides: tuple[str, ...] = ()
    why: str = ""

    def as_arm(self, label: str) -> dict[str, Any]:
        """The arm mapping a suite would hold for it (:class:`~.suite.Arm` fields)."""
        return {
            "label": label,
            "governor": self.governor,
            "trainer_overrides": list(self.trainer_overrides),
            "env_overrides": list(self.env_overrides),
        }


NAMED_ARMS: dict[str, NamedArm] = {
    "adamw_warmup": NamedArm(
        "adamw",
        ("optim.warmup_fraction=0.1",),
        why="the scenario's LR with a linear warmup over the first 10 % of the run (20 of 200 steps, 16 of 160): "
        "the common heuristic (GPT-style recipes warm up over a few percent of training; 10 % is the usual "
        "fine-tuning default, e.g. Hugging Face's warmup_ratio examples), and the implicit advantage of the "
        "guard's slow start, which this arm isolates. Resolved per scenario into optim.warmup_steps, so it equals "
        "the explicit {governor: adamw, trainer_overrides: [optim.warmup_steps=20]} of the 200-step suites",
    ),
    "adamw_tuned": NamedArm(
        "adamw",
        ("optim.lr=tuned",),
        why="the careful practitioner's AdamW: the LR that a train/val sweep chose for the scenario's family and "
        "model (configs/baselines/adamw_tuned.yaml, written by benchmarks/tune_adamw.py), whatever LR the "
        "scenario configures; the yardstick of gain captured and time-to-target",
    ),
    "adamw_rollback": NamedArm(
        "adamw",
        env_overrides=("envelope.auto_rollback=true",),
        why="AdamW, no LR control, with the envelope's own rollback (after a run of non-finite steps or a runaway "
        "loss): isolates what rollback alone buys, which the guard also uses",
    ),
    "adamw_clip1.0": NamedArm(
        "adamw",
        ("optim.clip_norm=1.0",),
        why="max-norm clipping at 1.0, the most common LM setting (GPT-2/3, Llama, OLMo recipes)",
    ),
    "zclip": NamedArm(
        "adamw",
        ("optim.clip=zclip", "optim.clip_norm=1.0"),
        why="ZClip adaptive z-score clipping at the zclip package's published defaults (alpha 0.97, z_thresh 2.5, "
        "25 warm-up steps, adaptive scaling, max_grad_norm 1.0 as the fixed cap)",
    ),
    "skip_step": NamedArm("skip_step", why="OLMo-core / Levanter: skip a step more than 6 sigma above its mean"),
    "ewm_skip": NamedArm("ewm_skip", why="metaseq: skip a step whose loss exceeds 1.2x its EWM"),
    "plateau": NamedArm("plateau", why="ReduceLROnPlateau: halve the LR scale when the loss stops improving"),
    **{
        name: NamedArm("adamw", overrides, why=f"{name} alone, at its recommended settings (see LR_FREE)")
        for name, overrides in LR_FREE.items()
    },
    **{
        f"lbw_guard_{name}": NamedArm(
            "lbw_guard", overrides, why=f"the guard over {name}: does governance add anything on top of it?"
        )
        for name, overrides in LR_FREE.items()
    },
    "lbw_guard_no_slow_start": NamedArm(
        "lbw_guard_no_slow_start", why="guard ablation: starts at the full LR scale (no slow start)"
    ),
    "lbw_guard_no_rollback": NamedArm(
        "lbw_guard_no_rollback", why="guard ablation: never asks for a rollback (back-off and skips only)"
    ),
    "lbw_guard_no_ceiling": NamedArm(
        "lbw_guard_no_ceiling", why="guard ablation: remembers no LR ceiling (grows back to the schedule)"
    ),
}
"""Every named arm, with the reason for its settings (README's arms table is this table)."""


def named_arm(label: str) -> dict[str, Any] | None:
    """The arm mapping of a named arm, or None when ``label`` is no name here (then it is a governor spec)."""
    arm = NAMED_ARMS.get(label)
    return None if arm is None else arm.as_arm(label)
