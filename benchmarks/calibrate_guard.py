"""Calibrate the LBW guard's thresholds by black-box search on TRAIN and VAL scenarios only; write them with provenance.

Why: a guard tuned on the scenarios it is then reported on measures how well it was tuned, not how well it
generalises. This script only ever evaluates scenarios that :func:`lbw_env.scenarios.require_not_test` lets
through (the test split is refused with a one-line error), so the test split stays a clean yardstick.

What it does: CMA-ES (the ``cma`` package) searches a handful of the guard's thresholds (:data:`PARAMS`:
slow-start scale, back-off, ceiling margin, the instability, rollback and damage thresholds) inside bounds, in
a unit cube (log scale for the multiplicative ones), starting from the current thresholds. Each candidate is
written to a YAML file and evaluated as a ``lbw_guard:<yaml>`` arm by the evaluation engine
(:func:`lbw_env.evaluation.run_suite`, with ``policies.make_governor``), paired with plain AdamW on the same
scenarios and seeds. The score is the report's paired difference on validation: the mean over scenarios and
seeds of ``log(final valid ppl / AdamW's final valid ppl)`` (:func:`lbw_env.evaluation.stats.capped_loss`); lower
is better, 0 is AdamW. A run worse than the uniform predictor (or diverged) counts as the uniform predictor,
``log(vocab)``, so that one divergence cannot swamp the mean with infinities. The best of the start point and
the candidates is written (ties go to the search) to ``--output`` with a ``provenance:`` section (scenarios,
seeds, budget, scores of the chosen and the start thresholds by split, method, date, git commit, duration, the
scenario family files' sha256). Comments in the output file are kept; only threshold values and the
provenance section change.

Records go to ``--out`` (``records.jsonl``, one per episode, candidates in ``candidates/<hash>.yaml``): a
rerun with the same settings resumes from them. Example (about 30 minutes on 2 busy cores)::

    nice -n 5 python benchmarks/calibrate_guard.py --scenarios tiny:train tiny:val --seeds 3 --budget 24
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import math
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cma
import numpy as np
import yaml

from lbw_env.cache import atomic_write_text
from lbw_env.config import ConfigError, config_dir, read_yaml
from lbw_env.errors import exit_on_bad_input
from lbw_env.evaluation import load_suite, run_suite
from lbw_env.evaluation.records import get_path
from lbw_env.evaluation.stats import capped_loss
from lbw_env.evaluation.suite import suite_path
from lbw_env.scenarios import Scenario, require_not_test
from policies import make_governor
from policies.rules import GuardConfig, load_guard_config

REPO = Path(__file__).resolve().parents[1]
GUARD_YAML = config_dir() / "governors" / "lbw_guard.yaml"
REFERENCE = "adamw"
"""Label of the reference arm; also the governor spec."""
PURPOSE = "guard calibration (benchmarks/calibrate_guard.py)"
PROVENANCE_HEADER = "# Where these thresholds came from: written by benchmarks/calibrate_guard.py (not by hand)."


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched threshold: its bounds, and whether it is searched on a log scale (multiplicative ones)."""

    name: str
    low: float
    high: float
    log: bool = False

    def decode(self, u: float) -> float:
        """Unit-cube coordinate -> value, rounded to 3 significant digits (what is evaluated is what is written)."""
        u = min(max(float(u), 0.0), 1.0)
        value = self.low * (self.high / self.low) ** u if self.log else self.low + u * (self.high - self.low)
        return float(f"{value:.3g}")

    def encode(self, value: float) -> float:
        """Value -> unit-cube coordinate, clipped into the bounds."""
        value = min(max(float(value), self.low), self.high)
        if self.log:
            return math.log(value / self.low) / math.log(self.high / self.low)
        return (value - self.low) / (self.high - self.low)


SEARCHABLE: dict[str, Param] = {
    p.name: p
    for p in (
        Param("start_scale", 0.03, 1.0, log=True),
        Param("backoff", 0.1, 0.7, log=True),
        Param("ceiling_margin", 0.25, 1.0),
        Param("unstable_vs_best", 0.03, 0.3, log=True),
        Param("rollback_vs_best", 0.03, 0.5, log=True),
        Param("damage_update_ratio", 0.03, 0.5, log=True),
        Param("target_update_ratio", 0.01, 0.1, log=True),
        Param("probe_rollback", 1.0, 4.0, log=True),
        Param("max_scale", 1.0, 2.0),
    )
}
"""Every threshold ``--params`` may name, with its bounds."""

PARAMS: tuple[Param, ...] = tuple(
    SEARCHABLE[name]
    for name in (
        "start_scale",
        "backoff",
        "ceiling_margin",
        "unstable_vs_best",
        "rollback_vs_best",
        "damage_update_ratio",
    )
)
"""The default search: the thresholds the hand calibration found to matter (slow start, back-off, ceiling, when
to call damage and roll back). The rest keep the start file's values. ``target_update_ratio`` (the LR cap of
``lbw_guard_ratio``) is searched on its own: ``--params target_update_ratio``. ``max_scale`` (up to the envelope's
default ``lr_scale_max``, 2) lets a search find that the configured LR is too low, as the tuned-AdamW sweeps did
on the tiny family (6e-3, twice its reference LR)."""


@dataclasses.dataclass
class Candidate:
    """One evaluated set of thresholds."""

    label: str
    thresholds: dict[str, Any]
    """The full GuardConfig mapping (searched and fixed thresholds)."""
    path: Path
    score: float = math.nan
    by_split: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Setup:
    """What every evaluation shares: scenarios, seeds, env, where records go."""

    scenarios: list[Scenario]
    seeds: int
    env: dict[str, Any]
    out: Path
    workers: int
    episode_seconds: dict[tuple[str, str, int], float] = dataclasses.field(default_factory=dict)
    """Wall seconds of every episode scored (by record key), whichever invocation ran it: the compute a
    calibration cost even when it was resumed."""

    def evaluate(self, candidates: Sequence[Candidate], with_reference: bool = False) -> None:
        """Run the candidates (and AdamW) through the evaluation engine; fill in their scores."""
        arms: list[dict[str, str]] = [{"label": REFERENCE, "governor": REFERENCE}] if with_reference else []
        arms += [{"label": c.label, "governor": f"lbw_guard:{c.path}"} for c in candidates]
        suite = load_suite(
            {
                "name": "calibrate_guard",
                "scenarios": [s.name for s in self.scenarios],
                "arms": arms,
                "seeds": self.seeds,
                "env": self.env,
                "eval_every": 0,  # only the final validation perplexity is scored
            }
        )
        records = run_suite(suite, self.out, make_governor=make_governor, workers=self.workers).records
        runs = {(r["scenario"], r["arm"], int(r["seed"])): r for r in records}
        arms = {c.label for c in candidates} | ({REFERENCE} if with_reference else set())
        names = {s.name for s in self.scenarios}
        for key, r in runs.items():
            if key[0] in names and key[1] in arms and key[2] < self.seeds:
                self.episode_seconds[key] = float(get_path(r, "timing", "wall_seconds", default=0.0) or 0.0)
        for c in candidates:
            c.score, c.by_split = self.score(runs, c.label)

    def score(
        self, runs: Mapping[tuple[str, str, int], Mapping[str, Any]], label: str
    ) -> tuple[float, dict[str, float]]:
        """Mean paired log-ppl difference to AdamW on validation, overall and per split (train, val)."""
        deltas: dict[str, list[float]] = {}
        for s in self.scenarios:
            for seed in range(self.seeds):
                guard, ref = runs[(s.name, label, seed)], runs[(s.name, REFERENCE, seed)]
                deltas.setdefault(s.split, []).append(capped_loss(guard) - capped_loss(ref))
        every = [d for ds in deltas.values() for d in ds]
        return float(np.mean(every)), {split: float(np.mean(ds)) for split, ds in sorted(deltas.items())}


def thresholds_of(config: GuardConfig) -> dict[str, Any]:
    """A GuardConfig's thresholds as plain data (no provenance)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k != "provenance"}


def consistent(thresholds: dict[str, Any]) -> dict[str, Any]:
    """Keep the ordering GuardConfig requires: warn <= unstable <= rollback (a rollback threshold below the
    instability threshold means the same as one at it)."""
    out = dict(thresholds)
    out["unstable_vs_best"] = max(out["unstable_vs_best"], out["warn_vs_best"])
    out["rollback_vs_best"] = max(out["rollback_vs_best"], out["unstable_vs_best"])
    return out


def make_candidate(folder: Path, thresholds: dict[str, Any]) -> Candidate:
    """Write a candidate's thresholds to ``folder/<content hash>.yaml`` (content-addressed, so that a resumed
    run's records of an identical candidate are reused and never those of a different one; the start point is
    labelled the same way, so a start that changed since an earlier run into the same folder is a new arm)."""
    checked = thresholds_of(GuardConfig(**thresholds))  # raises on an inconsistent candidate
    GuardConfig(**checked).validate()
    text = yaml.safe_dump(checked, sort_keys=False)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = (folder / f"{digest}.yaml").resolve()
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return Candidate(f"guard-{digest}", checked, path)


def search(
    setup: Setup,
    start: Candidate,
    params: Sequence[Param],
    budget: int,
    popsize: int,
    sigma: float,
    seed: int,
) -> list[Candidate]:
    """CMA-ES over ``params`` from the start point; ``budget`` candidates, evaluated a generation at a time.
    One parameter (CMA-ES needs two dimensions): ``budget`` points evenly spaced over its bounds instead."""
    folder = setup.out / "candidates"
    if len(params) == 1:
        (p,) = params
        grid = [
            make_candidate(folder, consistent({**start.thresholds, p.name: p.decode(u)})) for u in unit_grid(budget)
        ]
        setup.evaluate(grid)
        show(grid, params)
        return grid
    x0 = [p.encode(start.thresholds[p.name]) for p in params]
    options = {"bounds": [0.0, 1.0], "popsize": popsize, "seed": seed, "verbose": -9}
    es = cma.CMAEvolutionStrategy(x0, sigma, options)
    done: list[Candidate] = []
    while len(done) < budget:
        xs = es.ask()[: budget - len(done)]
        generation = []
        for x in xs:
            values = {p.name: p.decode(u) for p, u in zip(params, x)}
            generation.append(make_candidate(folder, consistent({**start.thresholds, **values})))
        setup.evaluate(generation)
        show(generation, params)
        if len(xs) == popsize:
            es.tell(xs, [c.score for c in generation])
        done += generation
    return done


def show(candidates: Sequence[Candidate], params: Sequence[Param]) -> None:
    """One line per evaluated candidate: its score, by split, and the searched values."""
    for c in candidates:
        print(
            f"  {c.label}: score {c.score:+.4f} {fmt_split(c.by_split)}  {fmt_params(c.thresholds, params)}", flush=True
        )


def fmt_split(by_split: Mapping[str, float]) -> str:
    return "(" + ", ".join(f"{k} {v:+.4f}" for k, v in by_split.items()) + ")"


def unit_grid(n: int) -> list[float]:
    """``n`` evenly spaced points of the unit interval, its ends included (the middle for ``n = 1``)."""
    return [0.5] if n == 1 else [i / (n - 1) for i in range(n)]


def fmt_params(thresholds: Mapping[str, Any], params: Sequence[Param] = PARAMS) -> str:
    return " ".join(f"{p.name}={thresholds[p.name]:g}" for p in params)


def git_version() -> tuple[str, bool]:
    """The checkout's commit and whether the code that decides the scores has uncommitted changes."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "unknown (not a git checkout)", True
    dirty = git(
        "status", "--porcelain", "--", "lbw_env", "policies", "configs/scenarios", "benchmarks/calibrate_guard.py"
    )
    return head.stdout.strip(), bool(dirty.stdout.strip())


def provenance(
    args: argparse.Namespace,
    setup: Setup,
    start: Candidate,
    chosen: Candidate,
    seconds: float,
    version: tuple[str, bool],
) -> dict[str, Any]:
    """The ``provenance:`` section: enough to rerun the calibration and to see what it was scored on."""
    commit, dirty = version  # taken at the start: the code that ran, not what the checkout holds by the end
    families = {s.family: s.source_hash for s in setup.scenarios}
    params: Sequence[Param] = args.params
    if len(params) == 1:
        method = f"grid of {args.budget} points evenly spaced over the searched bounds (log scale where marked)"
    else:
        method = (
            f"CMA-ES (cma {cma.__version__}): popsize {args.popsize}, sigma0 {args.sigma} in the unit cube of the "
            f"searched bounds (log scale where marked), seed {args.seed}, starting from the previous thresholds"
        )
    return {
        "tool": "benchmarks/calibrate_guard.py",
        "method": method + "; the best of start and candidates is kept (ties to the search)",
        "score": (
            "mean over scenarios x seeds of log(final valid ppl / plain AdamW's final valid ppl), paired by seed "
            "(the report's paired delta on validation); a run worse than uniform counts as log(vocab); lower is better"
        ),
        "searched": {p.name: [p.low, p.high, "log" if p.log else "linear"] for p in params},
        "scenario_specs": list(args.scenarios),
        "scenarios": {s.name: s.split for s in setup.scenarios},
        "seeds": setup.seeds,
        "trainer_overrides": list(setup.env.get("trainer_overrides") or []),
        "env": {k: v for k, v in setup.env.items() if k != "trainer_overrides"},
        "env_suite": args.env_suite,
        "budget": args.budget,
        "evaluated": args.budget + 1,
        "chosen": {
            "from": "start" if chosen is start else "search",
            "score": round(chosen.score, 5),
            "score_by_split": {k: round(v, 5) for k, v in chosen.by_split.items()},
        },
        "start": {
            "file": display_path(args.start),
            "score": round(start.score, 5),
            "score_by_split": {k: round(v, 5) for k, v in start.by_split.items()},
            "thresholds": {p.name: start.thresholds[p.name] for p in params},
        },
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "code_version": commit,
        "code_dirty": dirty,
        "duration_seconds": round(seconds, 1),
        "episodes": len(setup.episode_seconds),
        "episode_seconds": round(sum(setup.episode_seconds.values()), 1),
        "family_sha256": families,
        "records": display_path(setup.out),
    }


def display_path(path: str | Path) -> str:
    """A path relative to the repository where it is inside it (provenance should not name a home folder)."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def render(template: str, thresholds: Mapping[str, Any], prov: Mapping[str, Any]) -> str:
    """``template`` (the start file's text) with new threshold values and a new provenance section; comments
    and order kept. Thresholds missing from the template are appended."""
    text = re.split(rf"(?m)^(?:{re.escape(PROVENANCE_HEADER)}\n)?provenance:", template, maxsplit=1)[0].rstrip() + "\n"
    for key, value in thresholds.items():
        line = re.compile(rf"(?m)^{re.escape(key)}:[ \t]*[^#\n]*?([ \t]+#.*)?$")
        new = f"{key}: {yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
        text, n = line.subn(lambda m, new=new: new + (m.group(1) or ""), text, count=1)
        if not n:
            text += new + "\n"
    return (
        text
        + PROVENANCE_HEADER
        + "\n"
        + yaml.safe_dump(
            {"provenance": dict(prov)}, sort_keys=False, allow_unicode=True, width=110, default_flow_style=None
        )
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", nargs="+", default=["tiny:train", "tiny:val"], help="train/val scenario specs")
    ap.add_argument("--seeds", type=int, default=3, help="evaluation seeds per scenario (0..n-1)")
    ap.add_argument("--budget", type=int, default=24, help="candidates the search evaluates (plus the start)")
    ap.add_argument("--popsize", type=int, default=6, help="CMA-ES population per generation")
    ap.add_argument("--sigma", type=float, default=0.25, help="CMA-ES initial step in the unit cube")
    ap.add_argument("--seed", type=int, default=1, help="CMA-ES seed, >= 1 (cma reads 0 as 'seed from the clock')")
    ap.add_argument("--workers", type=int, default=1, help="episodes in parallel (a process pool if > 1)")
    ap.add_argument("--start", default=str(GUARD_YAML), help="thresholds to start from (YAML)")
    ap.add_argument("--output", default=str(GUARD_YAML), help="where the chosen thresholds are written")
    ap.add_argument("--out", default="results/calibrate_guard", help="records and candidate files (resumable)")
    ap.add_argument("--env-suite", default="smoke", help="suite whose env settings the guard is reported under")
    ap.add_argument(
        "--params",
        nargs="+",
        default=[p.name for p in PARAMS],
        help=f"thresholds to search among {', '.join(SEARCHABLE)} (default: {' '.join(p.name for p in PARAMS)}; "
        "one alone: a grid)",
    )
    ap.add_argument("overrides", nargs="*", help="trainer key=value overrides for every run")
    args = ap.parse_args(argv)
    for name in ("seeds", "budget", "popsize", "workers", "seed"):
        if getattr(args, name) < 1:
            ap.error(f"--{name}: expected an int >= 1, got {getattr(args, name)}")
    if not 0 < args.sigma <= 1:
        ap.error(f"--sigma: expected a float in (0, 1], got {args.sigma}")
    unknown = [name for name in args.params if name not in SEARCHABLE]
    if unknown:
        ap.error(f"--params: expected names among {', '.join(SEARCHABLE)}, got {', '.join(unknown)}")
    args.params = tuple(SEARCHABLE[name] for name in dict.fromkeys(args.params))
    return args


def run(args: argparse.Namespace) -> Candidate:
    """Calibrate; write the output file; return the chosen candidate."""
    t0 = time.perf_counter()
    version = git_version()
    scenarios = require_not_test(args.scenarios, PURPOSE)  # the test split is for reporting only
    env = dict(read_yaml(suite_path(args.env_suite)).get("env") or {})
    env["trainer_overrides"] = [*(env.get("trainer_overrides") or []), *args.overrides]
    setup = Setup(list({s.name: s for s in scenarios}.values()), args.seeds, env, Path(args.out), args.workers)
    template = Path(args.start).read_text(encoding="utf-8")
    start = make_candidate(setup.out / "candidates", thresholds_of(load_guard_config(args.start)))
    print(f"calibrate_guard: {len(setup.scenarios)} scenarios x {args.seeds} seeds; start + {args.budget}", flush=True)
    setup.evaluate([start], with_reference=True)
    shown = fmt_params(start.thresholds, args.params)
    print(f"  start: score {start.score:+.4f} {fmt_split(start.by_split)}  {shown}", flush=True)
    found = search(setup, start, args.params, args.budget, args.popsize, args.sigma, args.seed)
    best = min(found, key=lambda c: c.score)
    chosen = best if best.score <= start.score else start
    prov = provenance(args, setup, start, chosen, time.perf_counter() - t0, version)
    output = Path(args.output)
    atomic_write_text(output, render(template, chosen.thresholds, prov))
    if thresholds_of(load_guard_config(output)) != chosen.thresholds:  # what is shipped is what was scored
        raise ConfigError(f"{output}: the written thresholds do not read back as the chosen ones")
    print(f"chosen ({prov['chosen']['from']}): score {chosen.score:+.4f} {fmt_split(chosen.by_split)}", flush=True)
    print(
        f"  {fmt_params(chosen.thresholds, args.params)}\nwritten to {output} in {prov['duration_seconds']:.0f} s",
        flush=True,
    )
    return chosen


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with exit_on_bad_input("calibrate_guard.py"):
        run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
