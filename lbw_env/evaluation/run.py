"""``run_suite``: plan, resume, execute, store — the one entry point that runs an evaluation.

The order of events is the point: the whole suite is validated (:func:`~.suite.prepare`), the output folder is
checked to be writable, and the data of the tasks to run is loaded and checked (:func:`~.suite.check_data`)
before the output folder is touched; stored records made by another configuration are refused before anything
runs; finished tasks are skipped; and each record is appended the moment it arrives, so that an interruption
loses at most the episodes in flight.

Identical runs are computed once. A run's bits are decided by its configuration hash (env, governor, the
scenario's trainer config after the arm's overrides), its split (the block of reset seeds) and its seed, not by
the scenario's name: an arm that overrides the very thing the scenarios differ in (``adamw_tuned`` sets the LR
that tells LR-stress scenarios apart) makes every scenario of a model the same run. Its other tasks get a copy of
the record under their own key, marked ``copy_of``, with the replay's scenario renamed, so ``--verify`` replays
each copy as its own scenario (and gets the same bits).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..control.protocol import GovernorFactory
from .episode import package_versions
from .executors import EXECUTORS, Executor
from .records import RECORDS_FILE, RecordKey, RecordStore, record_key
from .suite import Plan, SuiteConfig, Task, check_data, prepare


@dataclasses.dataclass
class RunSummary:
    """What :func:`run_suite` did."""

    out: Path
    plan: Plan
    records: list[dict[str, Any]]
    """All complete records in the store after the run (earlier runs' included)."""
    ran: int
    """Tasks run now (copies of an identical run included)."""
    copied: int
    """Of those, tasks whose record is a copy of an identical run's (see the module docstring)."""
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
    if out is not None and not str(out).strip():
        raise ConfigError("--out: expected a folder path, got '' (it would write into the working directory)")
    if out is None and (not re.fullmatch(r"[A-Za-z0-9_.-]+", suite.name) or suite.name in (".", "..")):
        # The default folder is results/<name>: a name with a path in it would write outside results/.
        raise ConfigError(
            f"name: expected letters, digits, '_', '.' or '-' (it names results/<name>), got {suite.name!r}"
        )
    folder = Path(out) if out is not None else Path("results") / suite.name
    check_output_folder(folder)
    store = RecordStore(folder)  # reads only; the folder is created on open()
    notes = list(plan.warnings) + list(store.dropped)
    store.check_hashes(plan.hashes)
    done = store.done_keys()
    todo = [t for t in plan.tasks if t.key not in done]
    if todo and done:
        notes += machine_notes(folder, store.records)
    check_data(plan, todo)
    if on_start is not None:
        on_start(len(plan.tasks), len(todo), notes)
    ran = copied = 0
    if todo:
        runs, copies = identical_runs(plan, todo, store.records)
        with store:
            store.open()
            for record in _with_copies(EXECUTORS[executor](suite, runs, workers, make_governor), copies, store):
                if store.append(record):
                    ran += 1
                    copied += "copy_of" in record
                if on_record is not None:
                    on_record(record)
    # Plan order (scenario, seed, arm), whatever order the executor delivered them in; records of tasks
    # outside this plan (earlier runs into the same folder) follow in file order.
    order = {t.key: i for i, t in enumerate(plan.tasks)}
    records = sorted(store.records, key=lambda r: order.get(record_key(r), len(order)))
    return RunSummary(folder, plan, records, ran, copied, len(plan.tasks) - len(todo), notes)


MACHINE_KEYS = ("cpu", "torch", "transformers")
"""What decides the bits of a rebuilt base checkpoint besides its config: the CPU kind and the libraries."""


def machine_notes(folder: Path, records: list[dict[str, Any]]) -> list[str]:
    """A note when the stored records were made on another machine kind than this one: a fine-tune's base
    checkpoint, rebuilt here from its seed, may then be another model (measured: llama-tiny's start perplexity
    211.03 on AVX512, 212.23 on AVX2), and the new runs would not pair with the stored ones. The report refuses
    such pairs (:data:`~.stats.START_TOLERANCE`); this says so before hours of runs, not after."""
    here = package_versions()
    mine = tuple(here.get(k, "") for k in MACHINE_KEYS)
    theirs = {tuple(str(r.get("versions", {}).get(k, "")) for k in MACHINE_KEYS) for r in records}
    others = sorted(t for t in theirs - {mine} if any(t))
    if not others:
        return []

    def kind(t: tuple[str, ...]) -> str:
        return ", ".join(f"{k} {v}" for k, v in zip(MACHINE_KEYS, t))

    return [
        f"{folder}: records made with {'; '.join(map(kind, others))}; this machine has {kind(mine)}. "
        "Base checkpoints rebuilt here may be other models: the report will not pair new runs with stored ones "
        "that start elsewhere (rerun the suite whole, or where its records were made)"
    ]


RunIdentity = tuple[str, str, int]
"""``(config hash, split, seed)``: what decides a run's bits (see the module docstring)."""


def record_identity(record: Mapping[str, Any]) -> RunIdentity:
    """A stored or fresh record's :data:`RunIdentity`, from its own fields."""
    return (str(record.get("config_hash")), str(record.get("split")), int(record["seed"]))


def identical_runs(
    plan: Plan, todo: list[Task], stored: list[dict[str, Any]]
) -> tuple[list[Task], dict[RunIdentity, list[Task]]]:
    """The tasks to run (one per identity not yet stored) and, per identity, the tasks that get a copy."""
    split = {s.name: s.split for s in plan.scenarios}

    def identity(key: RecordKey) -> RunIdentity:
        return (plan.hashes[key], split[key[0]], key[2])

    have = {record_identity(r) for r in stored if record_key(r) in plan.hashes}  # stored hash = plan's (checked)
    runs: list[Task] = []
    copies: dict[RunIdentity, list[Task]] = {}
    for task in todo:
        i = identity(task.key)
        if i in have or i in copies:
            copies.setdefault(i, []).append(task)
        else:
            copies[i] = []
            runs.append(task)
    return runs, copies


def _with_copies(
    records: Iterator[dict[str, Any]], copies: dict[RunIdentity, list[Task]], store: RecordStore
) -> Iterator[dict[str, Any]]:
    """The executor's records, each followed by its copies; first the copies of runs stored already."""

    def copies_of(record: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        for task in copies.pop(record_identity(record), []):
            yield copy_record(record, task)

    for record in list(store.records):
        yield from copies_of(record)
    for record in records:
        yield record
        yield from copies_of(record)


def copy_record(record: Mapping[str, Any], task: Task) -> dict[str, Any]:
    """``record`` (an identical run's) under ``task``'s key: scenario and family renamed, in the replay too."""
    out = copy.deepcopy(dict(record))
    out["copy_of"] = record.get("copy_of") or {"scenario": record["scenario"], "arm": record["arm"]}
    out["scenario"], out["family"], out["arm"] = task.scenario, task.scenario.split("/", 1)[0], task.arm.label
    out["replay"]["reset_options"]["scenario"] = task.scenario
    return out


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
