"""``run_suite``: plan, resume, execute, store — the one entry point that runs an evaluation.

The order of events is the point: the whole suite is validated (:func:`~.suite.prepare`), the output folder is
checked to be writable, and the data of the tasks to run is loaded and checked (:func:`~.suite.check_data`)
before the output folder is touched; stored records made by another configuration are refused before anything
runs; finished tasks are skipped; and each record is appended the moment it arrives, so that an interruption
loses at most the episodes in flight.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..control.protocol import GovernorFactory
from .executors import EXECUTORS, Executor
from .records import RECORDS_FILE, RecordStore, record_key
from .suite import Plan, SuiteConfig, check_data, prepare


@dataclasses.dataclass
class RunSummary:
    """What :func:`run_suite` did."""

    out: Path
    plan: Plan
    records: list[dict[str, Any]]
    """All complete records in the store after the run (earlier runs' included)."""
    ran: int
    """Tasks run now."""
    skipped: int
    """Tasks skipped because their records already existed."""
    notes: list[str]
    """Warnings of the plan and of loading the store."""


def run_suite(
    suite: SuiteConfig,
    out: str | os.PathLike[str] | None = None,
    *,
    make_governor: GovernorFactory,
    executor: Executor | str | None = None,
    workers: int = 1,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[int, int, list[str]], None] | None = None,
) -> RunSummary:
    """Run every task of ``suite`` that ``out`` has no record of yet; write each record as it arrives.

    ``make_governor`` builds each arm's governor from its spec (``policies.make_governor``); it must be a
    module-level function, since the process and Ray executors send it to their workers by pickle.
    ``out`` defaults to ``results/<suite name>``. Nothing is created there unless the suite passed
    :func:`~.suite.prepare`. ``executor`` None: ``process`` if ``workers > 1``, else ``local``.
    ``on_start(total, todo, notes)`` is called once before running, ``on_record`` after each write.
    """
    if executor is None:
        executor = "process" if workers > 1 else "local"
    if executor not in EXECUTORS:
        raise ConfigError(f"executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    if workers < 1:
        raise ConfigError(f"workers: expected an int >= 1, got {workers!r}")
    plan = prepare(suite, make_governor)
    folder = Path(out) if out is not None else Path("results") / suite.name
    check_output_folder(folder)
    store = RecordStore(folder)  # reads only; the folder is created on open()
    notes = list(plan.warnings) + list(store.dropped)
    store.check_hashes(plan.hashes)
    done = store.done_keys()
    todo = [t for t in plan.tasks if t.key not in done]
    check_data(plan, todo)
    if on_start is not None:
        on_start(len(plan.tasks), len(todo), notes)
    ran = 0
    if todo:
        with store:
            store.open()
            for record in EXECUTORS[executor](suite, todo, workers, make_governor):
                if store.append(record):
                    ran += 1
                if on_record is not None:
                    on_record(record)
    # Plan order (scenario, seed, arm), whatever order the executor delivered them in; records of tasks
    # outside this plan (earlier runs into the same folder) follow in file order.
    order = {t.key: i for i, t in enumerate(plan.tasks)}
    records = sorted(store.records, key=lambda r: order.get(record_key(r), len(order)))
    return RunSummary(folder, plan, records, ran, len(plan.tasks) - len(todo), notes)


def check_output_folder(folder: Path) -> None:
    """Refuse an output folder that cannot be written (read-only, or a file in the way), creating nothing: the
    folder itself if it exists, else its nearest existing parent must be a writable folder. Otherwise the first
    record, after the first episode, would fail with a bare ``OSError``."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"output folder {folder}: {probe} is not a folder; expected a folder (--out)")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "it is" if probe == folder else f"its parent {probe} is"
        raise ConfigError(f"output folder {folder}: {where} not writable; expected a writable folder (--out)")
    records = folder / RECORDS_FILE
    if records.exists() and not os.access(records, os.W_OK):
        raise ConfigError(f"records file {records}: not writable; expected a writable file to append to")
