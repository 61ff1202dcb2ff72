"""Paired comparison of two arms of a records file: per scenario, and pooled over chosen scenarios.

The report compares every arm with the reference arm (plain AdamW); this answers "arm A vs arm B" (a learned
governor vs the guard) from the same committed records, with the report's own statistics: the per-seed
difference of final test log perplexities, its Student-t 95 % interval and the paired t-test
(:func:`lbw_env.evaluation.intervals.paired`). The pooled line treats every (scenario, seed) pair alike, a
rough summary next to the per-scenario rows, not a replacement for them.

    python scripts/paired_arms.py benchmarks/results/tiny_test ppo_residual lbw_guard --split test

``--at-step N`` compares the validation log perplexity at step ``N`` of the runs' curves instead (where a gap
opens: e.g. before a fault starts), a diagnostic beside the headline, not a replacement for it.

``--detect PCT`` adds to each line how many seeds would give a 95 % interval of ±PCT % at the spread of the
observed differences (pooled: seeds per pooled scenario): what a comparison of this size can hope to show.

    python scripts/paired_arms.py benchmarks/results/tiny_learned ppo_dagger lbw_guard_tuned --split test --detect 1
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from collections.abc import Sequence

from lbw_env.errors import exit_on_bad_input
from lbw_env.evaluation.intervals import paired, runs_for_half_width
from lbw_env.evaluation.stats import START_TOLERANCE, log_ppl, start_mismatch
from lbw_env.evaluation.verify import read_records


def valid_log_ppl_at(record: dict, step: int) -> float | None:
    """The validation log perplexity of ``record``'s curve at ``step`` (None: no evaluation at that step)."""
    curve = record["curves"]["valid"]
    if step not in curve["step"]:
        return None
    return math.log(curve["ppl"][curve["step"].index(step)])


def needed(diffs: Sequence[float], pct: float | None, per: int = 1) -> str:
    """``; ±PCT % needs N seeds`` (per scenario where ``per`` scenarios are pooled), or "" without ``--detect``."""
    if pct is None or len(diffs) < 2:
        return ""
    n = math.ceil(runs_for_half_width(diffs, math.log1p(pct / 100)) / per)
    return f"; ±{pct:g} % needs ~{n} seeds" + (" per scenario" if per > 1 else "")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", help="a records.jsonl or its folder")
    ap.add_argument("arm", help="the arm compared (Δ = arm - other)")
    ap.add_argument("other", help="the arm it is compared with")
    ap.add_argument("--split", default="", help="pool only scenarios of this split (train, val, test)")
    ap.add_argument("--at-step", type=int, help="compare the validation log-ppl at this step of the curves instead")
    ap.add_argument("--detect", type=float, metavar="PCT", help="also: seeds for a 95 %% interval of ±PCT %%")
    args = ap.parse_args(argv)
    if args.detect is not None and not (math.isfinite(args.detect) and args.detect > 0):
        ap.error(f"--detect: expected a positive percentage, got {args.detect}")
    with exit_on_bad_input("paired_arms.py"):
        records = read_records(args.records)
    losses: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    runs: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    split_of: dict[str, str] = {}
    for r in records:
        runs[(r["scenario"], r["arm"])][int(r["seed"])] = r
        value = log_ppl(r, "test") if args.at_step is None else valid_log_ppl_at(r, args.at_step)
        if value is None:
            steps = r["curves"]["valid"]["step"]
            print(
                f"--at-step {args.at_step}: not a validation step of the records (they have {steps})", file=sys.stderr
            )
            return 2
        losses[(r["scenario"], r["arm"])][int(r["seed"])] = value
        split_of[r["scenario"]] = str(r.get("split", ""))
    pooled: list[float] = []
    scenarios = 0
    for scenario in dict.fromkeys(r["scenario"] for r in records):
        mine, theirs = losses.get((scenario, args.arm), {}), losses.get((scenario, args.other), {})
        apart = start_mismatch(list(runs[(scenario, args.arm)].values()), runs[(scenario, args.other)])
        if mine and theirs and apart > START_TOLERANCE:  # another base checkpoint: the seeds are not pairs
            where = f"{scenario} [{split_of[scenario]}]"
            print(f"{where}: not paired: the arms start from other models ({apart:.2%} apart)")
            continue
        diffs = [mine[s] - theirs[s] for s in sorted(mine) if s in theirs and math.isfinite(mine[s] - theirs[s])]
        if not diffs:
            continue
        p = paired(diffs)
        line = f"{scenario} [{split_of[scenario]}]: {p.pct.fmt('{:+.2f}')} % (n = {len(diffs)}, paired t p = {p.p:.3g})"
        print(line + needed(diffs, args.detect))
        if not args.split or split_of[scenario] == args.split:
            pooled += diffs
            scenarios += 1
    if not pooled:
        print(f"no paired runs of {args.arm} and {args.other}", file=sys.stderr)
        return 1
    p = paired(pooled)
    where = f"{args.split} scenarios" if args.split else "all scenarios"
    if args.at_step is not None:
        where += f", validation at step {args.at_step}"
    line = f"pooled over {where}: {p.pct.fmt('{:+.2f}')} % (n = {len(pooled)}, paired t p = {p.p:.3g})"
    print(line + needed(pooled, args.detect, per=scenarios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
