"""benchmarks/tune_adamw.py and the ``adamw_tuned`` arms: the careful user's LR, chosen on train/val only.

The sweep refuses the test split before anything runs; LR-stress scenarios that differ only by their LR are
one run once the LR is replaced; a real (smallest) sweep writes an entry with its provenance; and every
suite's ``adamw_tuned`` arm uses the LR that the committed sweep chose for its scenarios' family, so a suite
cannot drift from the sweep that justifies it.
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
from lbw_env.scenarios import resolve

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
def test_refuses_the_test_split_in_one_line(tune: ModuleType, tmp_path: Path, specs: list[str]) -> None:
    out, output = tmp_path / "out", tmp_path / "tuned.yaml"
    with pytest.raises(SystemExit) as exc:
        tune.main(["--scenarios", *specs, "--lrs", "3e-3", "--out", str(out), "--output", str(output)])
    message = str(exc.value.code)
    assert message.startswith("tune_adamw: ") and "\n" not in message
    assert "test split" in message and "lr_stress/ref_b1" in message
    assert not out.exists() and not output.exists()  # refused before anything ran


def test_lr_stress_multiples_are_one_run_once_the_lr_is_replaced(tune: ModuleType) -> None:
    train_val = [*resolve(["lr_stress:train"]), *resolve(["lr_stress:val"])]
    assert len(train_val) == 5
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


def test_every_adamw_tuned_arm_uses_its_family_s_tuned_lr() -> None:
    path = config_dir() / "baselines" / "adamw_tuned.yaml"
    tuned = yaml.safe_load(path.read_text()) if path.is_file() else {}
    checked = 0  # suites gain adamw_tuned arms as their sweeps are committed
    for suite_file in sorted((config_dir() / "suites").glob("*.yaml")):
        suite = load_suite(str(suite_file))
        for arm in suite.arms:
            if arm.label != "adamw_tuned":
                continue
            families = {s.family for s in resolve(suite.scenarios)}
            assert len(families) == 1, f"{suite_file.name}: adamw_tuned over several families {families}"
            family = families.pop()
            assert family in tuned, f"{suite_file.name}: no tuned LR for {family} in {path.name}"
            assert arm.governor == "adamw"
            assert f"optim.lr={tuned[family]['lr']}" in arm.trainer_overrides, suite_file.name
            checked += 1
    for family, entry in tuned.items():  # each committed entry was tuned on train/val only
        assert set(entry["provenance"]["scenarios"].values()) <= {"train", "val"}, family
