"""benchmarks/tune_adamw.py and the ``adamw_tuned`` arms: the careful user's LR, chosen on train/val only.

The sweep refuses the test split before anything runs; LR-stress scenarios that differ only by their LR are
one run once the LR is replaced; a real (smallest) sweep writes an entry with its provenance; and every
suite's yardstick (its ``adamw_tuned`` arm, ``optim.lr=tuned``, or AdamW on its reference scenario) runs at the LR
that the committed sweep chose for the scenario's family and model, so a suite cannot drift from the sweep that
justifies it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from lbw_env.config import config_dir
from lbw_env.evaluation.suite import load_suite
from lbw_env.scenarios import resolve, tuned_lrs_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tune() -> ModuleType:
    """The script, imported from its file (``benchmarks/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("tune_adamw", REPO / "benchmarks" / "tune_adamw.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("specs", [["lr_stress:test"], ["lr_stress:train", "lr_stress/ref_b1"], ["lr_stress"]])
def test_refuses_the_test_split_in_one_line(
    tune: ModuleType, tmp_path: Path, specs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, output = tmp_path / "out", tmp_path / "tuned.yaml"
    with pytest.raises(SystemExit) as exc:
        tune.main(["--scenarios", *specs, "--lrs", "3e-3", "--out", str(out), "--output", str(output)])
    message = capsys.readouterr().err
    assert exc.value.code == 2
    assert message.startswith("tune_adamw.py: error: ") and message.count("\n") == 1
    assert "test split" in message and "lr_stress/ref_b1" in message
    assert not out.exists() and not output.exists()  # refused before anything ran


def test_lr_stress_multiples_are_one_run_once_the_lr_is_replaced(tune: ModuleType) -> None:
    train_val = [*resolve(["lr_stress:train"]), *resolve(["lr_stress:val"])]
    assert len(train_val) == 6  # 1x, 3.3x, 10x, 17x, 33x, 100x
    assert [s.name for s in tune.distinct(train_val, 3e-3, [])] == ["lr_stress/ref"]
    faults = [*resolve(["runtime_faults:train"])]
    assert len(tune.distinct(faults, 3e-3, [])) == len(faults)  # faults keep runs apart


def test_a_sweep_writes_the_best_lr_with_provenance(tune: ModuleType, tmp_path: Path) -> None:
    """The smallest real sweep: one 16-step tiny scenario, one seed, two LRs (one of them absurd)."""
    output = tmp_path / "tuned.yaml"
    output.write_text("other: {lr: 0.5}\n")  # another family's entry is kept
    args = ["--scenarios", "tiny/ref", "--lrs", "3e-3", "3", "--seeds", "1", "--out", str(tmp_path / "out")]
    tune.main([*args, "--output", str(output), "optim.steps=16", "data.eval_blocks=2"])
    data = yaml.safe_load(output.read_text())
    assert data["other"] == {"lr": 0.5}
    entry = data["tiny"]
    assert entry["lr"] == 3e-3  # LR 3 diverges: counted as the uniform predictor, never chosen
    prov = entry["provenance"]
    assert prov["scenarios"] == {"tiny/ref": "train"} and prov["seeds"] == 1
    assert set(prov["lrs"]) == {"0.003", "3"} and prov["lrs"]["0.003"] < prov["lrs"]["3"]
    assert prov["at_grid_edge"] is True and prov["tool"] == "benchmarks/tune_adamw.py"


def test_every_suite_s_yardstick_runs_at_the_tuned_lr() -> None:
    """Gain captured and time-to-target measure against tuned AdamW: the suite's ``adamw_tuned`` arm (the LR
    resolved per scenario from the committed sweep), else AdamW on the reference scenario, which must then
    configure the tuned LR itself. A suite whose yardstick is AdamW at an untuned LR fails here."""
    from lbw_env.config import ConfigError
    from lbw_env.evaluation.stats import reference_of
    from lbw_env.scenarios import get_scenario, tuned_lr, with_overrides

    tuned = yaml.safe_load(tuned_lrs_path().read_text())
    checked = 0
    for suite_file in sorted((config_dir() / "suites").glob("*.yaml")):
        suite = load_suite(str(suite_file))
        arms = {a.label: a for a in suite.arms}
        scenarios = resolve(suite.scenarios)
        names = [s.name for s in scenarios]
        for s in scenarios:
            if s.split != "test":
                continue  # a selection suite on val (select_lr_free) reports nothing
            try:
                lr = tuned_lr(s.family, s.trainer.model.preset, s.trainer.regime)
            except ConfigError:
                continue  # no sweep committed for this family: the report says which yardstick it used
            if "adamw_tuned" in arms:
                arm = arms["adamw_tuned"]
                assert arm.governor == "adamw" and arm.trainer_overrides == ["optim.lr=tuned"], suite_file.name
                trainer = with_overrides(s, suite.arm_env(arm).trainer_overrides).trainer
            else:
                ref = reference_of(s.name, suite.reference, names)
                assert ref is not None, f"{suite_file.name}: {s.name} has neither adamw_tuned nor a reference"
                trainer = get_scenario(ref).trainer
            assert trainer.optim.lr == lr, f"{suite_file.name}: {s.name}'s yardstick at {trainer.optim.lr}, not {lr}"
            checked += 1
    assert checked >= 10  # lr_stress, full_param, lora_stress (qwen2-s, and qwen2-m once swept)
    for family, entry in tuned.items():  # each committed entry was tuned on train/val only
        assert set(entry["provenance"]["scenarios"].values()) <= {"train", "val"}, family


def test_optim_lr_tuned_resolves_per_family_and_model() -> None:
    from lbw_env.config import ConfigError
    from lbw_env.scenarios import get_scenario, with_overrides

    assert with_overrides(get_scenario("lr_stress/lr1.5e-1_b1"), ["optim.lr=tuned"]).trainer.optim.lr == 3e-3
    assert with_overrides(get_scenario("lora_stress/s_lr6e-2_b1"), ["optim.lr=tuned"]).trainer.optim.lr == 1e-2
    missing = r"^optim\.lr=tuned: no tuned LR for model_size/qwen2-m or model_size/finetune or model_size in .*tuned"
    with pytest.raises(ConfigError, match=missing):
        with_overrides(get_scenario("model_size/m_ref"), ["optim.lr=tuned"])


def test_optim_lr_tuned_reads_the_regime_entry_of_a_family_that_trains_both_ways(tmp_path, monkeypatch) -> None:
    """A family that trains from scratch and fine-tunes (tiny) keeps one tuned LR per regime: a careful user
    would not fine-tune at the LR that suits training from scratch."""
    import lbw_env.scenarios as scen

    table = tmp_path / "adamw_tuned.yaml"
    table.write_text("tiny/scratch: {lr: 0.01}\ntiny/finetune: {lr: 0.001}\n")
    monkeypatch.setattr(scen, "tuned_lrs_path", lambda: table)
    assert scen.with_overrides(scen.get_scenario("tiny/high_lr20"), ["optim.lr=tuned"]).trainer.optim.lr == 0.01
    assert scen.with_overrides(scen.get_scenario("tiny/ft_lr3e-1_b1"), ["optim.lr=tuned"]).trainer.optim.lr == 0.001
