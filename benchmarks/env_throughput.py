"""Throughput of ``LBWEnv`` against the bare ``Plant``, reset cost, and SB3 vectorised decisions/s.

On the smallest preset (the tiny family's ``tiny/ref``: qwen2-tiny, vocab 2048, 64-token blocks, batch 8), one
process, one torch thread:

1. **Env vs bare trainer.** Each round is one whole env episode with the neutral action (plain AdamW: LR scale
   1, gate off) and a bare ``Plant`` of the same scenario replaying the same run, in lockstep: every env decision
   is paired with a block of ``decision_interval`` bare steps over the same steps, the pair's order alternating,
   so that drift in the machine's load hits both. The last env decision also runs the end-of-episode validation
   pass; it is reported apart. Reported: decisions/s and optimizer steps/s of each (medians), and the median over
   rounds of the per-round ratio env time / bare time (the goal is <= 1.02: the envelope, telemetry window,
   reward and rollback-snapshot bookkeeping should cost at most 2 % of a training step). Because a loaded machine
   makes that ratio noisy, the time each ``env.step`` spends outside ``Plant.step`` (its wall time minus the
   records' own ``seconds``) is reported too: the overhead measured directly.
2. **Reset cost.** The first reset of a new env (trainer construction from the cached corpus, initial
   validation), resets with a new seed (fresh initialisation + validation pass), and cached resets (a seed seen
   before: a copy of the cached initial state), in ms, against the median decision.
3. **Vectorised.** decisions/s (sub-env steps summed over envs) through SB3 ``DummyVecEnv`` and
   ``SubprocVecEnv`` with 2 envs, one torch thread each, random actions, auto-resets included, after one warm-up
   episode each.

    LBW_DATA_DIR=../shared/data LBW_CACHE=/tmp/lbwcache python benchmarks/env_throughput.py
    python benchmarks/env_throughput.py --steps 160 --rounds 5 --vec-steps 60 --json results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from lbw_env import LBWEnv
from lbw_env.errors import exit_on_bad_input
from lbw_env.plant.optimizer import Control
from lbw_env.plant.trainer import Plant

TINY_ID = "LBW/WikiText-Tiny-v0"
SCENARIO = "tiny/ref"


def env_config(steps: int, decision_interval: int) -> dict[str, Any]:
    return {
        "scenarios": [SCENARIO],
        "decision_interval": decision_interval,
        "trainer_overrides": [f"optim.steps={steps}", "runtime.threads=1"],
    }


def lockstep_round(env: LBWEnv, trainer: Plant, seed: int, run_seed: int, interval: int) -> dict[str, Any]:
    """One env episode and one bare run of the same scenario and run seed, timed decision by decision in lockstep.

    Each env decision is paired with a bare block of ``interval`` ``Plant.step`` calls over the same steps, the
    pair's order alternating, so that the machine's load drift (other jobs on shared cores) hits both sides alike.
    The episode's last decision also runs the validation pass; it is timed apart and not paired.
    """
    env.reset(seed=seed)
    trainer.reset(run_seed)
    action, control = env.envelope.neutral_action(), Control()
    env_times: list[float] = []
    bare_times: list[float] = []
    outside: list[float] = []  # time of each env.step spent outside Plant.step (records' own seconds)
    k = 0
    while True:
        if k % 2:
            bare_times.append(_bare_block(trainer, control, interval))
        t0 = time.perf_counter()
        _, _, terminated, truncated, info = env.step(action)
        dt = time.perf_counter() - t0
        if terminated or truncated:
            if k % 2:
                bare_times.pop()  # the last decision is not paired
            return {"env": env_times, "bare": bare_times, "outside": outside, "final": dt}
        env_times.append(dt)
        outside.append(dt - sum(r.seconds for r in info["records"]))
        if not k % 2:
            bare_times.append(_bare_block(trainer, control, interval))
        k += 1


def _bare_block(trainer: Plant, control: Control, interval: int) -> float:
    t0 = time.perf_counter()
    for _ in range(interval):
        trainer.step(control)
    return time.perf_counter() - t0


def env_vs_bare(steps: int, interval: int, rounds: int) -> dict[str, Any]:
    env = LBWEnv(env_config(steps, interval))
    trainer = Plant(env.pool[0].trainer)
    seed = 0
    env.reset(seed=seed)
    run_seed = env.trainer.seed  # type: ignore[union-attr]  # the bare run replays the env's run
    lockstep_round(env, trainer, seed, run_seed, interval)  # warm-up: allocator, caches, lazy initialisation
    env_times: list[float] = []
    bare_times: list[float] = []
    ratios: list[float] = []
    finals: list[float] = []
    outside: list[float] = []
    for _ in range(rounds):
        r = lockstep_round(env, trainer, seed, run_seed, interval)
        assert len(r["env"]) == len(r["bare"])
        env_times += r["env"]
        bare_times += r["bare"]
        finals.append(r["final"])
        outside += r["outside"]
        ratios.append(sum(r["env"]) / sum(r["bare"]))
    env_decision = statistics.median(env_times)
    bare_decision = statistics.median(bare_times)
    return {
        "steps_per_episode": steps,
        "decision_interval": interval,
        "rounds": rounds,
        "env_decisions_per_s": 1.0 / env_decision,
        "env_steps_per_s": interval / env_decision,
        "bare_decisions_per_s": 1.0 / bare_decision,
        "bare_steps_per_s": interval / bare_decision,
        "ratio_env_over_bare": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ratio_of_medians": env_decision / bare_decision,
        "outside_trainer_ms": 1000 * statistics.median(outside),
        "outside_trainer_fraction": statistics.median(outside) / env_decision,
        "final_decision_ms": 1000 * statistics.median(finals),
        "median_decision_ms": 1000 * env_decision,
    }


def reset_cost(steps: int, interval: int, n: int) -> dict[str, float]:
    env = LBWEnv(env_config(steps, interval))
    t0 = time.perf_counter()
    env.reset(seed=0)
    first = time.perf_counter() - t0
    fresh, cached = [], []
    for seed in range(1, n + 1):
        t0 = time.perf_counter()
        env.reset(seed=seed)
        fresh.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        env.reset(seed=seed)
        cached.append(time.perf_counter() - t0)
    return {
        "first_reset_ms": 1000 * first,
        "new_seed_reset_ms": 1000 * statistics.median(fresh),
        "cached_reset_ms": 1000 * statistics.median(cached),
    }


def vec_decisions_per_s(kind: str, steps: int, interval: int, n_envs: int, vec_steps: int) -> dict[str, float]:
    cls = SubprocVecEnv if kind == "subproc" else DummyVecEnv
    t0 = time.perf_counter()
    # "module:id" makes workers import lbw_env (registering the ids) in fresh forkserver processes; SB3's
    # make_vec_env asks for render_mode="rgb_array" unless told, and this env renders "ansi" only.
    envs: VecEnv = make_vec_env(
        f"lbw_env:{TINY_ID}",
        n_envs=n_envs,
        seed=0,
        vec_env_cls=cls,
        env_kwargs={"config": env_config(steps, interval), "render_mode": None},
    )
    try:
        envs.reset()
        startup = time.perf_counter() - t0
        rng = np.random.default_rng(0)

        def actions() -> np.ndarray:
            return rng.uniform(-1, 1, (n_envs, *envs.action_space.shape)).astype(np.float32)

        for _ in range(steps // interval):  # warm-up: one episode per env
            envs.step(actions())
        t0 = time.perf_counter()
        for _ in range(vec_steps):
            envs.step(actions())
        wall = time.perf_counter() - t0
    finally:
        envs.close()
    return {"decisions_per_s": n_envs * vec_steps / wall, "startup_s": startup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=160, help="optimizer steps per episode (tiny's own: 160)")
    parser.add_argument("--decision-interval", type=int, default=8, help="optimizer steps per decision")
    parser.add_argument("--rounds", type=int, default=5, help="alternating env/bare rounds (one episode each)")
    parser.add_argument("--resets", type=int, default=8, help="seeds for the reset timings")
    parser.add_argument("--vec-steps", type=int, default=60, help="timed vector steps per vectorised setting")
    parser.add_argument("--n-envs", type=int, default=2)
    parser.add_argument("--skip-vec", action="store_true", help="skip the SB3 vectorised measurements")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)

    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": 1},
        "scenario": SCENARIO,
    }
    results["env_vs_bare"] = core = env_vs_bare(args.steps, args.decision_interval, args.rounds)
    results["reset"] = resets = reset_cost(args.steps, args.decision_interval, args.resets)
    if not args.skip_vec:
        results["vec"] = {
            kind: vec_decisions_per_s(kind, args.steps, args.decision_interval, args.n_envs, args.vec_steps)
            for kind in ("dummy", "subproc")
        }

    interval = args.decision_interval
    print(f"\nLBWEnv throughput on {SCENARIO} (qwen2-tiny), {args.steps} steps/episode, {interval} steps/decision")
    print(f"{'':34s} {'decisions/s':>12s} {'steps/s':>10s}")
    print(f"{'bare Plant.step':34s} {core['bare_decisions_per_s']:12.2f} {core['bare_steps_per_s']:10.1f}")
    print(f"{'LBWEnv.step (1 env)':34s} {core['env_decisions_per_s']:12.2f} {core['env_steps_per_s']:10.1f}")
    for kind, label in (("dummy", "DummyVecEnv"), ("subproc", "SubprocVecEnv")):
        if "vec" in results:
            v = results["vec"][kind]
            name = f"SB3 {label} ({args.n_envs} envs)"
            print(f"{name:34s} {v['decisions_per_s']:12.2f} {v['decisions_per_s'] * interval:10.1f}")
    print(
        f"\nenv / bare time per optimizer step: {core['ratio_env_over_bare']:.4f} "
        f"(median of {args.rounds} rounds; range {core['ratio_min']:.4f}-{core['ratio_max']:.4f}; "
        f"ratio of median decisions {core['ratio_of_medians']:.4f}; goal <= 1.02)"
    )
    print(
        f"env.step time outside Plant.step: {core['outside_trainer_ms']:.2f} ms per decision "
        f"({100 * core['outside_trainer_fraction']:.2f} % of a decision; load-independent estimate of the overhead)"
    )
    print(
        f"final decision (with validation pass): {core['final_decision_ms']:.1f} ms "
        f"vs median decision {core['median_decision_ms']:.1f} ms"
    )
    print(
        f"reset: first {resets['first_reset_ms']:.1f} ms, new seed {resets['new_seed_reset_ms']:.1f} ms, "
        f"cached {resets['cached_reset_ms']:.2f} ms "
        f"({resets['new_seed_reset_ms'] / core['median_decision_ms']:.2f} / "
        f"{resets['cached_reset_ms'] / core['median_decision_ms']:.3f} of a decision)"
    )
    if "vec" in results:
        print(
            "vector startup: "
            + ", ".join(f"{k} {v['startup_s']:.1f} s" for k, v in results["vec"].items())
            + " (SubprocVecEnv workers import torch/transformers)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    with exit_on_bad_input("env_throughput.py"):
        main()
