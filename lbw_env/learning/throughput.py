"""How fast the training envs run, without learning: decisions/s, and how much of it is the plant.

Every env step is a governor decision over ``decision_interval`` real AdamW steps, so the plant, not the policy
update, bounds training; ``train_policy.py --measure`` answers "how many decisions will this config get in an
hour on this machine" before a run is started (see ``artifacts/README.md`` for measurements).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import TrainConfig
from .vec_env import make_vec_env


def measure(cfg: TrainConfig, seconds: float) -> dict[str, Any]:
    """Step the training VecEnv with random actions for ``seconds``; report decisions/s and where time goes."""
    torch.set_num_threads(cfg.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))
    t_start = time.perf_counter()
    venv = make_vec_env(cfg, cfg.seed, None)
    pids = [os.getpid()] + [p.pid for p in getattr(venv, "processes", [])]
    try:
        venv.reset()
        startup = time.perf_counter() - t_start
        cpu0 = _cpu_seconds(pids)
        counts, elapsed = _random_steps(venv, seconds, np.random.default_rng(cfg.seed))
        cpu = _cpu_seconds(pids) - cpu0
    finally:
        venv.close()
    decisions, opt_steps = counts["decisions"], counts["opt_steps"]
    return {
        "n_envs": cfg.n_envs,
        "vec_env": cfg.vec_env if cfg.n_envs > 1 else "dummy",
        "threads": cfg.threads,
        "startup_seconds": round(startup, 2),
        "seconds": round(elapsed, 2),
        "decisions": decisions,
        "episodes": counts["episodes"],
        "decisions_per_second": round(decisions / elapsed, 2),
        "optimizer_steps_per_second": round(opt_steps / elapsed, 1),
        "ms_per_optimizer_step_in_env": round(1000 * counts["plant_seconds"] / max(opt_steps, 1), 2),
        "plant_fraction": round(counts["plant_seconds"] / (elapsed * cfg.n_envs), 3),
        # CPU time of this process and the env processes: less sensitive than wall time to other jobs on
        # shared cores. decisions per CPU-second x usable cores ~ decisions/s on an otherwise idle machine.
        "cpu_seconds": round(cpu, 2) if cpu >= 0 else None,
        "decisions_per_cpu_second": round(decisions / cpu, 2) if cpu > 0 else None,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def _random_steps(venv: Any, seconds: float, rng: np.random.Generator) -> tuple[dict[str, Any], float]:
    """Step ``venv`` with uniformly random actions for ``seconds``; counts and the time actually spent."""
    space = venv.action_space
    counts: dict[str, Any] = {"decisions": 0, "episodes": 0, "opt_steps": 0, "plant_seconds": 0.0}
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if hasattr(space, "nvec"):
            actions = np.stack([rng.integers(space.nvec) for _ in range(venv.num_envs)])
        else:
            actions = rng.uniform(-1, 1, (venv.num_envs, *space.shape)).astype(np.float32)
        _, _, dones, infos = venv.step(actions)
        counts["decisions"] += venv.num_envs
        counts["episodes"] += int(np.sum(dones))
        for info in infos:
            counts["opt_steps"] += len(info["records"])
            counts["plant_seconds"] += sum(r.seconds for r in info["records"])
    return counts, time.perf_counter() - t0


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of processes (from /proc; -inf where that is not available)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return -math.inf
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14 and 15 of stat)
    return total
