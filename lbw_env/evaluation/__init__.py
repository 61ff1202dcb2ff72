"""Evaluation: run governors over a suite of scenarios and seeds, one JSON record per run, resumably; report.

Modules, each importing only those above it:

* :mod:`.records` — ``records.jsonl``: the crash-safe, resumable record store and record helpers;
* :mod:`.stats` — bootstrap CIs, paired differences, time-to-target, one ``Cell`` per (scenario, arm);
* :mod:`.suite` — the suite schema, loading, and :func:`prepare` (every input checked before a run);
* :mod:`.episode` — one (scenario, arm, seed) episode -> one record;
* :mod:`.executors` — local, process-pool and Ray execution of tasks;
* :mod:`.run` — :func:`run_suite`: plan, resume, execute, store;
* :mod:`.tables`, :mod:`.plots`, :mod:`.report` — Markdown and CSV, PNGs, and ``write_report``.

The engine never imports the governors it evaluates: callers pass a governor factory
(``make_governor=policies.make_governor``).
"""

from __future__ import annotations

from .episode import run_episode
from .records import RecordStore, record_key, strip_volatile
from .report import ReportFiles, write_report
from .run import RunSummary, run_suite
from .stats import Cell, summarize
from .suite import Arm, Plan, SuiteConfig, Task, available_suites, load_suite, prepare, suites_dir
from .tables import short_table

__all__ = [
    "Arm",
    "Cell",
    "Plan",
    "RecordStore",
    "ReportFiles",
    "RunSummary",
    "SuiteConfig",
    "Task",
    "available_suites",
    "load_suite",
    "prepare",
    "record_key",
    "run_episode",
    "run_suite",
    "short_table",
    "strip_volatile",
    "suites_dir",
    "summarize",
    "write_report",
]
