"""benchmarks/calibrate_guard.py: the guard is calibrated on train and val scenarios only, and says so.

The test split must stay a clean yardstick: the calibration refuses it before anything runs. A calibration's
output must be a guard file that ``lbw_guard:<yaml>`` loads, with a ``provenance:`` section naming what it was
scored on. The run here is the smallest real one: one 16-step train scenario, one seed, two candidates.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from lbw_env.config import config_dir
from policies import make_governor
from policies.rules import GuardConfig, load_guard_config

REPO = Path(__file__).resolve().parents[1]
SHORT = ["optim.steps=16", "data.eval_blocks=2"]
"""Two decisions per episode, cheap evaluations (the repository's tiny WikiText cut has few validation blocks)."""


@pytest.fixture(scope="module")
def calibrate() -> ModuleType:
    """The script, imported from its file (``benchmarks/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("calibrate_guard", REPO / "benchmarks" / "calibrate_guard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class body runs
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("specs", [["tiny:test"], ["tiny:train", "tiny/shock100"], ["tiny"]])
def test_refuses_the_test_split_in_one_line(
    calibrate: ModuleType, tmp_path: Path, specs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        calibrate.main(["--scenarios", *specs, "--out", str(out), "--output", str(tmp_path / "g.yaml")])
    message = capsys.readouterr().err
    assert exc.value.code == 2
    assert message.startswith("calibrate_guard.py: error: ") and message.count("\n") == 1
    assert "test split" in message and "tiny/shock100" in message
    assert not out.exists() and not (tmp_path / "g.yaml").exists()  # refused before anything ran


def test_params_round_trip_and_cover_the_shipped_thresholds(calibrate: ModuleType) -> None:
    shipped = calibrate.thresholds_of(load_guard_config())
    fields = set(GuardConfig.__dataclass_fields__)
    for p in calibrate.PARAMS:
        assert p.name in fields and p.low < p.high
        assert p.low <= shipped[p.name] <= p.high  # the search can start from (and return to) the shipped guard
        assert p.decode(p.encode(shipped[p.name])) == pytest.approx(shipped[p.name], rel=5e-3)
    assert calibrate.consistent({**shipped, "unstable_vs_best": 0.05, "rollback_vs_best": 0.04})[
        "rollback_vs_best"
    ] == pytest.approx(0.05)


def test_one_searched_threshold_is_a_grid_and_unknown_names_are_refused(calibrate: ModuleType) -> None:
    """CMA-ES needs two dimensions: ``--params`` with one name evaluates an even grid over its bounds instead."""
    assert calibrate.unit_grid(5) == [0.0, 0.25, 0.5, 0.75, 1.0] and calibrate.unit_grid(1) == [0.5]
    args = calibrate.parse_args(["--params", "target_update_ratio", "--budget", "5"])
    (p,) = args.params
    assert [p.decode(u) for u in calibrate.unit_grid(5)] == [0.01, 0.0178, 0.0316, 0.0562, 0.1]
    assert "target_update_ratio" in GuardConfig.__dataclass_fields__
    with pytest.raises(SystemExit):
        calibrate.parse_args(["--params", "start_scale", "nope"])


def test_render_keeps_comments_and_replaces_the_provenance(calibrate: ModuleType) -> None:
    template = (config_dir() / "governors" / "lbw_guard.yaml").read_text(encoding="utf-8")
    thresholds = {**calibrate.thresholds_of(load_guard_config()), "backoff": 0.333}
    once = calibrate.render(template, thresholds, {"budget": 1})
    twice = calibrate.render(once, thresholds, {"budget": 2})
    assert twice.count("provenance:") == 1 and twice.count(calibrate.PROVENANCE_HEADER) == 1
    doc = yaml.safe_load(twice)
    assert doc["backoff"] == 0.333 and doc["provenance"] == {"budget": 2}
    kept = [line for line in template.splitlines() if line.startswith("#")]
    assert kept and all(line in twice for line in kept)


def test_a_tiny_calibration_writes_a_guard_with_its_provenance(
    calibrate: ModuleType, tiny_data: Path, lbw_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LBW_DATA_DIR", str(tiny_data))  # the scenarios leave data.root empty
    out, output = tmp_path / "records", tmp_path / "guard.yaml"
    argv = ["--scenarios", "tiny/ref", "--seeds", "1", "--budget", "2", "--popsize", "2"]
    calibrate.main([*argv, "--out", str(out), "--output", str(output), *SHORT])

    guard = make_governor(f"lbw_guard:{output}")
    prov = guard.gcfg.provenance  # type: ignore[attr-defined]
    assert prov["scenarios"] == {"tiny/ref": "train"} and prov["scenario_specs"] == ["tiny/ref"]
    assert prov["seeds"] == 1 and prov["budget"] == 2 and prov["evaluated"] == 3
    assert prov["trainer_overrides"] == SHORT
    tiny = (config_dir() / "scenarios" / "tiny.yaml").read_bytes()
    assert prov["family_sha256"] == {"tiny": hashlib.sha256(tiny).hexdigest()}
    assert prov["chosen"]["score"] <= prov["start"]["score"]
    assert set(prov["chosen"]["score_by_split"]) == {"train"}
    assert prov["code_version"] and prov["date"] and prov["duration_seconds"] > 0
    assert "CMA-ES" in prov["method"] and set(prov["searched"]) == {p.name for p in calibrate.PARAMS}

    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert {r["scenario"] for r in records} == {"tiny/ref"} and {r["split"] for r in records} == {"train"}
    assert {r["steps"] for r in records} == {16}
    arms = {r["arm"] for r in records}
    assert "adamw" in arms and 2 <= len(arms) <= 4  # AdamW, the start, two candidates (one may equal the start)
    # The shipped thresholds were the start: what was written is either them or a scored candidate.
    chosen = calibrate.thresholds_of(guard.gcfg)  # type: ignore[attr-defined]
    candidates = [yaml.safe_load(p.read_text()) for p in (out / "candidates").glob("*.yaml")]
    assert chosen in candidates


@pytest.mark.parametrize("name", ["lbw_guard", "lbw_guard_tuned", "lbw_guard_probe"])
def test_a_shipped_guard_is_the_best_candidate_of_its_committed_calibration_records(
    calibrate: ModuleType, name: str
) -> None:
    """The shipped thresholds come from committed records: every episode the calibration behind
    ``configs/governors/<name>.yaml`` ran (``benchmarks/results/calibrate_guard_runs/<name>/``, including those of
    earlier, resumed invocations of the same search) reproduces the provenance's chosen and start scores, and no
    candidate evaluated on every (scenario, seed) of it scores better than the shipped thresholds."""
    from lbw_env.evaluation.verify import read_records
    from lbw_env.scenarios import resolve

    folder = REPO / "benchmarks" / "results" / "calibrate_guard_runs" / name
    shipped = load_guard_config(config_dir() / "governors" / f"{name}.yaml")
    prov = shipped.provenance
    runs = {(r["scenario"], r["arm"], int(r["seed"])): r for r in read_records(folder / "records.jsonl")}
    assert {r["split"] for r in runs.values()} <= {"train", "val"}
    # The script's own scoring (mean paired capped log-ppl difference to AdamW, overall and per split).
    setup = calibrate.Setup(resolve(list(prov["scenarios"])), prov["seeds"], {}, folder, 1)

    def score(arm: str) -> tuple[float, dict[str, float]] | None:
        try:
            return setup.score(runs, arm)
        except KeyError:  # not evaluated on every (scenario, seed)
            return None

    def arm_of(thresholds: dict[str, object]) -> str:
        for path in (folder / "candidates").glob("*.yaml"):  # thresholds added since keep their defaults
            candidate = yaml.safe_load(path.read_text())
            if all(thresholds.get(k) == v for k, v in candidate.items()):
                return f"guard-{path.stem}"
        raise AssertionError(f"no committed candidate has the thresholds {thresholds}")

    chosen = score(arm_of(calibrate.thresholds_of(shipped)))
    start = score(arm_of({**calibrate.thresholds_of(shipped), **prov["start"]["thresholds"]}))
    assert chosen is not None and start is not None
    assert chosen[0] == pytest.approx(prov["chosen"]["score"], abs=5e-6)
    assert chosen[1] == pytest.approx(prov["chosen"]["score_by_split"], abs=5e-6)
    assert start[0] == pytest.approx(prov["start"]["score"], abs=5e-6)
    scores = {arm: score(arm) for arm in {a for _, a, _ in runs} - {"adamw"}}
    full = {arm: v[0] for arm, v in scores.items() if v is not None}
    assert len(full) >= prov["evaluated"] and min(full.values()) == pytest.approx(chosen[0], abs=1e-12)


def test_a_warmer_slow_start_does_not_beat_the_shipped_probe_on_train_and_val(calibrate: ModuleType) -> None:
    """The README's answer to "would a warmer start close the probe's 1x gap to warmup?": a grid over
    ``start_scale`` on train/val scenarios from 1x to 100x (committed records) ties the shipped probe at every
    start the envelope's first cut clamps to 1/8 (the same episodes) and scores every warmer start worse."""
    from lbw_env.control.envelope import EnvelopeConfig
    from lbw_env.evaluation.verify import read_records
    from lbw_env.scenarios import resolve

    folder = REPO / "benchmarks" / "results" / "calibrate_guard_runs" / "lbw_guard_probe_start_scale"
    prov = load_guard_config(folder / "search.yaml").provenance
    assert set(prov["scenarios"].values()) <= {"train", "val"} and set(prov["searched"]) == {"start_scale"}
    runs = {(r["scenario"], r["arm"], int(r["seed"])): r for r in read_records(folder / "records.jsonl")}
    setup = calibrate.Setup(resolve(list(prov["scenarios"])), prov["seeds"], {}, folder, 1)
    shipped = calibrate.thresholds_of(load_guard_config(config_dir() / "governors" / "lbw_guard_probe.yaml"))
    scores: dict[float, float] = {}
    for path in (folder / "candidates").glob("*.yaml"):
        candidate = yaml.safe_load(path.read_text())
        assert {k: v for k, v in candidate.items() if k != "start_scale"} == {
            k: v for k, v in shipped.items() if k != "start_scale"
        }
        scores[candidate["start_scale"]] = setup.score(runs, f"guard-{path.stem}")[0]
    first_cut = EnvelopeConfig().lr_scale_init / EnvelopeConfig().max_cut
    assert len(scores) == prov["evaluated"] and shipped["start_scale"] in scores
    assert min(scores.values()) == pytest.approx(scores[shipped["start_scale"]], abs=1e-12)
    assert prov["chosen"]["score"] == pytest.approx(scores[shipped["start_scale"]], abs=5e-6)
    for start_scale, score in scores.items():
        if start_scale <= first_cut:
            assert score == scores[shipped["start_scale"]]  # clamped to the same first interval: the same runs
        else:
            assert score > scores[shipped["start_scale"]] + 1e-4


@pytest.mark.parametrize("name", ["lbw_guard", "lbw_guard_ratio", "lbw_guard_tuned", "lbw_guard_probe"])
def test_shipped_guard_thresholds_were_calibrated_on_train_and_val_only(name: str) -> None:
    """Every shipped guard file is the output of this script on train/val scenarios: a reported guard whose
    thresholds saw a test scenario measures its tuning, not its generalisation."""
    prov = load_guard_config(config_dir() / "governors" / f"{name}.yaml").provenance
    assert prov["tool"] == "benchmarks/calibrate_guard.py" and prov["code_version"] and not prov["code_dirty"]
    assert prov["method"].startswith(("CMA-ES", "grid"))
    assert set(prov["scenarios"].values()) <= {"train", "val"}
