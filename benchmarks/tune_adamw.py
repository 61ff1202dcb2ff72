"""Tune plain AdamW's learning rate on TRAIN and VAL scenarios only: the ``adamw_tuned`` baseline, with provenance.

Why: "the guard beats AdamW at 100x the LR" says little until it is compared with the careful user, who
would have swept the LR first. This script is that user. It runs plain AdamW (no governor, the suites'
envelope) at each LR of ``--lrs`` on the given scenarios through the evaluation engine, and picks the LR with
the lowest mean final validation loss (log perplexity; a run worse than the uniform predictor, or diverged,
counts as uniform, as in ``calibrate_guard.py``). The LR is an arm override (``optim.lr=<lr>``), so it
replaces each scenario's configured (stress) LR; scenarios that become the same run once the LR is replaced
(the LR-stress multiples of one base) are run once. The test split is refused (one-line error,
:func:`lbw_env.scenarios.require_not_test`): the tuned LR is chosen where governors are tuned, never where
they are reported.

Output: ``--output`` (default ``configs/baselines/adamw_tuned.yaml``) gets, under the family's name (or
``--name``, for a family whose models want their own LR), the
chosen ``lr`` and a ``provenance`` (scenarios, seeds, LRs with their scores, date, commit, duration, family
sha256); other families' entries are kept. Suites run the baseline as the arm
``{label: adamw_tuned, governor: adamw, trainer_overrides: [optim.lr=<lr>]}`` (``tests/test_tuned_adamw.py``
checks that every suite's ``adamw_tuned`` arm uses its family's tuned LR). Records go to ``--out``
(resumable). Example (lr_stress: 5 LRs x 1 distinct run x 3 seeds)::

    python benchmarks/tune_adamw.py --scenarios lr_stress:train lr_stress:val --lrs 1e-3 2e-3 3e-3 6e-3 1e-2 \
        --seeds 3 --workers 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lbw_env.cache import atomic_write_text
from lbw_env.config import ConfigError, read_yaml, to_dict
from lbw_env.errors import exit_on_bad_input
from lbw_env.evaluation import load_suite, run_suite
from lbw_env.evaluation.stats import capped_loss
from lbw_env.evaluation.suite import suite_path, with_overrides
from lbw_env.scenarios import Scenario, require_not_test, tuned_lrs_path
from policies import make_governor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibrate_guard import display_path, git_version  # one definition of each

PURPOSE = "AdamW LR tuning (benchmarks/tune_adamw.py)"
HEADER = "# The tuned-AdamW baseline's LR per family: written by benchmarks/tune_adamw.py (not by hand).\n"


def lr_label(lr: float) -> str:
    return f"adamw_lr{lr:g}"


def distinct(scenarios: Sequence[Scenario], lr: float, overrides: Sequence[str]) -> list[Scenario]:
    """The scenarios that are still different runs once the LR is ``lr`` (first of each kind, in order)."""
    seen: dict[str, Scenario] = {}
    for s in scenarios:
        key = json.dumps(to_dict(with_overrides(s, [*overrides, f"optim.lr={lr}"]).trainer), sort_keys=True)
        seen.setdefault(key, s)
    return list(seen.values())


def tune(args: argparse.Namespace) -> dict[str, Any]:
    """Run the sweep; return the family's entry (``lr`` and ``provenance``)."""
    t0 = time.perf_counter()
    commit, dirty = git_version()
    scenarios = list({s.name: s for s in require_not_test(args.scenarios, PURPOSE)}.values())
    families = sorted({s.family for s in scenarios})
    if len(families) != 1:
        raise ConfigError(f"--scenarios: expected scenarios of one family, got {families}")
    env = dict(read_yaml(suite_path(args.env_suite)).get("env") or {})
    env["trainer_overrides"] = [*(env.get("trainer_overrides") or []), *args.overrides]
    runs = distinct(scenarios, args.lrs[0], env["trainer_overrides"])
    for lr in args.lrs[1:]:  # the same collapse for every LR (only the LR differs between the arms)
        if [s.name for s in distinct(scenarios, lr, env["trainer_overrides"])] != [s.name for s in runs]:
            raise ConfigError(f"--lrs: scenarios collapse differently at {lr}")
    arms = [{"label": lr_label(lr), "governor": "adamw", "trainer_overrides": [f"optim.lr={lr}"]} for lr in args.lrs]
    suite = load_suite(
        {"name": "tune_adamw", "scenarios": [s.name for s in runs], "arms": arms, "seeds": args.seeds, "env": env}
    )
    print(f"tune_adamw: {len(runs)} distinct runs of {len(scenarios)} scenarios x {len(arms)} LRs x {args.seeds} seeds")
    records = run_suite(suite, Path(args.out), make_governor=make_governor, workers=args.workers).records
    scores: dict[float, float] = {}
    wall = 0.0
    for lr in args.lrs:
        mine = [r for r in records if r["arm"] == lr_label(lr) and r["scenario"] in {s.name for s in runs}]
        mine = [r for r in mine if int(r["seed"]) < args.seeds]
        scores[lr] = float(np.mean([capped_loss(r) for r in mine]))
        wall += sum(float((r.get("timing") or {}).get("wall_seconds") or 0.0) for r in mine)
        print(f"  lr {lr:g}: mean final valid log-ppl {scores[lr]:.4f} (ppl {math.exp(scores[lr]):.1f})", flush=True)
    best = min(args.lrs, key=lambda lr: scores[lr])
    edge = best in (min(args.lrs), max(args.lrs))
    print(f"chosen lr {best:g}" + ("  (at the edge of the grid: widen --lrs)" if edge else ""), flush=True)
    return {
        "lr": best,
        "provenance": {
            "tool": "benchmarks/tune_adamw.py",
            "score": "mean over distinct runs x seeds of the final validation log-ppl (worse than uniform = uniform)",
            "scenario_specs": list(args.scenarios),
            "scenarios": {s.name: s.split for s in scenarios},
            "distinct_runs": [s.name for s in runs],
            "seeds": args.seeds,
            "lrs": {f"{lr:g}": round(scores[lr], 5) for lr in args.lrs},
            "at_grid_edge": edge,
            "env_suite": args.env_suite,
            "trainer_overrides": list(args.overrides),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "code_version": commit,
            "code_dirty": dirty,
            "duration_seconds": round(time.perf_counter() - t0, 1),
            "episode_seconds": round(wall, 1),
            "family_sha256": {s.family: s.source_hash for s in scenarios},
            "records": display_path(args.out),
        },
        "_family": families[0],
    }


def write(output: Path, family: str, entry: dict[str, Any]) -> None:
    """Set ``family``'s entry in ``output``, keeping the others."""
    data = yaml.safe_load(output.read_text(encoding="utf-8")) if output.is_file() else {}
    data = dict(data or {})
    data[family] = entry
    text = yaml.safe_dump(data, sort_keys=True, allow_unicode=True, width=110, default_flow_style=None)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, HEADER + text)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", nargs="+", required=True, help="train/val scenario specs of one family")
    ap.add_argument("--lrs", type=float, nargs="+", required=True, help="the LR grid")
    ap.add_argument("--seeds", type=int, default=3, help="evaluation seeds per run (0..n-1)")
    ap.add_argument("--workers", type=int, default=1, help="episodes in parallel (a process pool if > 1)")
    ap.add_argument("--output", default=str(tuned_lrs_path()), help="the tuned-LR file (one entry per family)")
    ap.add_argument("--out", default="", help="records folder (default results/tune_adamw/<first spec>)")
    ap.add_argument("--env-suite", default="smoke", help="suite whose env settings the runs use")
    ap.add_argument("--name", default="", help="entry name in --output (default: the family; e.g. lora_stress/qwen2-m)")
    ap.add_argument("overrides", nargs="*", help="trainer key=value overrides for every run")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.workers < 1:
        ap.error("--seeds and --workers: expected ints >= 1")
    if any(not (math.isfinite(lr) and lr > 0) for lr in args.lrs):
        ap.error(f"--lrs: expected positive finite floats, got {args.lrs}")
    args.lrs = sorted(set(args.lrs))
    args.out = args.out or f"results/tune_adamw/{args.scenarios[0].split(':')[0].split('/')[0]}"
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with exit_on_bad_input("tune_adamw.py"):
        entry = tune(args)
        family = args.name or entry.pop("_family")
        entry.pop("_family", None)
        write(Path(args.output), family, entry)
    print(f"written to {args.output} ({family}: lr {entry['lr']:g})")


if __name__ == "__main__":
    main(sys.argv[1:])
