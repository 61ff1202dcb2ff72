"""One episode -> one record: a governor drives :class:`~lbw_env.env.LBWEnv` through one scenario and seed.

The loop is SB3's ``evaluate_policy`` for one env, so a learned governor is evaluated exactly as SB3 would
evaluate it, and a rule governor the same way. An episode is deterministic given its scenario, seed and
governor, which is what lets every executor produce the same records (timing fields aside). The record is
plain JSON data of a few kB: resolved configs, final and test numbers, and curves downsampled to at most
:data:`MAX_CURVE_POINTS` points. It also holds the untouched starting model's test perplexity
(``initial_test_ppl``: the yardstick a do-nothing governor scores 0 against) and ``governor_hash``, the sha256 of
the governor's config or manifest, so a report can say exactly which guard thresholds or policy it evaluated.
"""

from __future__ import annotations

import functools
import hashlib
import math
import platform
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import json_safe, sha256_file
from ..config import config_dir, to_dict
from ..control.protocol import Governor
from ..plant.records import safe_exp
from ..scenarios import Scenario, evaluation_seed, get_scenario

MAX_CURVE_POINTS = 100
"""Curves in a record are downsampled to at most this many points (records stay a few kB)."""
MAX_MANIFEST_BYTES = 1 << 24
"""Largest ``manifest.json`` member of a governor zip that :func:`governor_hash` reads (else the zip is hashed)."""


@functools.cache
def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a record's numbers."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist, key in (
        ("torch", "torch"),
        ("transformers", "transformers"),
        ("gymnasium", "gymnasium"),
        ("stable-baselines3", "stable_baselines3"),
        ("lbw-env", "lbw_env"),
        ("numpy", "numpy"),
    ):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = "not installed"
    return out


def governor_hash(governor: Governor, spec: str) -> str:
    """sha256 of what a governor is beyond its code: its config or manifest file ("" where it has none).

    A governor may state its own (a ``governor_hash`` string attribute). Otherwise the file is the spec's
    argument (``lbw_guard:<yaml>``, ``ppo:<folder | manifest.json | zip>``: a folder's ``manifest.json``, a
    zip's ``manifest.json`` member, else the zip's bytes) or, for a bare name, ``configs/governors/<name>.yaml``
    where that exists (the guard's default thresholds). Plain AdamW and other argument-free rules: "".
    The engine does not import the governors, so this goes by those file conventions, not by their loaders.
    """
    own = getattr(governor, "governor_hash", None)
    if isinstance(own, str) and own:
        return own
    name, _, arg = spec.partition(":")
    path = Path(arg).expanduser() if arg else config_dir() / "governors" / f"{name}.yaml"
    if path.is_dir():
        path = path / "manifest.json"
    if not path.is_file():
        return ""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            # A manifest is a few kB; a larger one is not read (a crafted zip could inflate to anything).
            if "manifest.json" in names and zf.getinfo("manifest.json").file_size <= MAX_MANIFEST_BYTES:
                return hashlib.sha256(zf.read("manifest.json")).hexdigest()
    return sha256_file(path)


def _finite_mean(xs: Sequence[float]) -> float:
    """Mean of the finite values (NaN if none): a NaN-loss step must not blank a whole curve bin."""
    finite = [x for x in xs if math.isfinite(x)]
    return float(np.mean(finite)) if finite else math.nan


def downsample_intervals(intervals: list[list[Any]]) -> dict[str, list[Any]]:
    """Per-interval step records -> at most MAX_CURVE_POINTS bins of consecutive intervals.

    A bin's point: the step count at its end, the mean finite training loss and mean LR scale over its steps,
    and its skipped and non-finite step counts.
    """
    k = max(1, math.ceil(len(intervals) / MAX_CURVE_POINTS))
    out: dict[str, list[Any]] = {"step": [], "loss": [], "lr_scale": [], "skipped": [], "nonfinite": []}
    for i in range(0, len(intervals), k):
        records = [r for interval in intervals[i : i + k] for r in interval]
        if not records:
            continue
        out["step"].append(records[-1].step + 1)
        out["loss"].append(_finite_mean([r.loss for r in records]))
        out["lr_scale"].append(float(np.mean([r.lr_scale for r in records])))
        out["skipped"].append(sum(bool(r.skipped) for r in records))
        out["nonfinite"].append(sum(bool(r.nonfinite) for r in records))
    return out


def thin_indices(n: int) -> list[int]:
    """Indices keeping at most MAX_CURVE_POINTS of n points, evenly, always with the first and the last."""
    if n <= MAX_CURVE_POINTS:
        return list(range(n))
    return sorted({round(i * (n - 1) / (MAX_CURVE_POINTS - 1)) for i in range(MAX_CURVE_POINTS)})


def run_episode(
    env: Any,
    governor: Governor,
    scenario: str | Scenario,
    seed: int,
    eval_every: int = 0,
    *,
    suite: str = "",
    arm: str = "",
    governor_spec: str = "",
) -> dict[str, Any]:
    """Run one episode of ``scenario`` with ``seed`` under ``governor``; return its record (plain JSON data).

    The loop is SB3's ``evaluate_policy`` for one env: ``state=None``, ``episode_start`` true on the first call
    only, ``deterministic=True``. Every ``eval_every`` decisions the validation perplexity is measured (outside
    the timed run; evaluation neither consumes batches nor draws random numbers, so it does not change the
    trajectory). Times: ``timing.wall_seconds`` is the episode after ``reset`` without those evaluations
    (training, governor, envelope), ``timing.valid_seconds`` the same clock at each validation point.
    """
    base = env.unwrapped
    name = scenario if isinstance(scenario, str) else scenario.name
    # Each split has its own block of reset seeds (train s, val 10000+s, test 20000+s): see evaluation_seed.
    split = get_scenario(name).split if isinstance(scenario, str) else scenario.split
    t_reset = time.perf_counter()
    obs, reset_info = env.reset(seed=evaluation_seed(split, seed), options={"scenario": name})
    reset_seconds = time.perf_counter() - t_reset
    sc: Scenario = base.scenario
    trainer = base.trainer
    # The untouched start on the test split (evaluation draws no random numbers and consumes no batches, so the
    # trajectory is unchanged); outside the timed run.
    te = time.perf_counter()
    initial_test = trainer.evaluate("test")
    initial_test_seconds = time.perf_counter() - te

    t0 = time.perf_counter()
    eval_seconds = governor_seconds = train_seconds = 0.0
    state: Any = None
    episode_start = np.ones((1,), dtype=bool)
    intervals: list[list[Any]] = []
    valid_step: list[int] = [0]
    valid_ppl: list[float] = [math.nan]  # filled from info["final"]["initial_valid_loss"] at the end
    valid_time: list[float] = [0.0]
    valid_train_time: list[float] = [0.0]
    total_return, decisions = 0.0, 0
    while True:
        tg = time.perf_counter()
        action, state = governor.predict(obs, state=state, episode_start=episode_start, deterministic=True)
        governor_seconds += time.perf_counter() - tg
        episode_start = np.zeros((1,), dtype=bool)
        obs, reward, terminated, truncated, info = env.step(action)
        total_return += float(reward)
        decisions += 1
        intervals.append(list(info["records"]))
        train_seconds += sum(r.seconds for r in info["records"])
        if terminated or truncated:
            break
        if eval_every and decisions % eval_every == 0:
            te = time.perf_counter()
            result = trainer.evaluate("valid")
            elapsed = te - t0 - eval_seconds
            eval_seconds += time.perf_counter() - te
            valid_step.append(trainer.t)
            valid_ppl.append(result.ppl)
            valid_time.append(elapsed)
            valid_train_time.append(train_seconds)
    wall_seconds = time.perf_counter() - t0 - eval_seconds
    final = info["final"]
    valid_ppl[0] = safe_exp(final["initial_valid_loss"])
    valid_step.append(int(final["steps"]))
    valid_ppl.append(float(final["valid_ppl"]))
    valid_time.append(wall_seconds)
    valid_train_time.append(train_seconds)
    keep = thin_indices(len(valid_step))
    te = time.perf_counter()
    test = trainer.evaluate("test")
    test_seconds = time.perf_counter() - te

    finite_valid = [p for p in valid_ppl if math.isfinite(p)]
    record = {
        "suite": suite,
        "scenario": sc.name,
        "family": sc.family,
        "split": sc.split,
        "arm": arm or governor_spec,
        "governor": governor_spec,
        "governor_class": type(governor).__name__,
        "governor_hash": governor_hash(governor, governor_spec),
        "seed": int(seed),
        "run_seed": int(reset_info.get("run_seed", -1)),
        "eval_every": int(eval_every),
        "trainer": to_dict(sc.trainer),
        "env": {k: v for k, v in to_dict(base.cfg).items() if k != "scenarios"},
        "versions": package_versions(),
        "final_valid_loss": float(final["valid_loss"]),
        "final_valid_ppl": float(final["valid_ppl"]),
        "initial_valid_ppl": valid_ppl[0],
        "initial_test_loss": initial_test.loss,
        "initial_test_ppl": initial_test.ppl,
        "best_valid_ppl": min(finite_valid) if finite_valid else math.inf,
        "test_loss": test.loss,
        "test_ppl": test.ppl,
        "steps": int(final["steps"]),
        "decisions": decisions,
        "skipped_steps": int(final["skipped_steps"]),
        "rollbacks": int(final["rollbacks"]),
        "diverged": bool(final["diverged"]),
        "interventions": dict(info.get("interventions", {})),
        "return": total_return,
        "curves": {
            "train": downsample_intervals(intervals),
            "valid": {"step": [valid_step[i] for i in keep], "ppl": [valid_ppl[i] for i in keep]},
        },
        "timing": {
            "wall_seconds": wall_seconds,
            "train_seconds": train_seconds,
            "env_train_seconds": float(final["train_seconds"]),
            "governor_seconds": governor_seconds,
            "eval_seconds": eval_seconds,
            "test_seconds": test_seconds,
            "initial_test_seconds": initial_test_seconds,
            "reset_seconds": reset_seconds,
            "valid_seconds": [valid_time[i] for i in keep],
            "valid_train_seconds": [valid_train_time[i] for i in keep],
        },
    }
    return json_safe(record)
