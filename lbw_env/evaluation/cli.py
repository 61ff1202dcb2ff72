"""What ``evaluate.py`` shows and leaves behind: the ``--list`` listing, the progress bar, the report and the
closing lines, so that the script itself only parses arguments and wires ``policies`` into the engine.

The engine does not import the governors: the listing is handed their names, as :func:`~.run.run_suite` is
handed the governor factory.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..scenarios import families, load_family
from .arms import NAMED_ARMS
from .readme import write_suite_file
from .records import RECORDS_FILE
from .report import ReportFiles, write_report
from .run import RunSummary
from .suite import SuiteConfig, available_suites, load_suite, suites_dir
from .tables import short_table


def listing(governors: Sequence[str]) -> str:
    """``--list``: suites (with their descriptions), governor names, named arms, scenario families with their
    splits."""
    out = [f"Suites ({suites_dir()}):"]
    for name in available_suites():
        try:
            desc = " ".join(load_suite(name).description.split())
            out.append(f"  {name:<16} {desc[:100]}")
        except ConfigError as e:
            out.append(f"  {name:<16} INVALID: {e}")
    out += ["", "Governors:"]
    out.append(
        "  " + ", ".join(governors) + "  (ppo/a2c/sac/recurrent_ppo take :<governor folder>, e.g. "
        "ppo:runs/<run>/best_model; an SB3 .zip only with --trust-pickle)"
    )
    out += ["", "Named arms (a bare string in a suite's arms:, or --governors; lbw_env/evaluation/arms.py):"]
    out.append("  " + ", ".join(NAMED_ARMS))
    out += ["", "Scenarios (spec: family, family:train, family:val, family:test or family/name):"]
    for family in families():
        try:
            scenarios = load_family(family)
        except ConfigError as e:
            out.append(f"  {family}: INVALID: {e}")
            continue
        out.append(f"  {family}: " + ", ".join(f"{s.name} [{s.split}]" for s in scenarios.values()))
    return "\n".join(out)


class Progress:
    """A tqdm bar over the runs to do, fed by :func:`~.run.run_suite`'s ``on_start`` and ``on_record``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.bar: Any = None

    def on_start(self, total: int, todo: int, notes: Sequence[str]) -> None:
        from tqdm import tqdm  # a progress bar is a terminal's business, not the engine's import

        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"{self.name}: {total} runs, {total - todo} already done, {todo} to run", file=sys.stderr)
        self.bar = tqdm(total=todo, unit="run", dynamic_ncols=True, disable=todo == 0)

    def on_record(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(
                f"{record['scenario']} {record['arm']} s{record['seed']}: ppl {record['final_valid_ppl']}"
            )
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def finish(summary: RunSummary, suite: SuiteConfig, argv: Sequence[str], plots: bool = True) -> ReportFiles:
    """After a run: ``suite.yaml`` (the suite and the command ``argv``), then the report, summary and plots."""
    write_suite_file(summary.out, suite, summary.plan.reference, argv)
    return write_report(
        summary.out,
        summary.records,
        plots=plots,
        title=suite.name,
        description=suite.description,
        notes=summary.notes,
        reference_arm=suite.reference_arm,
        guard_arm=suite.guard_arm,
        reference=summary.plan.reference,
    )


def outcome(summary: RunSummary, files: ReportFiles) -> str:
    """The closing lines: the short table, what ran, and where everything is."""
    lines = [
        short_table(files.cells),
        "",
        f"ran {summary.ran}, skipped {summary.skipped} (already recorded)"
        + (f"; {summary.copied} of those runs are copies of an identical run" if summary.copied else ""),
    ]
    lines += [f"records: {Path(summary.out) / RECORDS_FILE}", f"report:  {files.report_md}"]
    lines.append(f"summary: {files.summary_csv}")
    if files.plots:
        lines.append(f"plots:   {files.plots[0].parent}/ ({len(files.plots)} files)")
    return "\n".join(lines)
