"""scripts/compare_records.py: the check that a refactoring left evaluation records unchanged.

It must flag every real difference (values, types, missing keys or records) and nothing else (file order,
key order, ignored keys), because "identical apart from timing/host" is what it is used to prove.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "compare_records.py"


def record(seed: int, **changes: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "scenario": "tiny/ref",
        "arm": "adamw",
        "seed": seed,
        "final_valid_ppl": 123.5,
        "env": {"decision_interval": 8, "window": 4},
        "curves": {"valid": {"step": [0, 16], "ppl": ["inf", 123.5]}},
        "timing": {"wall_seconds": 1.0 + seed},
        "host": {"pid": 100 + seed},
    }
    r.update(changes)
    return r


def write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def compare(a: Path, b: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(a), str(b), *extra], capture_output=True, text=True)


def test_same_records_in_another_order_with_other_timing_are_identical(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", [record(0), record(1)])
    reordered = record(1, timing={"wall_seconds": 9.0}, host={"pid": 1})
    reordered["env"] = {"window": 4, "decision_interval": 8}  # field order changed: same dict
    b = write(tmp_path / "b.jsonl", [reordered, record(0)])
    done = compare(a, b, "--ignore", "timing", "host")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "identical: 2 records" in done.stdout
    strict = compare(a, b)  # nothing ignored: the times differ
    assert strict.returncode == 1 and "timing.wall_seconds" in strict.stdout and "host.pid" in strict.stdout


def test_every_kind_of_difference_is_reported(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", [record(0), record(1), record(2)])
    changed = record(0, final_valid_ppl=123.50001)
    changed["curves"]["valid"]["ppl"] = ["nan", 123.5]
    retyped = record(1, env={"decision_interval": 8.0, "window": 4, "extra": 1})
    b = write(tmp_path / "b.jsonl", [changed, retyped, record(3)])
    done = compare(a, b, "--ignore", "timing", "host")
    assert done.returncode == 1
    out = done.stdout
    assert "final_valid_ppl: 123.5 != 123.50001" in out
    assert 'curves.valid.ppl[0]: "inf" != "nan"' in out
    assert "env.decision_interval: 8 != 8.0" in out  # an int turned float is a change
    assert "env.extra: only in B" in out
    assert "('tiny/ref', 'adamw', 2): record only in A" in out
    assert "('tiny/ref', 'adamw', 3): record only in B" in out
    assert "curves, env, final_valid_ppl" in done.stderr


def test_dotted_ignore_and_torn_tail(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", [record(0)])
    b = write(tmp_path / "b.jsonl", [record(0, env={"decision_interval": 8, "window": 5})])
    with open(b, "a") as f:
        f.write('{"scenario": "tiny/ref", "arm": "x", "se')  # an interrupted write is not a record
    assert compare(a, b, "--ignore", "timing", "host", "env.window").returncode == 0
    assert compare(a, b, "--ignore", "timing", "host").returncode == 1


def test_a_missing_or_broken_file_is_one_line(tmp_path: Path) -> None:
    good = write(tmp_path / "a.jsonl", [record(0)])
    (tmp_path / "bad.jsonl").write_text('{"scenario": "tiny/ref"}\n')
    for other in (tmp_path / "nowhere.jsonl", tmp_path / "bad.jsonl"):
        done = compare(good, other)
        assert done.returncode == 2 and done.stderr.startswith("compare_records.py: error: ")
        assert done.stderr.count("\n") == 1, done.stderr
