"""How a learned switch's rule of choice changes what it does on held-out episodes, paired with its base rule.

A learned switch (``residual.switch``) hands each decision to the rule its policy picks. Evaluation takes the
policy's deterministic answer, the most probable rule. This runs the same switch under other rules of choice,
each on the same episodes as its base (choice 0) alone, and prints the paired difference of final validation
losses (base minus switch, nats: positive means the switch did better):

* ``argmax`` — the deterministic answer (what evaluation and selection use);
* ``sample:K`` — a rule drawn from the policy's probabilities, by a generator seeded from the episode's first
  observation and ``K`` (so a run is reproducible and the draws differ between episodes);
* ``threshold:P`` — hand over only where the most probable other rule has probability above ``P`` (else the base).
* ``always:I`` — rule ``I`` at every decision, whatever the policy says (``always:1`` is that rule's own run): with
  the base, what a choice of one rule per episode could gain at best (printed as "per-episode best").

Default episodes: the selection episodes of the switch runs (the held-out sample of the training distribution
and ``tiny:val``, one seed each). ``--scenarios`` and ``--seed-offset`` run others, e.g. the training scenarios
with reset seeds the training never used (``--seed-offset 3000``), or the seeds it trained on (1000: see
``objective.seed_offset``). The env's pool is the scenarios given, and a run's seed depends on the pool's size
(records' ``replay.pool_size``): the same ``--scenarios`` give the same episodes. A diagnostic for val and train
scenarios; test scenarios are refused.

    python scripts/switch_choices.py artifacts/ppo_switch/final/model --choice argmax sample:0 threshold:0.9
    python scripts/switch_choices.py artifacts/ppo_switch/final/model --choice argmax \\
        --scenarios artifacts/ppo_switch/train_distribution.yaml:train --seed-offset 3000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lbw_env.config import ConfigError
from lbw_env.errors import exit_on_bad_input
from lbw_env.evaluation.intervals import t_interval
from lbw_env.scenarios import evaluation_seed, resolve
from policies import make_governor
from policies.residual import ResidualGovernor

SELECTION_EPISODES = ["configs/selection/tiny_sampled_val.yaml:val", "tiny:val"]
"""Where the switch runs select their checkpoints (``eval.scenarios`` of configs/train/ppo_switch*.yaml)."""
SWITCH_SUITE = "configs/suites/tiny_switch.yaml"
"""Whose env the episodes run in (decision interval, window, envelope): the switches' suite, as in training."""


class Choice:
    """The learned part of a switch, answering by a rule of choice over its action probabilities."""

    def __init__(self, learned: Any, rule: str) -> None:
        self.learned, self.rule = learned, rule
        kind, _, arg = rule.partition(":")
        try:
            self.kind, self.arg = kind, (float(arg) if arg else 0.0)
        except ValueError:
            raise ConfigError(f"--choice {rule!r}: expected argmax, sample:K, threshold:P or always:I") from None
        bad_arg = (kind == "threshold" and not 0 < self.arg < 1) or (kind == "sample" and not self.arg.is_integer())
        if kind not in ("argmax", "sample", "threshold", "always") or bad_arg:
            raise ConfigError(
                f"--choice {rule!r}: expected argmax, sample:K (K an int), threshold:P (0 < P < 1) or always:I"
            )
        n = getattr(getattr(learned, "action_space", None), "n", None)
        if kind == "always" and not (self.arg.is_integer() and n is not None and 0 <= self.arg < n):
            raise ConfigError(f"--choice {rule!r}: expected always:I with I the index of a rule (0 to {(n or 1) - 1})")
        self._rng = np.random.default_rng(0)
        self.handed = 0
        self.decisions = 0

    def __getattr__(self, name: str) -> Any:  # observation_space, normalizer, settings ... of the learned part
        return getattr(self.learned, name)

    def probabilities(self, observation: np.ndarray) -> np.ndarray:
        import torch

        obs = torch.as_tensor(self.learned.normalize(observation)[None])
        with torch.no_grad():
            return self.learned.policy.get_distribution(obs).distribution.probs[0].double().numpy()

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        obs = np.asarray(observation, dtype=np.float32)
        if episode_start is not None and bool(np.asarray(episode_start).any()):
            digest = hashlib.sha256(obs.tobytes()).digest()
            self._rng = np.random.default_rng([int.from_bytes(digest[:8], "little"), int(self.arg)])
        p = self.probabilities(obs) if self.kind != "always" else None  # always:I asks the policy nothing
        if p is None:
            choice = int(self.arg)
        elif self.kind == "argmax":
            choice = int(np.argmax(p))
        elif self.kind == "sample":
            choice = int(self._rng.choice(len(p), p=p / p.sum()))
        else:
            other = 1 + int(np.argmax(p[1:]))
            choice = other if p[other] > self.arg else 0
        self.decisions += 1
        self.handed += choice != 0
        return np.array(choice), state


def run(args: argparse.Namespace) -> dict[str, Any]:
    from lbw_env.config import from_dict
    from lbw_env.env import EnvConfig, LBWEnv
    from lbw_env.evaluation import load_suite
    from lbw_env.evaluation.episode import run_episode

    switch = make_governor(f"ppo:{args.model}")
    if not isinstance(switch, ResidualGovernor) or not switch.config.switch:
        raise ConfigError(f"{args.model}: expected a learned switch (a governor file whose residual.switch is set)")
    scenarios = resolve(args.scenarios)
    if any(s.split == "test" for s in scenarios):
        raise ConfigError("--scenarios: test scenarios are for the suites' reports, not for diagnostics")
    env = LBWEnv(from_dict(EnvConfig, {**load_suite(SWITCH_SUITE).env, "scenarios": list(args.scenarios)}, "env"))
    episodes = [(s, seed) for s in scenarios for seed in range(args.seeds)]

    def losses(governor: Any) -> list[float]:
        out = []
        for s, seed in episodes:
            reset = evaluation_seed(s.split, seed) if args.seed_offset is None else args.seed_offset + seed
            out.append(float(run_episode(env, governor, s, seed, reset_seed=reset)["final_valid_loss"]))
        return out

    base = losses(switch.base)
    result: dict[str, Any] = {"model": args.model, "episodes": [f"{s.name}#{k}" for s, k in episodes], "base": base}
    print(f"{args.model}: {len(episodes)} episodes, paired with {switch.config.base} (base - switch, nats)")
    for rule in args.choice:
        choice = Choice(switch.learned, rule)
        governed = ResidualGovernor(switch.rules, choice, switch.config)
        diffs = [b - x for b, x in zip(base, losses(governed))]
        est = t_interval(diffs)
        wins, losses_ = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
        handed = choice.handed / max(1, choice.decisions)
        result[rule] = {"diffs": diffs, "handed_over": handed}
        best = float(np.maximum(diffs, 0).mean())  # the better of base and switch in each episode
        print(
            f"  {rule:<14} mean {est.fmt('{:+.4f}')}  better/worse/equal {wins}/{losses_}/{len(diffs) - wins - losses_}"
            f"  handed over at {100 * handed:.0f} % of the choices asked; per-episode best {best:+.4f}"
        )
        print("    " + " ".join(f"{d:+.2f}" for d in diffs))
    env.close()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a learned switch's governor folder (e.g. artifacts/ppo_switch/final/model)")
    ap.add_argument("--choice", nargs="+", default=["argmax"], help="argmax, sample:K, threshold:P, always:I (several)")
    ap.add_argument("--scenarios", nargs="+", default=SELECTION_EPISODES, help="scenario specs (no test split)")
    ap.add_argument("--seeds", type=int, default=1, help="episodes per scenario")
    ap.add_argument("--seed-offset", type=int, help="reset seeds offset + 0, 1, ... (default: the split's own)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--json", type=Path, help="also write the differences here")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error(f"--seeds: expected an int >= 1, got {args.seeds}")
    import torch

    torch.set_num_threads(args.threads)
    result = run(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    with exit_on_bad_input("switch_choices.py"):
        sys.exit(main())
