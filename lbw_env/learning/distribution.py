"""A training distribution worth learning from: a sampled family of train scenarios.

The tiny family's train split is four scenarios; a policy trained on them never sees a persistently high LR,
and the only gain it finds is undoing the guard's caution. ``TrainConfig.distribution`` replaces the training
pool by ``scenarios`` scenarios sampled from a seeded generator:

* the regime: from scratch (template ``scratch``, e.g. ``tiny/ref``) or a fine-tune (template ``finetune``,
  e.g. ``tiny/ft_ref``), the latter with probability ``finetune_fraction``;
* the LR: the template's, times a multiple drawn log-uniformly from ``lr_multiple`` (1x–100x); for a scratch
  run, half of the time without warmup and at a constant schedule (a too-high LR from the first step);
* faults, each kind with probability ``fault_rate``, at a uniform start within the run: an LR shock (x3–x100,
  4–24 steps), bad batches (1–8 steps), a NaN burst (1–6 steps), gradient noise (0.3–3 x the gradient's RMS,
  8–48 steps), magnitudes log-uniform.

The family is written as a scenario family file (``<run>/train_distribution.yaml``, every scenario in the
``train`` split) and becomes the env's pool, so which scenario an episode runs is drawn from the env's
``reset`` seed, and the file documents exactly what was trained on. Templates may not be test scenarios
(:func:`lbw_env.scenarios.require_not_test`); selection stays on ``eval.scenarios`` (val).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from lbw_env.cache import atomic_write_yaml
from lbw_env.config import ConfigError, check, from_dict, read_yaml, to_dict
from lbw_env.errors import exit_on_bad_input
from lbw_env.scenarios import get_scenario, require_not_test

FAULT_KINDS = ("lr_shock", "bad_batch", "nan_loss", "grad_noise")


@dataclasses.dataclass
class DistributionConfig:
    """Sampled training scenarios (see the module docstring); ``scenarios: 0`` keeps the env's own pool."""

    scenarios: int = 0
    """Scenarios in the sampled family (0: off). Each is a separate plant in every env process (measured: 3.5 MB
    each for the tiny preset), so tens, not thousands; episodes draw among them by the reset seed."""
    seed: int = 0
    """Seed of the sampler: the same seed writes the same family."""
    scratch: str = "tiny/ref"
    """Template of the from-scratch scenarios (a train or val scenario: model, data, budget, schedule)."""
    finetune: str = "tiny/ft_ref"
    """Template of the fine-tune scenarios (empty: none)."""
    finetune_fraction: float = 0.5
    """Probability that a sampled scenario is a fine-tune (the suites weigh both regimes alike)."""
    lr_multiple: list[float] = dataclasses.field(default_factory=lambda: [1.0, 100.0])
    """Range of the LR multiple, sampled log-uniformly: 1x (a sane run, so the policy learns to leave those
    alone) to 100x (the worst the test split holds)."""
    fault_rate: float = 0.5
    """Probability of each fault kind in a scenario (independently): about half the runs see a given fault."""
    family: str = "tiny_sampled"
    """Family name of the written file (must not be a shipped family's)."""

    @property
    def enabled(self) -> bool:
        return self.scenarios > 0

    def validate(self) -> None:
        check(self.scenarios >= 0, "scenarios", "an int >= 0 (0: the env's own pool)", self.scenarios)
        check(self.seed >= 0, "seed", "an int >= 0", self.seed)
        check(0 <= self.finetune_fraction <= 1, "finetune_fraction", "a float in [0, 1]", self.finetune_fraction)
        check(0 <= self.fault_rate <= 1, "fault_rate", "a float in [0, 1]", self.fault_rate)
        lo_hi = self.lr_multiple
        ok = len(lo_hi) == 2 and all(math.isfinite(x) for x in lo_hi) and 0 < lo_hi[0] <= lo_hi[1]
        check(ok, "lr_multiple", "[low, high] with 0 < low <= high", lo_hi)
        if not self.enabled:
            return
        for key in ("scratch", "finetune"):
            name = getattr(self, key)
            if not name and key == "finetune":
                continue
            try:
                require_not_test([get_scenario(name)], "a learned governor's training distribution")
            except ConfigError as e:
                raise ConfigError(f"{key}: {e}") from None


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _fault(rng: np.random.Generator, kind: str, steps: int) -> dict[str, Any]:
    length = {"lr_shock": (4, 24), "bad_batch": (1, 8), "nan_loss": (1, 6), "grad_noise": (8, 48)}[kind]
    n = int(rng.integers(length[0], min(length[1], max(steps - 1, length[0])) + 1))
    start = int(rng.integers(0, max(steps - n, 1)))
    fault: dict[str, Any] = {"kind": kind, "start": start, "length": n}
    if kind == "lr_shock":
        fault["magnitude"] = round(_log_uniform(rng, 3.0, 100.0), 3)
    elif kind == "grad_noise":
        fault["magnitude"] = round(_log_uniform(rng, 0.3, 3.0), 3)
    return fault


def sample_family(cfg: DistributionConfig, split: str = "train") -> dict[str, Any]:
    """The sampled family as a scenario family document (what :func:`write_family` writes), every scenario in
    ``split`` (``val``: a held-out sample of the same distribution, drawn with another sampler seed, to select
    checkpoints on)."""
    rng = np.random.default_rng([cfg.seed, 11])
    items = []
    for i in range(cfg.scenarios):
        finetune = bool(cfg.finetune) and rng.uniform() < cfg.finetune_fraction
        template = get_scenario(cfg.finetune if finetune else cfg.scratch)
        trainer = to_dict(template.trainer)
        multiple = _log_uniform(rng, *cfg.lr_multiple)
        optim = trainer["optim"]
        optim["lr"] = float(optim["lr"] * multiple)
        abrupt = not finetune and rng.uniform() < 0.5
        if abrupt:
            optim["warmup_steps"], optim["schedule"] = 0, "constant"
        faults = [_fault(rng, kind, optim["steps"]) for kind in FAULT_KINDS if rng.uniform() < cfg.fault_rate]
        trainer["faults"] = [*trainer.get("faults", []), *faults]
        kinds = ", ".join(f["kind"] for f in faults) or "no faults"
        regime = "fine-tune" if finetune else ("scratch, no warmup" if abrupt else "scratch")
        items.append(
            {
                "name": f"s{i:03d}",
                "split": split,
                "description": f"{regime} at {multiple:.2f}x the template's LR ({template.name}); {kinds}",
                "trainer": trainer,
            }
        )
    return {
        "family": cfg.family,
        "description": f"Sampled {split} distribution: {cfg.scenarios} scenarios, sampler seed {cfg.seed}.",
        "scenarios": items,
    }


def write_family(cfg: DistributionConfig, path: Path, split: str = "train") -> Path:
    """Write the sampled family to ``path`` (atomically); the scenario spec of its scenarios is
    ``f"{path}:{split}"``."""
    atomic_write_yaml(path, sample_family(cfg, split))
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m lbw_env.learning.distribution --config <train.yaml> --seed 1 --scenarios 12 --split val
    --family <name> --out <file.yaml>``: a training config's distribution, resampled (another seed, size, split
    and family name) into a family file; the held-out sample that checkpoints of that training are selected on."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lbw_env.learning.distribution", description=main.__doc__)
    parser.add_argument("--config", required=True, help="training config whose distribution is resampled")
    parser.add_argument("--seed", type=int, required=True, help="sampler seed (not the training's own)")
    parser.add_argument("--scenarios", type=int, required=True, help="scenarios to sample")
    parser.add_argument("--split", default="val", choices=["train", "val"], help="split of every scenario")
    parser.add_argument("--family", required=True, help="family name of the written file")
    parser.add_argument("--out", required=True, type=Path, help="family file to write")
    args = parser.parse_args(argv)
    with exit_on_bad_input(parser.prog):
        base = from_dict(DistributionConfig, read_yaml(args.config).get("distribution") or {}, "distribution")
        if not base.enabled:
            raise ConfigError(f"{args.config}: distribution: the config samples no training distribution")
        if args.seed == base.seed:
            raise ConfigError(f"--seed: {args.seed} is the training's own sampler seed; a held-out sample needs other")
        cfg = dataclasses.replace(base, seed=args.seed, scenarios=args.scenarios, family=args.family)
        cfg.validate()
        write_family(cfg, args.out, args.split)
    print(f"wrote {args.out}: {args.scenarios} {args.split} scenarios, sampler seed {args.seed}, of {args.config}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
