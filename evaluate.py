#!/usr/bin/env python
"""Evaluate governors over a suite of scenarios and seeds: records, report, plots.

    python evaluate.py --suite configs/suites/smoke.yaml
    python evaluate.py --suite lr_stress --governors adamw lbw_guard ppo:runs/x/best_model.zip --seeds 5
    python evaluate.py --suite smoke --workers 2 eval_every=4 env.trainer_overrides=[runtime.threads=1]
    python evaluate.py --list

Writes ``<out>/records.jsonl`` (one record per scenario x arm x seed; a rerun skips finished records, so an
interrupted evaluation resumes), then ``<out>/report.md``, ``<out>/summary.csv`` and ``<out>/plots/*.png``.
Default ``<out>``: ``results/<suite name>/``. Every input (suite, governors against the env, data, output folder)
is checked before anything runs or is written; a bad one is one line naming it (``evaluate.py: error: ...``), exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn


def _list() -> None:
    """``--list``: suites (with their descriptions), governor names, scenario families."""
    from lbw_env.config import ConfigError
    from lbw_env.evaluation import available_suites, load_suite, suites_dir
    from lbw_env.scenarios import families, load_family
    from policies import available

    print(f"Suites ({suites_dir()}):")
    for name in available_suites():
        try:
            suite = load_suite(name)
            desc = " ".join(suite.description.split())
            print(f"  {name:<16} {desc[:100]}")
        except ConfigError as e:
            print(f"  {name:<16} INVALID: {e}")
    print("\nGovernors:")
    print("  " + ", ".join(available()) + "  (ppo/a2c/sac/recurrent_ppo take :<path to model .zip>)")
    print("\nScenarios (spec: family, family:train, family:heldout or family/name):")
    for family in families():
        try:
            scenarios = load_family(family)
        except ConfigError as e:
            print(f"  {family}: INVALID: {e}")
            continue
        print(f"  {family}: " + ", ".join(f"{s.name} [{s.split}]" for s in scenarios.values()))


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error (exit status 2 as argparse's)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def fail(message: object) -> int:
    """Print one line ``evaluate.py: error: ...`` to stderr; the exit status of bad input (2)."""
    print(f"evaluate.py: error: {' '.join(str(message).split())}", file=sys.stderr)
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
    p.add_argument("--list", action="store_true", help="list suites, governors and scenarios, then exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="suite config overrides")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        _list()
        return 0
    if not args.suite:
        return fail("--suite is required (or --list)")

    from tqdm import tqdm

    from lbw_env.config import ConfigError
    from lbw_env.evaluation import load_suite, run_suite, short_table, write_report
    from policies import make_governor

    overrides = list(args.overrides) + ([f"seeds={args.seeds}"] if args.seeds is not None else [])
    bar: Any = None

    def on_start(total: int, todo: int, notes: Sequence[str]) -> None:
        nonlocal bar
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"{suite.name}: {total} runs, {total - todo} already done, {todo} to run", file=sys.stderr)
        bar = tqdm(total=todo, unit="run", dynamic_ncols=True, disable=todo == 0)

    def on_record(record: dict[str, Any]) -> None:
        if bar is not None:
            bar.set_postfix_str(
                f"{record['scenario']} {record['arm']} s{record['seed']}: ppl {record['final_valid_ppl']}"
            )
            bar.update(1)

    try:
        suite = load_suite(args.suite, overrides, governors=args.governors or ())
        summary = run_suite(suite, args.out, make_governor=make_governor, executor=args.executor,
                            workers=args.workers, on_start=on_start, on_record=on_record)  # fmt: skip
    except (ConfigError, OSError) as e:  # bad input, found before anything ran; OSError: e.g. a full disk
        return fail(e)
    except KeyboardInterrupt:
        print("\ninterrupted: finished records are kept; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()

    report: dict[str, Any] = {"title": suite.name, "description": suite.description, "notes": summary.notes,
                              "reference_arm": suite.reference_arm, "guard_arm": suite.guard_arm,
                              "reference": summary.plan.reference}  # fmt: skip
    try:
        files = write_report(summary.out, summary.records, plots=not args.no_plots, **report)
    except OSError as e:
        return fail(f"report in {summary.out}: {e}")
    print(short_table(files.cells))
    print(f"\nran {summary.ran}, skipped {summary.skipped} (already recorded)")
    print(f"records: {Path(summary.out) / 'records.jsonl'}")
    print(f"report:  {files.report_md}")
    print(f"summary: {files.summary_csv}")
    if files.plots:
        print(f"plots:   {files.plots[0].parent}/ ({len(files.plots)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
