"""README tables from committed results: ``python -m lbw_env.evaluation.readme README.md docs/results.md --check``.

Why: a number in the README that nothing regenerates is a claim without evidence. Every table in it is rendered
from the records committed under ``benchmarks/results/<suite>/`` by the report's own code (:mod:`.stats`,
:mod:`.tables`), so a reader can rerun the rendering, replay the records (``evaluate.py --verify``), and a test
(``tests/test_readme_tables.py``, which runs ``--check``) fails the moment a table and its records disagree.

A results folder, written by ``python evaluate.py --suite <suite> --out benchmarks/results/<suite> --no-plots``:

* ``records.jsonl`` — one record per run, with the action trace a replay needs;
* ``summary.csv`` — the report's per-cell statistics (``--check`` confirms it matches the records too);
* ``suite.yaml`` — the suite as it ran, its resolved time-to-target references, and the command (written by
  :func:`write_suite_file` on every evaluation; what the tables take their reference and guard arms from).

``report.md`` and ``plots/`` are left out of git (regenerable, and the plots are bulky). In the README a table is
a block between two marker lines, whose content the command replaces::

    <!-- table: <suite>/<table>[:<family>[@<arm>,<arm>...]] -->
    <!-- /table -->

Tables (:data:`TABLES`): ``headline:<family>``, ``arms:<family>``, ``ranking:<family>``, ``yardstick:<family>``,
``ratio:<family>`` (each arm over tuned AdamW, paired by seed), ``full`` or ``full:<family>``, ``governors``,
``aggregate``, and the bullet lists ``summary`` and ``not-helping``; ``@arm,arm`` after a family shows only those
arms, in that order (the README shows a few; ``docs/results.md``, which the same command renders from the same
records, ranks every arm). Each block ends with a line naming the records, the command that made them, and the
code version (the git commit the records carry, the lbw-env version, and a hash of the records' config hashes).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import math
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ..cache import atomic_write_text, atomic_write_yaml, stable_hash
from ..config import ConfigError, read_yaml, to_dict
from ..errors import error_line
from .intervals import N_RESAMPLES
from .records import RECORDS_FILE, get_path
from .stats import Cell, Tuned, aggregate, summarize, tuned_references
from .suite import SuiteConfig
from .tables import (
    aggregate_table,
    arms_table,
    full_table,
    governors_table,
    guard_findings,
    headline_table,
    ranking_table,
    ratio_table,
    summary_csv,
    yardstick_table,
)
from .verify import read_records

SUITE_FILE = "suite.yaml"
SUMMARY_FILE = "summary.csv"
RESULTS_DIR = Path("benchmarks") / "results"
"""Committed results, relative to the README's folder (the repository root)."""
WRITE_COMMAND = "python -m lbw_env.evaluation.readme README.md docs/results.md --write"

OPEN = re.compile(r"^<!-- table: (?P<name>\S+) -->\s*$")
CLOSE = re.compile(r"^<!-- /table -->\s*$")


def write_suite_file(
    folder: str | os.PathLike[str], suite: SuiteConfig, reference: Mapping[str, str], argv: Sequence[str]
) -> Path:
    """``<folder>/suite.yaml``: the command, the resolved time-to-target references and the suite as it ran,
    so that the folder alone says how its records were made and how the report read them."""
    path = Path(folder) / SUITE_FILE
    data = {"command": shlex.join(["python", "evaluate.py", *argv]), "reference": dict(reference)}
    atomic_write_yaml(
        path, {**data, "suite": to_dict(suite)}, "# Written by evaluate.py: how records.jsonl was made.\n"
    )
    return path


# ----------------------------------------------------------------------------------------------------------
# One results folder
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Results:
    """A committed results folder and what the report code computes from it (once per folder)."""

    name: str
    folder: Path
    records: list[dict[str, Any]]
    command: str
    reference_arm: str
    guard_arm: str
    reference: dict[str, str]

    @functools.cached_property
    def stats(self) -> tuple[list[Cell], dict[str, Tuned], dict[str, Any]]:
        """Cells, tuned AdamW references and aggregates, with the arguments :func:`~.report.write_report` uses."""
        cells = summarize(self.records, self.reference_arm, self.reference, n_resamples=N_RESAMPLES, seed=0)
        tuned = tuned_references(self.records, self.reference_arm, self.reference)
        return cells, tuned, aggregate(self.records, tuned, seed=0)


def load_results(root: Path, name: str) -> Results:
    """The results folder ``root/name``: its records and ``suite.yaml`` (defaults where that is missing)."""
    folder = root / name
    if not (folder / RECORDS_FILE).is_file():
        raise ConfigError(f"results {name!r}: no {folder / RECORDS_FILE}; run evaluate.py --out {folder}")
    records = read_records(folder)
    meta = read_yaml(folder / SUITE_FILE) if (folder / SUITE_FILE).is_file() else {}
    suite = _mapping_in(folder, "suite", meta.get("suite") or {})
    reference = _mapping_in(folder, "reference", meta.get("reference", suite.get("reference")) or {})
    return Results(
        name,
        folder,
        records,
        str(meta.get("command") or "(unknown: no suite.yaml)"),
        str(suite.get("reference_arm") or SuiteConfig.reference_arm),
        str(suite.get("guard_arm") or SuiteConfig.guard_arm),
        {str(k): str(v) for k, v in reference.items()},
    )


def _mapping_in(folder: Path, key: str, value: Any) -> dict[str, Any]:
    """A section of a results folder's suite.yaml: a malformed file is bad input (exit 2), not stale tables."""
    if not isinstance(value, dict):
        raise ConfigError(f"{folder / SUITE_FILE}: {key}: expected a mapping, got {value!r}")
    return value


def _family_table(fn: Callable[..., str | None], with_arms: bool) -> Callable[[Results, str], str | None]:
    def render(res: Results, family: str) -> str | None:
        family, arms = select_arms(res, family)
        cells = res.stats[0]
        if arms:  # these arms, in this order (a suite with twenty arms is unreadable in one README table)
            cells = sorted((c for c in cells if c.arm in arms), key=lambda c: arms.index(c.arm))
        return fn(cells, family, res.reference_arm, res.guard_arm) if with_arms else fn(cells, family)

    return render


def select_arms(res: Results, family: str) -> tuple[str, list[str]]:
    """``family@arm,arm,...`` -> the family and the arms to show ([]: all); an arm the records lack is a
    ConfigError naming it (a typo must not silently drop a column)."""
    family, _, wanted = family.partition("@")
    arms = [a for a in wanted.split(",") if a]
    known = {c.arm for c in res.stats[0]}
    missing = [a for a in arms if a not in known]
    if missing:
        raise ConfigError(
            f"table {res.name}: arms {', '.join(missing)} have no records; expected some of {', '.join(sorted(known))}"
        )
    return family, arms


def _full(res: Results, family: str) -> str | None:
    cells = [c for c in res.stats[0] if not family or c.family == family]
    return full_table(cells) if cells else None


def _findings(which: int) -> Callable[[Results, str], str | None]:
    def render(res: Results, family: str) -> str | None:
        lines = guard_findings(res.stats[0], res.reference_arm, res.guard_arm)[which]
        return "\n".join(lines) if lines else ("- None in this suite." if which == 1 else None)

    return render


TABLES: dict[str, tuple[bool | None, Callable[[Results, str], str | None]]] = {
    "headline": (True, _family_table(headline_table, True)),
    "arms": (True, _family_table(arms_table, False)),
    "ranking": (True, _family_table(ranking_table, False)),
    "yardstick": (True, _family_table(yardstick_table, True)),
    "ratio": (True, _family_table(ratio_table, False)),
    "full": (None, _full),
    "governors": (False, lambda res, _: governors_table(res.stats[0])),
    "aggregate": (False, lambda res, _: aggregate_table(res.stats[2])),
    "summary": (False, _findings(0)),
    "not-helping": (False, _findings(1)),
}
"""Table name -> (family: True required, None optional, False none; renderer)."""


def render_table(res: Results, table: str) -> str:
    """One table (``headline:lr_stress``, ``full``, ``ranking:tiny@adamw,lbw_guard`` ...) of a results folder, as
    the report renders it; ``@arm,arm`` after a family shows only those arms, in that order."""
    kind, _, family = table.partition(":")
    if kind not in TABLES:
        raise ConfigError(f"table {res.name}/{table}: unknown table {kind!r}; expected one of {', '.join(TABLES)}")
    needs, render = TABLES[kind]
    if needs is True and not family:
        raise ConfigError(f"table {res.name}/{table}: {kind} needs a family ({kind}:<family>)")
    if needs is False and family:
        raise ConfigError(f"table {res.name}/{table}: {kind} takes no family")
    out = render(res, family)
    if not out:
        families = sorted({c.family for c in res.stats[0]})
        raise ConfigError(f"table {res.name}/{table}: nothing to show (families of the records: {families})")
    return out


def provenance(res: Results, base: Path, home: Path | None = None) -> str:
    """The line under a table: which records, the command that made them, the code version, how to check. The
    link is relative to ``base`` (the Markdown file's folder), the commands to ``home`` (where they are run: the
    first file's folder, the repository root; default ``base``)."""
    rel = Path(os.path.relpath(res.folder, base)).as_posix()
    here = Path(os.path.relpath(res.folder, base if home is None else home)).as_posix()
    versions = sorted({str(get_path(r, "versions", "lbw_env", default="?")) for r in res.records})
    commits = sorted({str(get_path(r, "versions", "git", default="")) for r in res.records} - {""})
    code = f"lbw-env {', '.join(versions)}"
    if commits:
        dirty = any(c.endswith("-dirty") for c in commits)
        shown = sorted({c.removesuffix("-dirty")[:12] for c in commits})
        code += f", commit {', '.join(shown)}" + (" (with uncommitted changes)" if dirty else "")
    configs = stable_hash(sorted({str(r.get("config_hash", "")) for r in res.records}), length=12)
    copies = sum("copy_of" in r for r in res.records)
    runs = f"{len(res.records)} runs" + (f", {copies} of them copies of an identical run" if copies else "")
    return (
        f"_From [`{rel}/{RECORDS_FILE}`]({rel}/{RECORDS_FILE}) ({runs}), made by "
        f"`{res.command}` with {code}; config hash {configs}. Replay: `python evaluate.py --verify {here}`; "
        f"re-render: `{WRITE_COMMAND}`._"
    )


# ----------------------------------------------------------------------------------------------------------
# The README
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Block:
    """A marked table in a README: its name and the lines (0-based, exclusive) of its content."""

    name: str
    start: int
    end: int


def find_blocks(lines: Sequence[str], where: str = "README") -> list[Block]:
    """The marked blocks, in order; a marker without its pair, or a block inside a block, is bad input."""
    blocks, open_at = [], None
    for i, line in enumerate(lines):
        if m := OPEN.match(line):
            if open_at is not None:
                raise ConfigError(f"{where}:{i + 1}: a table marker inside the block opened at line {open_at + 1}")
            open_at, name = i, m["name"]
        elif CLOSE.match(line):
            if open_at is None:
                raise ConfigError(f"{where}:{i + 1}: '<!-- /table -->' without an opening '<!-- table: ... -->'")
            blocks.append(Block(name, open_at + 1, i))
            open_at = None
        elif line.lstrip().startswith("<!-- table") or line.lstrip().startswith("<!-- /table"):
            raise ConfigError(f"{where}:{i + 1}: malformed marker {line.strip()!r}; expected '<!-- table: x/y -->'")
    if open_at is not None:
        raise ConfigError(f"{where}:{open_at + 1}: block {lines[open_at].strip()!r} is never closed (<!-- /table -->)")
    return blocks


def render_readme(
    text: str, root: Path, base: Path, where: str = "README", home: Path | None = None
) -> tuple[str, list[str], list[str]]:
    """``(new text, names of all blocks, names of the blocks that changed)``; results from ``root``, links
    relative to ``base`` (the file's folder), commands relative to ``home`` (default ``base``)."""
    lines = text.split("\n")
    blocks = find_blocks(lines, where)
    cache: dict[str, Results] = {}
    out, pos, changed = [], 0, []
    for b in blocks:
        suite, sep, table = b.name.partition("/")
        if not sep or not suite or not table:
            raise ConfigError(f"{where}:{b.start}: table {b.name!r}: expected <suite>/<table>[:<family>]")
        if suite not in cache:
            cache[suite] = load_results(root, suite)
        res = cache[suite]
        content = ["", render_table(res, table), "", provenance(res, base, home), ""]
        new = "\n".join(content).split("\n")
        if lines[b.start : b.end] != new:
            changed.append(b.name)
        out += lines[pos : b.start] + new
        pos = b.end
    out += lines[pos:]
    return "\n".join(out), [b.name for b in blocks], changed


CSV_REL_TOL = 1e-9
"""Numbers of a committed summary.csv agree with the rendered ones to this relative tolerance. Not bit for bit:
numpy's exp and log are vectorised differently per CPU kind (AVX512 vs AVX2) and differ in the last bit, so the
same records render ...212004 on one machine and ...212001 on another; a changed record moves far more."""


def _same_csv(old: str, new: str) -> bool:
    """The same table: equal text, or the same cells where numbers agree to :data:`CSV_REL_TOL` (NaN to NaN)."""
    if old == new:
        return True
    a, b = list(csv.reader(io.StringIO(old))), list(csv.reader(io.StringIO(new)))
    if [len(r) for r in a] != [len(r) for r in b]:
        return False

    def same(x: str, y: str) -> bool:
        if x == y:
            return True
        try:
            fx, fy = float(x), float(y)
        except ValueError:
            return False
        return (math.isnan(fx) and math.isnan(fy)) or math.isclose(fx, fy, rel_tol=CSV_REL_TOL)

    return all(same(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def stale_summaries(root: Path) -> list[Path]:
    """Committed ``summary.csv`` files that differ from what their records render (all folders under ``root``)."""
    stale = []
    for records in sorted(root.glob(f"*/{RECORDS_FILE}")) if root.is_dir() else []:
        res, path = load_results(root, records.parent.name), records.parent / SUMMARY_FILE
        if not path.is_file() or not _same_csv(path.read_text(encoding="utf-8"), summary_csv(res.stats[0])):
            stale.append(path)
    return stale


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 every table current (``--check``) or written (``--write``), 1 stale, 2 bad input."""
    p = _Parser(prog="python -m lbw_env.evaluation.readme", description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="*", default=["README.md"], help="the Markdown files (default README.md)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 if a table or summary.csv is out of date")
    mode.add_argument("--write", action="store_true", help="re-render every table (and summary.csv) in place")
    p.add_argument("--results", help=f"results root (default: {RESULTS_DIR} beside the first file)")
    args = p.parse_args(argv)
    files = [Path(f) for f in args.files]
    root = Path(args.results) if args.results else files[0].parent / RESULTS_DIR
    changed: list[str] = []
    rendered: list[tuple[Path, str, str, int, int]] = []  # file, old text, new text, tables, re-rendered
    try:
        for file in files:  # every file renders before any is written: bad input in one writes none
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(f"{file}: expected a UTF-8 Markdown file ({e.reason} at byte {e.start})") from None
            new, names, stale_tables = render_readme(text, root, file.parent, str(file), files[0].parent)
            changed += [f"{file}: table {name}" for name in stale_tables]
            rendered.append((file, text, new, len(names), len(stale_tables)))
        stale = stale_summaries(root)
        if args.write:
            for file, text, new, n_tables, n_stale in rendered:
                if new != text:
                    atomic_write_text(file, new)
                print(f"{file}: {n_tables} tables, {n_stale} re-rendered")
            for path in stale:
                atomic_write_text(path, summary_csv(load_results(root, path.parent.name).stats[0]))
    except (ConfigError, OSError, UnicodeDecodeError) as e:
        print(error_line(p.prog, e), file=sys.stderr)
        return 2
    if args.write:
        print(f"{root}: {len(stale)} summary.csv rewritten")
        return 0
    for name in changed:
        print(f"{name} differs from what its records render")
    for path in stale:
        print(f"{path}: differs from what its records render")
    if changed or stale:
        print(f"to regenerate: {WRITE_COMMAND}")
        return 1
    tables = sum(r[3] for r in rendered)
    print(f"{', '.join(map(str, files))}: {tables} tables current; {root}: summary files current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
