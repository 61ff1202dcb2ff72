#!/usr/bin/env python
"""Evaluate governors over a suite of scenarios and seeds: records, report, plots.

    python evaluate.py --suite configs/suites/smoke.yaml
    python evaluate.py --suite lr_stress --governors adamw lbw_guard ppo:runs/x/best_model --seeds 5
    python evaluate.py --suite smoke --workers 2 eval_every=4 env.trainer_overrides=[runtime.threads=1]
    python evaluate.py --suite smoke --out benchmarks/results/smoke --no-plots      # results to commit
    python evaluate.py --verify benchmarks/results/smoke [--limit N] [--keys test_ppl curves]
    python evaluate.py --list

Writes ``<out>/records.jsonl`` (one record per scenario x arm x seed; a rerun skips finished records, so an
interrupted evaluation resumes), ``<out>/suite.yaml`` (the suite and this command), then ``<out>/report.md``,
``<out>/summary.csv`` and ``<out>/plots/*.png``. Default ``<out>``: ``results/<suite name>/``. ``--verify``
replays each record's actions in a fresh env, without the governor, and checks its numbers bit for bit
(:mod:`lbw_env.evaluation.verify`; exit 1 on a mismatch). Every input is checked before anything runs or is
written; a bad one is one line naming it (``evaluate.py: error: ...``), exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn


def _verify(records: str, keys: Sequence[str], limit: int | None) -> int:
    """``--verify``: replay each record (no governor code runs); 0 all agree, 1 a mismatch, 2 bad input."""
    from lbw_env.errors import BAD_INPUT
    from lbw_env.evaluation.verify import verify

    try:
        return verify(records, keys, limit, note=lambda line: print(line, file=sys.stderr))
    except BAD_INPUT as e:
        return fail(e)
    except KeyboardInterrupt:
        return 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error (exit status 2 as argparse's)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def fail(message: object) -> int:
    """Print one line ``evaluate.py: error: ...`` to stderr; the exit status of bad input (2)."""
    from lbw_env.errors import error_line

    print(error_line("evaluate.py", message), file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    """The command line; the engine is imported only after parsing, so ``--help`` needs no torch."""
    p = _Parser(
        prog="evaluate.py",
        description="Run governors over a suite (scenarios x arms x seeds); write records, report and plots.",
        epilog="Overrides are key=value on the suite config, e.g. seeds=5 eval_every=4 env.decision_interval=4 "
        "scenarios=[tiny/ref,tiny/shock] env.trainer_overrides=[optim.steps=64].",
    )
    p.add_argument("--suite", help="suite YAML file, or a name under configs/suites/")
    p.add_argument("--governors", nargs="+", metavar="SPEC", help="replace the suite's arms by these governors")
    p.add_argument("--seeds", type=int, help="number of seeds (0..N-1)")
    p.add_argument("--out", help="output folder (default: results/<suite name>/)")
    p.add_argument("--workers", type=int, default=1, help="parallel workers (default 1)")
    p.add_argument(
        "--executor",
        choices=["local", "process", "ray"],
        help="local (in this process), process (multiprocessing pool) or ray; default: process if --workers > 1",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--trust-pickle", action="store_true", help="also load SB3 .zip/.pkl governors: DANGEROUS, "
                   "pickle runs any code the file holds; only for files you made (else convert them once: "
                   "python -m lbw_env.learning.convert)")  # fmt: skip
    p.add_argument("--verify", metavar="RECORDS", help="replay a records.jsonl (or its folder) without governors")
    p.add_argument("--limit", type=int, metavar="N", help="--verify: only the first N records")
    p.add_argument("--keys", nargs="+", metavar="KEY", help="--verify: compare only these (dotted) fields")
    p.add_argument("--list", action="store_true", help="list suites, governors and scenarios, then exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="suite config overrides")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        from lbw_env.evaluation.cli import listing
        from policies import available

        print(listing(available()))
        return 0
    if (args.limit is not None or args.keys) and not args.verify:
        return fail("--limit and --keys go with --verify")
    if args.verify and (args.suite or args.governors or args.overrides):
        return fail("--verify replays records as they are: it takes no --suite, --governors or overrides")
    if args.verify:
        return _verify(args.verify, args.keys or (), args.limit)
    if not args.suite:
        return fail("--suite is required (or --verify, --list)")

    from lbw_env.errors import BAD_INPUT
    from lbw_env.evaluation import load_suite, run_suite
    from lbw_env.evaluation.cli import Progress, finish, outcome
    from policies import make_governor, make_trusted_governor

    overrides = list(args.overrides) + ([f"seeds={args.seeds}"] if args.seeds is not None else [])
    progress = Progress(str(args.suite))
    try:
        suite = load_suite(args.suite, overrides, governors=args.governors or ())
        progress.name = suite.name
        factory = make_trusted_governor if args.trust_pickle else make_governor
        summary = run_suite(suite, args.out, make_governor=factory, executor=args.executor, workers=args.workers,
                            on_start=progress.on_start, on_record=progress.on_record)  # fmt: skip
    except BAD_INPUT as e:  # bad config or data, found before anything ran, or an OS error (e.g. a full disk)
        return fail(e)
    except KeyboardInterrupt:
        print("\ninterrupted: finished records are kept; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        progress.close()
    try:
        files = finish(summary, suite, sys.argv[1:] if argv is None else argv, plots=not args.no_plots)
    except OSError as e:
        return fail(f"report in {summary.out}: {e}")
    print(outcome(summary, files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
