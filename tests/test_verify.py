"""Replay-verified records: a record's action trace replays, in a fresh env and without the governor, to the same
numbers bit for bit; ``evaluate.py --verify`` says OK for honest records and MISMATCH for edited ones.

The suite is the tiny family cut to 24 steps (3 decisions) with a NaN burst at step 8, as in
tests/test_evaluation.py: two scenarios (so the scenario pool has two entries, which the run seed depends on) x
adamw and the guard x one seed, a few seconds in all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import evaluate
from lbw_env.evaluation.episode import ActionTrace
from lbw_env.evaluation.verify import IDENTITY_KEYS, compare, read_records
from lbw_env.scenarios import evaluation_seed

REPO = Path(__file__).resolve().parents[1]
SHORT = ["optim.steps=24", "data.eval_blocks=4", "faults=[{kind: nan_loss, start: 8, length: 3}]"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, lbw_cache: Path) -> Iterator[Path]:
    """A results folder of 4 short runs, written by evaluate.py as a user would."""
    root = tmp_path_factory.mktemp("verify")
    suite = root / "suite.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "scenarios": ["tiny/ref", "tiny/high_lr"],
                "arms": ["adamw", "lbw_guard"],
                "seeds": 1,
                "eval_every": 1,
                "env": {"trainer_overrides": SHORT},
            }
        )
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LBW_DATA_DIR", str(shared_data))
        assert evaluate.main(["--suite", str(suite), "--out", str(root / "t"), "--no-plots"]) == 0
        yield root / "t"


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_lines(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
    return path


def verify(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = evaluate.main(["--verify", *argv])
    out, err = capsys.readouterr()
    return status, out, err


# ----------------------------------------------------------------------------------------------------------
# The trace
# ----------------------------------------------------------------------------------------------------------


def test_records_carry_a_compact_exact_action_trace(results: Path) -> None:
    records = read_records(results)
    assert len(records) == 4
    for r in records:
        replay = r["replay"]
        assert replay["reset_seed"] == evaluation_seed(r["split"], r["seed"])
        assert replay["reset_options"] == {"scenario": r["scenario"]}
        assert replay["pool_size"] == 2
        actions = ActionTrace.decode(replay["actions"])
        assert len(actions) == r["decisions"] == 3
        assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (3,) for a in actions)
        assert len(json.dumps(replay)) < 300  # 3 decisions: a few dozen bytes of actions
    # 200 decisions of three float32 numbers that never repeat (the worst case) stay a few kB.
    trace = ActionTrace()
    for a in np.random.default_rng(0).uniform(-1, 1, (200, 3)).astype(np.float32):
        trace.add(a)
    assert len(json.dumps(trace.to_json())) < 3500


def test_action_trace_round_trips_what_the_env_received() -> None:
    """Bytes, not decimals: float32 and float64 exactly, MultiDiscrete bins as ints, lists stay lists (the
    envelope refuses an integer ndarray in continuous mode but takes a list of ints), odd numbers as float64."""
    from decimal import Decimal

    f32 = np.array([np.nextafter(np.float32(0.1), np.float32(1)), -1.0, 3e-39], dtype=np.float32)
    given: list[Any] = [
        f32,
        f32 * 2,
        np.array([0.1, -0.7, 1.0]),
        np.array([3, 0, 1], dtype=np.int64),
        [0, 1, 1],
        [0.25, 1.0, -1.0],
        [Decimal("0.5"), 1, -1],
        np.array([[0.5, 1.0, -1.0]], dtype=np.float32),
    ]
    trace = ActionTrace()
    for a in given:
        trace.add(a)
    segments = json.loads(json.dumps(trace.to_json()))
    back = ActionTrace.decode(segments)
    assert len(back) == len(given) and len(segments) == 6  # runs of one form, dtype and shape share a segment
    for a, b in zip(given, back):
        if isinstance(a, np.ndarray):
            assert isinstance(b, np.ndarray) and b.dtype == a.dtype and b.shape == a.shape
            assert b.tobytes() == a.tobytes()
        else:
            assert isinstance(b, list) and np.array_equal(np.asarray(b, dtype=np.float64), np.asarray(a, float))
    assert type(back[4][0]) is int and back[6] == [0.5, 1.0, -1.0]
    bad = [
        {"form": "ndarray", "dtype": "<f4", "shape": [2, 3], "data": "not base64!"},
        {"form": "ndarray", "dtype": "<U4", "shape": [1, 3], "data": segments[0]["data"]},
        {"form": "ndarray", "dtype": "<f4", "shape": [10**9, 3], "data": segments[0]["data"]},
        {"form": "pickle", "dtype": "<f4", "shape": [2, 3], "data": segments[0]["data"]},
        {"form": "ndarray", "dtype": "<f4", "shape": [5, 3], "data": segments[0]["data"]},  # too few bytes
    ]
    for seg in bad:
        with pytest.raises(ValueError, match="segment 0"):
            ActionTrace.decode([seg])


# ----------------------------------------------------------------------------------------------------------
# --verify
# ----------------------------------------------------------------------------------------------------------


def test_honest_records_verify_in_a_fresh_process(results: Path, shared_data: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", LBW_DATA_DIR=str(shared_data))
    proc = subprocess.run(
        [sys.executable, str(REPO / "evaluate.py"), "--verify", str(results)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines[:4]] == ["OK"] * 4, proc.stdout
    assert "tiny/high_lr lbw_guard seed 0" in proc.stdout
    assert lines[-1].startswith("verified 4 records") and "4 OK, 0 MISMATCH" in lines[-1]


def _bump_last_digit(x: float) -> float:
    text = repr(x)
    for step in range(1, 10):
        new = float(text[:-1] + str((int(text[-1]) + step) % 10))
        if new != x:
            return new
    raise AssertionError(text)


def test_an_edited_number_does_not_verify(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = lines_of(results / "records.jsonl")
    edited = dict(records[1], test_ppl=_bump_last_digit(records[1]["test_ppl"]))
    path = write_lines(tmp_path / "edited" / "records.jsonl", [edited, *records[2:]])
    status, out, _ = verify(capsys, str(path), "--limit", "1")
    assert status == 1, out
    first = out.splitlines()[0]
    assert first.startswith("MISMATCH tiny/ref lbw_guard seed 0: test_ppl (recorded ")
    assert f"replayed {json.dumps(records[1]['test_ppl'])}" in first and "1 OK" not in out
    # --keys narrows what is compared: the edited field is not among them.
    status, out, _ = verify(capsys, str(path), "--limit", "1", "--keys", "final_valid_ppl", "curves.valid")
    assert status == 0 and out.startswith("OK tiny/ref lbw_guard seed 0"), out


def test_an_edited_action_does_not_verify(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One LR move changed (the record's numbers untouched): the replay follows the edited action, so the run's
    numbers no longer match what the record claims. Identity fields are never the reason."""
    records = lines_of(results / "records.jsonl")
    record = records[2]  # adamw on tiny/high_lr: an LR 10x too high, held for all 3 decisions
    actions = ActionTrace.decode(record["replay"]["actions"])
    trace = ActionTrace()
    for i, a in enumerate(actions):
        trace.add(np.array([-1.0, *a[1:]], dtype=np.float32) if i == 1 else a)  # cut the LR at decision 2
    edited = json.loads(json.dumps(record))
    edited["replay"]["actions"] = trace.to_json()
    path = write_lines(tmp_path / "edited.jsonl", [edited])
    status, out, _ = verify(capsys, str(path))
    assert status == 1, out
    line = out.splitlines()[0]
    assert line.startswith("MISMATCH tiny/high_lr adamw seed 0: ") and "final_valid_loss (recorded" in line, line
    fields = [reason.split(" ")[0] for reason in line.split(": ", 1)[1].split("; ")]
    assert not any(f.split(".")[0] in IDENTITY_KEYS for f in fields), fields


def test_compare_reports_value_and_type_differences() -> None:
    stored = {"a": 1.5, "b": [1, 2, 3], "c": {"d": "nan"}, "n": 3, "timing": {"wall_seconds": 1.0}}
    fresh = {"a": 1.5, "b": [1, 2, 4], "c": {"d": "inf"}, "n": 3.0, "timing": {"wall_seconds": 2.0}}
    problems = compare(stored, fresh)
    assert problems == [
        "b[2] (recorded 3, replayed 4)",
        "c.d (recorded 'nan', replayed 'inf')",
        "n (recorded 3, replayed 3.0)",
    ]
    assert compare(stored, {"a": 1.5}, ["a"]) == []
    assert compare(stored, {}, ["a"]) == ["a (recorded 1.5, replayed nothing)"]


@pytest.mark.parametrize(
    ("what", "argv", "names"),
    [
        ("missing file", ["{tmp}/nowhere.jsonl"], ["nowhere.jsonl", "cannot read"]),
        ("not JSON", ["{tmp}/garbage.jsonl"], ["garbage.jsonl:1", "not a valid record"]),
        ("no trace", ["{tmp}/old.jsonl"], ["tiny/ref adamw seed 0", "no action trace"]),
        # Malformed fields the replay reads: bad input, not a mismatch (exit 1) after a failed replay.
        ("text reset seed", ["{tmp}/seed.jsonl"], ["replay.reset_seed", "'abc'"]),
        ("unknown device", ["{tmp}/device.jsonl"], ["model.device", "bogus"]),
        ("unknown key", ["{results}", "--keys", "test_pppl"], ["--keys test_pppl", "not a field"]),
        ("bad limit", ["{results}", "--limit", "0"], ["--limit", ">= 1"]),
        ("with a suite", ["{results}", "--suite", "smoke"], ["--verify", "no --suite"]),
    ],
)
def test_bad_input_is_one_line_exit_2(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str, argv: list[str], names: list[str]
) -> None:
    (tmp_path / "garbage.jsonl").write_text("{not json\n")
    old = lines_of(results / "records.jsonl")[0]
    del old["replay"]
    write_lines(tmp_path / "old.jsonl", [old])
    seed = lines_of(results / "records.jsonl")[0]
    seed["replay"]["reset_seed"] = "abc"
    write_lines(tmp_path / "seed.jsonl", [seed])
    device = lines_of(results / "records.jsonl")[0]
    device["trainer"]["model"]["device"] = "bogus"
    write_lines(tmp_path / "device.jsonl", [device])
    status, out, err = verify(capsys, *(a.format(tmp=tmp_path, results=results) for a in argv))
    assert status == 2, (what, out, err)
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("evaluate.py: error: "), err
    for name in names:
        assert name in err, (what, err)
    assert evaluate.main(["--limit", "2"]) == 2
    assert "go with --verify" in capsys.readouterr().err


def test_trust_pickle_picks_the_trusted_factory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--trust-pickle`` hands run_suite ``policies.make_trusted_governor``; without it, ``make_governor``."""
    import lbw_env.evaluation
    import policies

    seen: list[Any] = []

    def fake_run_suite(suite: Any, out: Any, *, make_governor: Any, **kw: Any) -> Any:
        seen.append(make_governor)
        raise KeyboardInterrupt  # stop before anything runs

    monkeypatch.setattr(lbw_env.evaluation, "run_suite", fake_run_suite)
    for flag, factory in (([], policies.make_governor), (["--trust-pickle"], policies.make_trusted_governor)):
        assert evaluate.main(["--suite", "smoke", "--out", str(tmp_path / "out"), *flag]) == 130
        assert seen.pop() is factory
    assert "DANGEROUS" in evaluate.build_parser().format_help()
