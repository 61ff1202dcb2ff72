"""README tables are regenerated from committed records (``python -m lbw_env.evaluation.readme README.md
docs/results.md --check``).

The first test is the guard on the repository itself: it fails when a marked table in README.md or
docs/results.md (or a committed ``benchmarks/results/<suite>/summary.csv``) differs from what the committed
records render. The others test the machinery on a temporary README and a results folder written by evaluate.py
as documented (4 short runs of the tiny family, as in tests/test_verify.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import evaluate
from lbw_env.evaluation import readme
from lbw_env.evaluation.stats import summarize
from lbw_env.evaluation.tables import full_table, headline_table
from lbw_env.evaluation.verify import read_records

REPO = Path(__file__).resolve().parents[1]
SHORT = ["optim.steps=24", "data.eval_blocks=4", "faults=[{kind: nan_loss, start: 8, length: 3}]"]
TABLES = [
    "t/headline:tiny",
    "t/arms:tiny",
    "t/yardstick:tiny",
    "t/full",
    "t/full:tiny",
    "t/governors",
    "t/aggregate",
    "t/summary",
    "t/not-helping",
]


def test_repository_readme_tables_match_the_committed_records(capsys: pytest.CaptureFixture[str]) -> None:
    status = readme.main([str(REPO / "README.md"), str(REPO / "docs" / "results.md"), "--check"])
    out = capsys.readouterr().out
    assert status == 0, out + f"\nregenerate with: {readme.WRITE_COMMAND}"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, lbw_cache: Path) -> Path:
    """``<tmp>/benchmarks/results/t/``: records, summary.csv and suite.yaml of 4 short runs."""
    root = tmp_path_factory.mktemp("readme")
    suite = root / "t.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "scenarios": ["tiny/ref", "tiny/high_lr"],
                "arms": ["adamw", "lbw_guard"],
                "seeds": 1,
                "eval_every": 1,
                "env": {"trainer_overrides": SHORT},
            }
        )
    )
    out = root / "benchmarks" / "results" / "t"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LBW_DATA_DIR", str(shared_data))
        assert evaluate.main(["--suite", str(suite), "--out", str(out), "--no-plots"]) == 0
    return out


@pytest.fixture
def repo(results: Path, tmp_path: Path) -> Path:
    """A README with every kind of table, beside a copy of the results folder (tests may edit both)."""
    (tmp_path / "benchmarks" / "results" / "t").mkdir(parents=True)
    for name in ("records.jsonl", "summary.csv", "suite.yaml"):
        (tmp_path / "benchmarks" / "results" / "t" / name).write_bytes((results / name).read_bytes())
    blocks = "\n\nProse between tables.\n\n".join(f"<!-- table: {t} -->\nstale\n<!-- /table -->" for t in TABLES)
    (tmp_path / "README.md").write_text(f"# Title\n\nIntro.\n\n{blocks}\n\n## After\n")
    return tmp_path / "README.md"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = readme.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_write_renders_every_table_with_the_report_code_and_check_agrees(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, str(repo), "--check")
    assert status == 1 and all(f"table {t} differs" in out for t in TABLES), out
    assert readme.WRITE_COMMAND in out
    status, out, _ = run(capsys, str(repo), "--write")
    assert status == 0 and f"{len(TABLES)} tables, {len(TABLES)} re-rendered" in out, out
    assert run(capsys, str(repo), "--check")[0] == 0

    text = repo.read_text()
    assert text.startswith("# Title\n\nIntro.\n\n<!-- table: t/headline:tiny -->\n\n| Scenario |")
    assert text.endswith("<!-- /table -->\n\n## After\n") and text.count("Prose between tables.") == len(TABLES) - 1
    assert "stale" not in text
    # The tables are the report's own (same statistics, same rendering as report.md).
    records = read_records(repo.parent / "benchmarks" / "results" / "t")
    cells = summarize(records, "adamw", {"tiny/ref": "tiny/ref", "tiny/high_lr": "tiny/ref"})
    head = headline_table(cells, "tiny", "adamw", "lbw_guard")
    assert head is not None and f"<!-- table: t/headline:tiny -->\n\n{head}\n\n_From " in text
    assert f"<!-- table: t/full -->\n\n{full_table(cells)}\n\n_From " in text
    # Every block names its records, the command that made them, the code version and how to check them.
    commit = str(records[0]["versions"]["git"]).removesuffix("-dirty")[:12]
    line = next(x for x in text.splitlines() if x.startswith("_From "))
    assert "[`benchmarks/results/t/records.jsonl`](benchmarks/results/t/records.jsonl) (4 runs)" in line
    assert "made by `python evaluate.py --suite " in line and "--out " in line and "--no-plots`" in line
    assert (commit in line) if commit else ("lbw-env " in line)
    assert "`python evaluate.py --verify benchmarks/results/t`" in line
    assert text.count(line) == len(TABLES)


def test_check_fails_when_a_table_or_its_records_change(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, str(repo), "--write")[0] == 0
    written = repo.read_text()
    # A hand edit of one number in one table.
    repo.write_text(written.replace("| tiny/high_lr |", "| tiny/high_lr (edited) |", 1))
    status, out, _ = run(capsys, str(repo), "--check")
    assert status == 1 and "table t/headline:tiny differs" in out and "t/full " not in out, out
    assert run(capsys, str(repo), "--write")[0] == 0 and repo.read_text() == written

    # Records that no longer say what the tables and summary.csv were rendered from.
    folder = repo.parent / "benchmarks" / "results" / "t"
    lines = (folder / "records.jsonl").read_text().splitlines()
    record = json.loads(lines[3])
    record["test_ppl"] *= 2
    record["test_loss"] += 0.6931471805599453
    lines[3] = json.dumps(record)
    (folder / "records.jsonl").write_text("\n".join(lines) + "\n")
    status, out, _ = run(capsys, str(repo), "--check")
    assert status == 1 and "table t/headline:tiny differs" in out and "summary.csv: differs" in out, out
    assert "t/governors" not in out  # what the edit does not touch stays current
    status, out, _ = run(capsys, str(repo), "--write")
    assert status == 0 and "1 summary.csv rewritten" in out
    assert run(capsys, str(repo), "--check")[0] == 0


@pytest.mark.parametrize(
    ("what", "text", "names"),
    [
        ("unclosed", "<!-- table: t/full -->\nx\n", ["README.md:1", "never closed"]),
        ("nested", "<!-- table: t/full -->\n<!-- table: t/governors -->\n<!-- /table -->\n", ["README.md:2"]),
        ("close without open", "text\n<!-- /table -->\n", ["README.md:2", "without an opening"]),
        ("malformed", "<!-- table:t/full -->\n<!-- /table -->\n", ["README.md:1", "malformed marker"]),
        ("no suite", "<!-- table: full -->\n<!-- /table -->\n", ["'full'", "<suite>/<table>"]),
        ("unknown table", "<!-- table: t/fancy -->\n<!-- /table -->\n", ["t/fancy", "unknown table 'fancy'"]),
        ("no family", "<!-- table: t/headline -->\n<!-- /table -->\n", ["t/headline", "needs a family"]),
        ("unknown family", "<!-- table: t/arms:nope -->\n<!-- /table -->\n", ["t/arms:nope", "nothing to show"]),
        ("unknown suite", "<!-- table: zz/full -->\n<!-- /table -->\n", ["'zz'", "no ", "records.jsonl"]),
    ],
)
def test_bad_markers_are_one_line_exit_2(
    repo: Path, capsys: pytest.CaptureFixture[str], what: str, text: str, names: list[str]
) -> None:
    repo.write_text(text)
    status, out, err = run(capsys, str(repo), "--write")
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1, (what, out, err)
    assert err.startswith("python -m lbw_env.evaluation.readme: error: "), err
    for name in names:
        assert name in err, (what, err)
    assert repo.read_text() == text  # nothing written


def test_a_readme_without_tables_is_current(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "README.md").write_text("# No tables yet\n")
    status, out, _ = run(capsys, str(tmp_path / "README.md"), "--check")
    assert status == 0 and "0 tables current" in out
    with pytest.raises(SystemExit) as exit_:  # --check or --write is required
        readme.main([str(tmp_path / "README.md")])
    assert exit_.value.code == 2 and "one of the arguments --check --write is required" in capsys.readouterr().err


def test_arms_after_the_family_select_and_order_the_columns(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``arms:tiny@lbw_guard,adamw``: those arms, in that order; an arm without records is a one-line error."""
    repo.write_text("<!-- table: t/arms:tiny@lbw_guard -->\n<!-- /table -->\n")
    assert run(capsys, str(repo), "--write")[0] == 0
    header = next(line for line in repo.read_text().splitlines() if line.startswith("| Scenario"))
    assert "lbw_guard test ppl" in header and "adamw test ppl" not in header
    repo.write_text("<!-- table: t/arms:tiny@lbw_guard,adamw -->\n<!-- /table -->\n")
    assert run(capsys, str(repo), "--write")[0] == 0
    header = next(line for line in repo.read_text().splitlines() if line.startswith("| Scenario"))
    assert header.index("lbw_guard test ppl") < header.index("adamw test ppl")
    repo.write_text("<!-- table: t/arms:tiny@lbw_gaurd -->\n<!-- /table -->\n")
    status, _, err = run(capsys, str(repo), "--write")
    assert status == 2 and "lbw_gaurd have no records" in err and len(err.strip().splitlines()) == 1


def test_several_files_render_from_one_results_root(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """README.md and docs/results.md in one command: the results root is beside the first file, links are
    relative to each file, and bad input in the second file writes neither."""
    docs = repo.parent / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "results.md").write_text("<!-- table: t/ranking:tiny -->\n<!-- /table -->\n")
    status, out, _ = run(capsys, str(repo), str(docs / "results.md"), "--write")
    assert status == 0 and "results.md: 1 tables, 1 re-rendered" in out, out
    rendered = (docs / "results.md").read_text()
    assert "(../benchmarks/results/t/records.jsonl)" in rendered  # the link, from docs/
    assert "`python evaluate.py --verify benchmarks/results/t`" in rendered  # the command, from the root
    assert run(capsys, str(repo), str(docs / "results.md"), "--check")[0] == 0
    before = repo.read_text()
    (docs / "results.md").write_text("<!-- table: t/fancy -->\n<!-- /table -->\n")
    repo.write_text(before.replace("| tiny/high_lr |", "| edited |", 1))
    assert run(capsys, str(repo), str(docs / "results.md"), "--write")[0] == 2
    assert "| edited |" in repo.read_text()  # nothing written
