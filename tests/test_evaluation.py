"""Evaluation runner: suite validation, records, resume after SIGKILL, executors that agree.

The runs use the tiny family cut to 24 steps (3 decisions) with a NaN burst at step 8, so that skips,
rollbacks and the guard's per-episode memory are exercised in well under a second per run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import evaluate
from lbw_env.config import ConfigError
from lbw_env.evaluation import Arm, RecordStore, load_suite, prepare, record_key, run_suite, strip_volatile
from lbw_env.evaluation.episode import (
    MAX_CURVE_POINTS,
    RECORDS_DIR,
    downsample_intervals,
    git_commit,
    thin_indices,
)
from lbw_env.plant.records import StepRecord
from policies import make_governor

REPO = Path(__file__).resolve().parents[1]

SHORT = ["optim.steps=24", "data.eval_blocks=4", "faults=[{kind: nan_loss, start: 8, length: 3}]"]
"""Trainer overrides for every run in these tests: 3 decisions, cheap evaluations, a NaN burst."""


def small_suite(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "test",
        "scenarios": ["tiny/ref", "tiny/high_lr"],
        "arms": ["adamw", "lbw_guard"],
        "seeds": 2,
        "eval_every": 1,
        "env": {"trainer_overrides": list(SHORT)},
    }
    data.update(changes)
    return data


@pytest.fixture
def eval_env(shared_data: Path, lbw_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenarios read ``$LBW_DATA_DIR``; the session cache (``$LBW_CACHE``) holds tokenizer and tokens."""
    monkeypatch.setenv("LBW_DATA_DIR", str(shared_data))


def by_key(records: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {record_key(r): strip_volatile(r) for r in records}


# ----------------------------------------------------------------------------------------------------------
# Suite configuration and validation (no runs)
# ----------------------------------------------------------------------------------------------------------


def test_suite_yaml_bare_arms_overrides_and_governors(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "scenarios": ["tiny/ref"],
                "arms": [
                    "lbw_guard",
                    {"label": "clip", "governor": "adamw", "trainer_overrides": ["optim.clip_norm=1.0"]},
                ],
            }
        )
    )
    suite = load_suite(path, ["seeds=4", "env.decision_interval=4"])
    assert suite.name == "mine"  # the file's stem
    assert [(a.label, a.governor) for a in suite.arms] == [("lbw_guard", "lbw_guard"), ("clip", "adamw")]
    assert suite.seeds == 4 and suite.env_config().decision_interval == 4
    replaced = load_suite(path, governors=["adamw", "skip_step:4"])
    assert [a.label for a in replaced.arms] == ["adamw", "skip_step:4"]
    plan = prepare(suite, make_governor)
    assert [t.key for t in plan.tasks[:2]] == [("tiny/ref", "lbw_guard", 0), ("tiny/ref", "clip", 0)]
    assert plan.reference == {"tiny/ref": "tiny/ref"}
    assert any("reference arm 'adamw'" in w for w in plan.warnings)
    # Every shipped suite is valid as it stands.
    for name in ("smoke", "lr_stress", "model_size", "clipping", "runtime_faults", "full"):
        assert prepare(load_suite(name), make_governor).tasks


def _bad_cases(tmp_path: Path) -> list[tuple[str, Any, str]]:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nscenarios: [tiny/ref\n")
    missing_model = tmp_path / "nowhere" / "best_model.zip"
    return [
        ("unknown governor", small_suite(arms=["adamw", "no_such_governor"]), "no_such_governor"),
        ("missing ppo file", small_suite(arms=[f"ppo:{missing_model}"]), str(missing_model)),
        ("unknown key", small_suite(seedz=3), "seedz"),
        ("wrong type", small_suite(seeds="three"), "seeds"),
        ("bad arm key", small_suite(arms=[{"label": "x", "governer": "adamw"}]), "governer"),
        ("unknown scenario", small_suite(scenarios=["tiny/nope"]), "tiny/nope"),
        ("unknown family", small_suite(scenarios=["no_family"]), "no_family"),
        (
            "bad trainer override",
            small_suite(arms=[{"governor": "adamw", "trainer_overrides": ["optim.lrr=1"]}]),
            "lrr",
        ),
        ("bad env key", small_suite(env={"decision_intervall": 4}), "decision_intervall"),
        ("unknown reference", small_suite(reference={"tiny": "tiny/nope"}), "tiny/nope"),
        ("invalid yaml", broken, str(broken)),
    ]


def test_bad_input_fails_before_any_run(tmp_path: Path) -> None:
    for what, spec, name in _bad_cases(tmp_path):
        out = tmp_path / "out" / what.replace(" ", "_")
        with pytest.raises(ConfigError) as err:
            run_suite(load_suite(spec), out, make_governor=make_governor)
        assert name in str(err.value), (what, str(err.value))
        assert not out.exists(), f"{what}: the output folder was created before validation failed"


def test_cli_reports_bad_input_without_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("evaluate_cli", REPO / "evaluate.py")
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small_suite()))
    out = tmp_path / "out"
    assert cli.main(["--suite", str(path), "--out", str(out), "--governors", "adamw", "bogus_rule"]) == 2
    assert "bogus_rule" in capsys.readouterr().err
    assert cli.main(["--suite", str(path), "--out", str(out), "scenarios=[tiny/missing]"]) == 2
    assert "tiny/missing" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------
# Record store
# ----------------------------------------------------------------------------------------------------------


def test_record_store_appends_whole_lines_and_drops_a_torn_tail(tmp_path: Path) -> None:
    def rec(seed: int) -> dict[str, Any]:
        return {
            "scenario": "a/b",
            "arm": "x",
            "seed": seed,
            "initial_test_ppl": 100.0,
            "test_ppl": math.inf,
            "final_valid_ppl": math.inf,
            "curve": [1.0, math.nan],
        }

    with RecordStore(tmp_path) as store:
        assert store.append(rec(0)) and store.append(rec(1))
        assert not store.append(rec(1)), "a finished key must never be written twice"
    path = tmp_path / "records.jsonl"
    lines = path.read_bytes().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["final_valid_ppl"] == "inf"  # strict JSON, no Infinity
    with open(path, "ab") as f:
        f.write(lines[1][:25])  # what a write torn by a crash would leave

    store = RecordStore(tmp_path)
    assert store.done_keys() == {("a/b", "x", 0), ("a/b", "x", 1)}
    assert any("partial last line" in d for d in store.dropped)
    with store:
        store.open()  # drops the torn tail before appending
        assert store.append(rec(2))
    data = path.read_bytes()
    assert data.endswith(b"\n")
    assert [json.loads(line)["seed"] for line in data.splitlines()] == [0, 1, 2]
    assert RecordStore(tmp_path).dropped == []


def test_record_store_is_exclusive(tmp_path: Path) -> None:
    with RecordStore(tmp_path) as a:
        a.open()
        with pytest.raises(ConfigError, match="another evaluation"):
            RecordStore(tmp_path).open()


def test_code_version_is_dirty_for_code_changes_not_for_appended_records(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    records = tmp_path / RECORDS_DIR / "suite" / "records.jsonl"
    records.parent.mkdir(parents=True)
    for path in (tmp_path / "pyproject.toml", tmp_path / "code.py", records):
        path.write_text("x\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "files")
    clean = git_commit(tmp_path)
    assert len(clean) == 40
    records.write_text("x\n{}\n")  # a suite resumed into its committed folder appends to it
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("y\n")
    assert git_commit(tmp_path) == clean + "-dirty"


def test_curves_are_downsampled() -> None:
    def step_record(t: int) -> StepRecord:
        return StepRecord(
            step=t, loss=math.nan if t == 5 else 2.0, grad_norm=1.0, update_ratio=0.0, param_norm=1.0, lr=1e-3,
            lr_scale=0.5, skipped=t % 2 == 0, skip_reason="none", nonfinite=t == 5, loss_z=0.0, grad_z=0.0,
        )  # fmt: skip

    intervals = [[step_record(8 * i + j) for j in range(8)] for i in range(250)]
    curve = downsample_intervals(intervals)
    assert len(curve["step"]) <= MAX_CURVE_POINTS and curve["step"][-1] == 2000
    assert sum(curve["skipped"]) == 1000 and sum(curve["nonfinite"]) == 1
    assert all(x == 2.0 for x in curve["loss"]) and all(x == 0.5 for x in curve["lr_scale"])
    keep = thin_indices(1000)
    assert len(keep) <= MAX_CURVE_POINTS and keep[0] == 0 and keep[-1] == 999
    assert thin_indices(7) == list(range(7))


# ----------------------------------------------------------------------------------------------------------
# Runs: records, resume after SIGKILL, executors
# ----------------------------------------------------------------------------------------------------------


def _check_record(r: dict[str, Any]) -> None:
    assert r["steps"] == 24 and r["decisions"] == 3
    assert r["trainer"]["optim"]["steps"] == 24  # the resolved trainer config, overrides applied
    assert set(r["versions"]) >= {"torch", "transformers", "gymnasium", "stable_baselines3", "lbw_env", "python"}
    assert r["curves"]["valid"]["step"] == [0, 8, 16, 24]
    assert len(r["timing"]["valid_seconds"]) == 4
    assert r["curves"]["train"]["step"] == [8, 16, 24]
    assert sum(r["curves"]["train"]["skipped"]) == r["skipped_steps"] >= 3  # the NaN burst was skipped
    assert float(r["best_valid_ppl"]) <= float(r["final_valid_ppl"])
    assert math.isfinite(float(r["test_ppl"]))
    assert isinstance(r["diverged"], bool) and "rollbacks" in r["interventions"]


def test_process_pool_gives_the_same_records_as_in_process(tmp_path: Path, eval_env: None) -> None:
    suite = load_suite(small_suite(scenarios=["tiny/high_lr"]))
    local = run_suite(suite, tmp_path / "local", make_governor=make_governor)
    assert local.ran == 4 and local.skipped == 0
    for r in local.records:
        _check_record(r)
    pool = run_suite(suite, tmp_path / "pool", make_governor=make_governor, executor="process", workers=2)
    assert pool.ran == 4
    assert {r["host"]["executor"] for r in pool.records} == {"process"}
    assert by_key(pool.records) == by_key(local.records)
    # The paired arms really differ (otherwise equality would prove little).
    finals = {k: v["final_valid_ppl"] for k, v in by_key(local.records).items()}
    assert finals[("tiny/high_lr", "adamw", 0)] != finals[("tiny/high_lr", "lbw_guard", 0)]
    again = run_suite(suite, tmp_path / "pool", make_governor=make_governor, workers=2)
    assert again.ran == 0 and again.skipped == 4
    # A changed configuration must not be mixed into old records.
    with pytest.raises(ConfigError, match="different configuration"):
        changed = load_suite(small_suite(scenarios=["tiny/high_lr"], eval_every=2))
        run_suite(changed, tmp_path / "pool", make_governor=make_governor)


def test_identical_runs_are_computed_once_and_their_copies_are_what_a_run_gives(
    tmp_path: Path, eval_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """An arm that overrides what two test scenarios differ in (LR, schedule, faults) makes them one run: it runs
    once, the other task gets a copy, the copy equals a real run of its scenario, and it replays as itself."""
    same = ["optim.lr=3e-3", "optim.warmup_steps=0", "optim.schedule=constant", "faults=[]"]
    arms = ["adamw", {"label": "same", "governor": "adamw", "trainer_overrides": same}]
    suite = load_suite(small_suite(scenarios=["tiny/high_lr20", "tiny/shock100"], arms=arms, seeds=1))
    out = tmp_path / "suite"
    summary = run_suite(suite, out, make_governor=make_governor)
    assert summary.ran == 4 and summary.copied == 1
    records = {record_key(r): r for r in summary.records}
    copied = records[("tiny/shock100", "same", 0)]
    assert copied["copy_of"] == {"scenario": "tiny/high_lr20", "arm": "same"}
    assert copied["replay"]["reset_options"] == {"scenario": "tiny/shock100"} and copied["family"] == "tiny"
    # What a real run of that task gives, bit for bit (a pool of the same size: the run seed depends on it); and
    # the adamw arm (no override) really differs.
    other = load_suite(small_suite(scenarios=["tiny/shock100", "tiny/bad_batches"], arms=arms[1:], seeds=1))
    real = {record_key(r): r for r in run_suite(other, tmp_path / "other", make_governor=make_governor).records}
    assert "copy_of" not in real[("tiny/shock100", "same", 0)]
    assert strip_volatile(real[("tiny/shock100", "same", 0)]) == strip_volatile(copied)
    assert records[("tiny/shock100", "adamw", 0)]["final_valid_ppl"] != copied["final_valid_ppl"]
    assert evaluate.main(["--verify", str(out)]) == 0, capsys.readouterr().out
    # Resuming: a lost copy is made again from the stored run, without running anything.
    lines = (out / "records.jsonl").read_text().splitlines(keepends=True)
    (out / "records.jsonl").write_text("".join(x for x in lines if '"copy_of"' not in x))
    again = run_suite(suite, out, make_governor=make_governor)
    assert (again.ran, again.copied, again.skipped) == (1, 1, 3)


@pytest.mark.slow
def test_ray_gives_the_same_records_as_in_process(tmp_path: Path, eval_env: None) -> None:
    pytest.importorskip("ray")
    suite = load_suite(small_suite(scenarios=["tiny/high_lr"]))
    local = run_suite(suite, tmp_path / "local", make_governor=make_governor)
    ray_run = run_suite(suite, tmp_path / "ray", make_governor=make_governor, executor="ray", workers=2)
    assert ray_run.ran == 4
    assert {r["host"]["executor"] for r in ray_run.records} == {"ray"}
    assert by_key(ray_run.records) == by_key(local.records)


def _lines(path: Path) -> list[bytes]:
    """The complete (newline-terminated) lines of ``path``; a torn tail is not a record."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1].splitlines()


def test_sigkill_then_rerun_resumes_without_loss_or_duplicates(tmp_path: Path, eval_env: None) -> None:
    suite_file = tmp_path / "killme.yaml"
    suite_file.write_text(yaml.safe_dump(small_suite()))  # 2 scenarios x 2 arms x 2 seeds = 8 runs
    out = tmp_path / "out"
    records = out / "records.jsonl"
    cmd = [sys.executable, str(REPO / "evaluate.py"), "--suite", str(suite_file), "--out", str(out), "--no-plots"]
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while len(_lines(records)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, (
            "the suite finished (or failed) before it could be killed:\n" + (tmp_path / "first.log").read_text()
        )
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _lines(records)
    assert 2 <= len(before) < 8
    assert all(json.loads(line) for line in before)  # every complete line is a whole record
    with open(records, "ab") as f:
        f.write(before[-1][: len(before[-1]) // 2])  # and a torn write, as a kill inside os.write could leave

    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "partial last line" in done.stderr
    assert f"ran {8 - len(before)}, skipped {len(before)}" in done.stdout
    final = [json.loads(line) for line in _lines(records)]
    keys = [record_key(r) for r in final]
    expected = {(s, a, seed) for s in ("tiny/ref", "tiny/high_lr") for a in ("adamw", "lbw_guard") for seed in range(2)}
    assert len(keys) == len(set(keys)) == 8 and set(keys) == expected
    assert records.read_bytes().endswith(b"\n")
    assert [json.loads(line) for line in before] == final[: len(before)]  # earlier records untouched
    assert (out / "report.md").is_file() and (out / "summary.csv").is_file()


def test_run_suite_defaults_and_arm_overrides(tmp_path: Path, eval_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # default output: results/<suite name>/
    clip = Arm("clip", "adamw", ["optim.clip_norm=0.5"])
    suite = load_suite(small_suite(scenarios=["tiny/high_lr"], seeds=1, eval_every=0))
    suite.arms = [Arm("adamw", "adamw"), clip]
    summary = run_suite(suite, make_governor=make_governor)
    assert summary.out == Path("results") / "test" and (tmp_path / "results" / "test" / "records.jsonl").is_file()
    recs = {r["arm"]: r for r in summary.records}
    assert recs["clip"]["trainer"]["optim"]["clip_norm"] == 0.5 and recs["adamw"]["trainer"]["optim"]["clip_norm"] == 0
    assert recs["clip"]["governor"] == "adamw"
    assert recs["adamw"]["curves"]["valid"]["step"] == [0, 24]  # eval_every 0: start and end only
    assert np.isfinite(float(recs["clip"]["final_valid_ppl"]))
    # Validation during the run must not change the trajectory: same numbers with eval_every=1.
    suite.arms, suite.eval_every = [Arm("adamw", "adamw")], 1
    evaluated = run_suite(suite, tmp_path / "evaluated", make_governor=make_governor).records[0]
    for key in ("final_valid_ppl", "test_ppl", "skipped_steps", "rollbacks"):
        assert evaluated[key] == recs["adamw"][key], key
    assert evaluated["curves"]["train"] == recs["adamw"]["curves"]["train"]
    assert evaluated["curves"]["valid"]["step"] == [0, 8, 16, 24]


def test_resuming_records_of_another_machine_kind_is_noted(tmp_path: Path) -> None:
    """A results folder resumed on another CPU kind (or torch/transformers) gets a note before any run: its
    fine-tune bases, rebuilt here, may be other models (the report then refuses to pair the new runs)."""
    from lbw_env.evaluation.episode import package_versions
    from lbw_env.evaluation.run import machine_notes

    here = package_versions()
    same = {"versions": dict(here)}
    assert machine_notes(tmp_path, [same, same]) == []
    other = {"versions": {**here, "cpu": "x86_64 AVX512" if here["cpu"] != "x86_64 AVX512" else "x86_64 AVX2"}}
    notes = machine_notes(tmp_path, [same, other])
    assert len(notes) == 1 and f"records made with cpu {other['versions']['cpu']}" in notes[0]
    assert f"this machine has cpu {here['cpu']}" in notes[0] and "will not pair" in notes[0]


def test_committed_results_pair_only_runs_from_one_start() -> None:
    """The guard on the repository's own records: every committed cell is paired with runs from the same starting
    model, except the ones the README names as unpaired (full_param's adamw_clip1.0, made where the llama-tiny base
    rebuilt 0.43 % apart). A later arm added on another machine fails here, not in a reader's hands."""
    from lbw_env.evaluation.readme import load_results
    from lbw_env.evaluation.stats import START_TOLERANCE

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    unpaired = set()
    for records in sorted(root.glob("*/records.jsonl")):
        res = load_results(root, records.parent.name)
        unpaired |= {(res.name, c.arm) for c in res.stats[0] if c.other_start > START_TOLERANCE}
    assert unpaired == {("full_param", "adamw_clip1.0")}
