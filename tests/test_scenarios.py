"""Scenario families and their train / val / test splits: the vocabulary, what each split may be used for,
disjoint seeds per split, other base checkpoints for test fine-tunes, and user-defined family files."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

import lbw_env
from lbw_env.config import ConfigError
from lbw_env.plant.config import TrainerConfig, load_trainer_config
from lbw_env.plant.trainer import base_checkpoint_key
from lbw_env.scenarios import (
    SEED_BLOCK,
    SPLITS,
    evaluation_seed,
    families,
    get_scenario,
    load_family,
    require_not_test,
    resolve,
)

REPO = Path(__file__).resolve().parents[1]
FINETUNE_FAMILIES = ("lr_stress", "lora_stress", "full_param", "clipping", "model_size", "runtime_faults")

# Every scenario that existed before the splits, with its split then (heldout -> val): relabelled, never
# redefined, so that old records stay comparable.
BEFORE_SPLITS = {
    "tiny": {"ref": "train", "shock": "train", "nan": "train", "high_lr": "val", "ft_ref": "train",
             "ft_high_lr": "val"},
    "lr_stress": {"ref": "train", "lr1e-2": "train", "lr3e-2": "val", "lr1e-1": "train", "lr3e-1": "val"},
    "lora_stress": {"s_ref": "train", "s_lr3e-2": "train", "s_lr1e-1": "val", "s_lr3e-1": "train",
                    "m_ref": "train", "m_lr3e-2": "val", "m_lr1e-1": "train"},
    "full_param": {"ref": "train", "lr3e-2": "val", "lr1e-1": "train"},
    "clipping": {"ref_clip1.0": "train", "lr1e-1_clip1.0": "train", "lr1e-1_clip0.5": "val",
                 "lr3e-2_clip1.0": "val"},
    "model_size": {"s_ref": "train", "s_stress": "train", "m_ref": "train", "m_stress": "val", "l_ref": "val",
                   "l_stress": "val"},
    "runtime_faults": {"shock30": "train", "bad_batches": "train", "nan_burst": "train", "shock100": "val",
                       "grad_noise": "val"},
}  # fmt: skip


def stress(trainer: TrainerConfig) -> tuple[Any, ...]:
    """What a scenario stresses a run with (not which seed or base it starts from)."""
    faults = tuple((f.kind, f.start, f.length, f.magnitude) for f in trainer.faults)
    o = trainer.optim
    return (trainer.model.preset, trainer.regime, o.lr, o.schedule, o.warmup_steps, o.clip_norm, faults)


def write_family(path: Path, family: str | None = "p1_custom", **changes: Any) -> Path:
    data: dict[str, Any] = {
        "description": "A user-defined family.",
        "defaults": {"model": {"preset": "qwen2-tiny"}, "optim": {"steps": 16}},
        "scenarios": [
            {"name": "ref", "split": "train"},
            {"name": "hot", "split": "val", "trainer": {"optim": {"lr": 3.0e-2}}},
            {"name": "hotter", "split": "test", "trainer": {"optim": {"lr": 6.0e-2}}},
        ],
        **changes,
    }
    if family:
        data["family"] = family
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ----------------------------------------------------------------------------------------------------------
# The shipped families
# ----------------------------------------------------------------------------------------------------------


def test_every_family_has_train_val_and_test() -> None:
    assert set(families()) == set(BEFORE_SPLITS)
    for family in families():
        by_split = {split: resolve([f"{family}:{split}"]) for split in SPLITS}
        assert all(by_split.values()), family
        assert sum(len(v) for v in by_split.values()) == len(load_family(family))


def test_old_scenarios_are_relabelled_not_redefined() -> None:
    for family, old in BEFORE_SPLITS.items():
        scenarios = load_family(family)
        for name, split in old.items():
            s = scenarios[f"{family}/{name}"]
            assert s.split == split, s.name
            assert s.trainer.base_seed is None, f"{s.name}: its base checkpoint changed"


SWEEP_POINTS = {"full_param/lr3e-2_b1", "full_param/lr1e-1_b1"}
"""The LR sweep's 10x and 33x (configs/suites/lr_sweep.yaml): the train/val multiples on the unseen base, because
the sweep reports the ratio at exactly 1x, 3x, 10x, 33x and 100x; there it measures transfer to another base only,
as the suite's description and its table say. No other suite runs them."""


def test_test_scenarios_differ_in_kind_or_magnitude_and_base() -> None:
    for family in families():
        seen = resolve([f"{family}:train", f"{family}:val"])
        for t in resolve([f"{family}:test"]):
            is_reference = "ref" in t.name.split("/")[1]
            if not is_reference and t.name not in SWEEP_POINTS:  # the reference runs set the target: no stress at all
                assert stress(t.trainer) not in {stress(s.trainer) for s in seen}, f"{t.name}: only the seed differs"
            if t.trainer.regime == "finetune":  # another base checkpoint than training, tuning and selection
                assert t.trainer.base_seed not in {s.trainer.base_seed for s in seen if s.trainer.regime == "finetune"}
        if family in FINETUNE_FAMILIES:
            assert all(t.trainer.base_seed == 1 for t in resolve([f"{family}:test"]))


def test_env_id_pools_are_train_splits_only() -> None:
    for env_id, pool in lbw_env.ENV_IDS.items():
        assert all(spec.endswith(":train") for spec in pool), env_id
        assert {s.split for s in resolve(pool)} == {"train"}


def test_reported_suites_run_test_scenarios_and_train_configs_select_on_val() -> None:
    from lbw_env.evaluation import load_suite
    from lbw_env.learning import load_config

    for path in sorted((REPO / "configs" / "suites").glob("*.yaml")):
        suite = load_suite(path)
        scenarios = resolve(suite.scenarios)
        references = set(suite.reference.values())
        for s in scenarios:
            assert s.split == "test" or s.name in references, f"{path.name}: {s.name} is {s.split}, not test"
            assert s.name not in SWEEP_POINTS or path.stem == "lr_sweep", f"{path.name} runs {s.name}"
    for path in sorted((REPO / "configs" / "train").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        assert {s.split for s in resolve(data["eval"]["scenarios"])} == {"val"}, path.name
        if path.stem != "recurrent_ppo":  # optional dependency: validated in test_train_policy
            load_config(path)


# ----------------------------------------------------------------------------------------------------------
# The split vocabulary
# ----------------------------------------------------------------------------------------------------------


def test_heldout_is_retired_with_a_pointer_to_val_and_test(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'heldout' was retired: use 'val'.*or 'test'"):
        resolve(["tiny:heldout"])
    path = write_family(tmp_path / "old.yaml", family="p1_old", scenarios=[{"name": "a", "split": "heldout"}])
    with pytest.raises(ConfigError, match=r"old\.yaml: scenarios\[0\]\.split: the split 'heldout' was retired"):
        load_family(path)
    with pytest.raises(ConfigError, match="expected one of train, val, test, got 'dev'"):
        resolve(["tiny:dev"])


def test_pool_specs_select_by_split() -> None:
    assert [s.name for s in resolve(["tiny:val"])] == ["tiny/high_lr", "tiny/ft_high_lr"]
    assert {s.split for s in resolve(["lr_stress:test"])} == {"test"}
    assert len(resolve(["tiny"])) == len(resolve(["tiny:train", "tiny:val", "tiny:test"]))
    with pytest.raises(ConfigError, match="tiny/nope"):
        resolve(["tiny/nope"])


# ----------------------------------------------------------------------------------------------------------
# The test split is refused for training, tuning, calibration and selection
# ----------------------------------------------------------------------------------------------------------


def test_require_not_test_refuses_test_scenarios() -> None:
    with pytest.raises(ConfigError, match=r"threshold calibration: tiny/high_lr20 is in the test split.*reporting"):
        require_not_test([get_scenario("tiny/high_lr20")], "threshold calibration")
    with pytest.raises(ConfigError, match="test split is for reporting only"):
        require_not_test(["tiny:train", "lr_stress:test"], "rule tuning")  # specs are resolved
    allowed = require_not_test(["tiny:train", "tiny:val"], "training")
    assert [s.name for s in allowed] == [s.name for s in resolve(["tiny:train", "tiny:val"])]


# ----------------------------------------------------------------------------------------------------------
# Seeds: one block of reset seeds per split
# ----------------------------------------------------------------------------------------------------------


def test_evaluation_seeds_of_the_splits_are_disjoint() -> None:
    blocks = {split: {evaluation_seed(split, s) for s in range(SEED_BLOCK)} for split in SPLITS}
    assert blocks["train"] == set(range(SEED_BLOCK))  # train episodes keep the seeds they had before splits
    assert not blocks["train"] & blocks["val"] and not blocks["train"] & blocks["test"]
    assert not blocks["val"] & blocks["test"]
    assert evaluation_seed("test", 0) == 2 * SEED_BLOCK
    with pytest.raises(ConfigError, match="evaluation seed"):
        evaluation_seed("test", SEED_BLOCK)
    with pytest.raises(ConfigError, match="'heldout' was retired"):
        evaluation_seed("heldout", 0)


def test_an_evaluation_episode_resets_with_its_splits_seed(
    tiny_data: Path, lbw_cache: Path, torch_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lbw_env.env import LBWEnv
    from lbw_env.evaluation import run_episode
    from policies import make_governor

    monkeypatch.setenv("LBW_DATA_DIR", str(tiny_data))  # the scenarios leave data.root empty
    short = ["optim.steps=8", "data.eval_blocks=2", "runtime.threads=1"]
    env = LBWEnv({"scenarios": ["tiny/ref", "tiny/high_lr20"], "decision_interval": 4, "trainer_overrides": short})
    governor = make_governor("adamw", env.cfg.envelope)
    for name, offset in (("tiny/ref", 0), ("tiny/high_lr20", 2 * SEED_BLOCK)):
        record = run_episode(env, governor, name, 3)
        assert record["seed"] == 3 and record["split"] == get_scenario(name).split
        _, info = env.reset(seed=offset + 3, options={"scenario": name})
        assert record["run_seed"] == info["run_seed"]
    _, info = env.reset(seed=3, options={"scenario": "tiny/high_lr20"})
    assert record["run_seed"] != info["run_seed"]


# ----------------------------------------------------------------------------------------------------------
# Base checkpoints: test fine-tunes start from another one
# ----------------------------------------------------------------------------------------------------------


def test_base_seed_is_in_the_checkpoint_key_and_unset_keeps_the_old_key() -> None:
    unset = load_trainer_config({"regime": "finetune"})
    assert unset.base_seed is None
    old_key = base_checkpoint_key(unset)
    assert "seed" not in old_key  # bases cached before base_seed existed are still found
    assert base_checkpoint_key(dataclasses.replace(unset, base_seed=0)) == old_key  # None means 0
    assert base_checkpoint_key(dataclasses.replace(unset, base_seed=1)) != old_key
    with pytest.raises(ConfigError, match="base_seed: expected an int >= 0 or null"):
        load_trainer_config({"base_seed": -1})


# ----------------------------------------------------------------------------------------------------------
# User-defined families: a family file anywhere on disk
# ----------------------------------------------------------------------------------------------------------


def test_a_family_file_works_like_a_shipped_family(tmp_path: Path) -> None:
    (tmp_path / "anywhere").mkdir()
    path = write_family(tmp_path / "anywhere" / "custom.yaml")
    scenarios = load_family(path)
    assert list(scenarios) == ["p1_custom/ref", "p1_custom/hot", "p1_custom/hotter"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert {s.source_hash for s in scenarios.values()} == {digest}
    assert {s.source for s in scenarios.values()} == {str(path.resolve())}
    assert [s.name for s in resolve([f"{path}:test"])] == ["p1_custom/hotter"]
    assert len(resolve([str(path)])) == 3
    assert get_scenario("p1_custom/hot").trainer.optim.lr == 3.0e-2  # its name is known once loaded
    assert resolve(["p1_custom:val"])[0].name == "p1_custom/hot"
    # Shipped families carry their file's hash too.
    ref = get_scenario("tiny/ref")
    assert ref.source_hash == hashlib.sha256((REPO / "configs" / "scenarios" / "tiny.yaml").read_bytes()).hexdigest()
    # An edited file is read anew: another hash, the new definition.
    write_family(path, scenarios=[{"name": "ref", "split": "train", "trainer": {"optim": {"lr": 1.0e-3}}}])
    edited = load_family(path)
    assert list(edited) == ["p1_custom/ref"] and edited["p1_custom/ref"].source_hash != digest
    with pytest.raises(ConfigError, match="test split is for reporting only"):
        require_not_test([f"{write_family(path)}:test"], "training")


def test_family_file_errors_name_the_file_or_family(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"scenario family file '.*missing\.yaml': no such file"):
        resolve([str(tmp_path / "missing.yaml:test")])
    with pytest.raises(ConfigError, match=r"scenario family 'p1_never_loaded': no file .*or the path of a family"):
        resolve(["p1_never_loaded:test"])
    with pytest.raises(ConfigError, match=r"scenario family 'p1_never_loaded'"):
        get_scenario("p1_never_loaded/x")
    clash = write_family(tmp_path / "clash.yaml", family="lr_stress")
    with pytest.raises(ConfigError, match=r"clash\.yaml: family 'lr_stress' is a shipped family"):
        load_family(clash)
    load_family(write_family(tmp_path / "one.yaml", family="p1_twice"))
    two = write_family(tmp_path / "two.yaml", family="p1_twice", description="another")
    with pytest.raises(ConfigError, match=r"two\.yaml: family 'p1_twice' is already loaded from .*one\.yaml"):
        load_family(two)
    unnamed = write_family(tmp_path / "p1_stem.yaml", family=None)  # the family defaults to the file's stem
    assert next(iter(load_family(unnamed))) == "p1_stem/ref"


def test_a_suite_can_name_a_family_file(tmp_path: Path) -> None:
    from lbw_env.evaluation import load_suite, prepare
    from policies import make_governor

    path = write_family(tmp_path / "suite_family.yaml", family="p1_suite")
    suite = load_suite(
        {
            "name": "custom",
            "scenarios": [f"{path}:test", "p1_suite/ref"],
            "arms": ["adamw"],
            "seeds": 1,
            "reference": {"p1_suite": "p1_suite/ref"},
        }
    )
    plan = prepare(suite, make_governor)
    assert [s.name for s in plan.scenarios] == ["p1_suite/hotter", "p1_suite/ref"]
    assert plan.reference["p1_suite/hotter"] == "p1_suite/ref"
    assert {s.source_hash for s in plan.scenarios} == {hashlib.sha256(path.read_bytes()).hexdigest()}
