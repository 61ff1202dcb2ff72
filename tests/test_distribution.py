"""The sampled training distribution: seeded, train split only, LR multiples over 1x–100x, both regimes and every
fault kind; an env runs its scenarios; test scenarios cannot be templates; a training run trains on it."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml

from lbw_env.config import ConfigError, from_dict
from lbw_env.learning.distribution import FAULT_KINDS, DistributionConfig, sample_family, write_family
from lbw_env.scenarios import get_scenario, resolve


def test_the_family_is_seeded_train_only_and_covers_the_ranges(tmp_path: Path) -> None:
    cfg = DistributionConfig(scenarios=64, seed=3, family="test_sampled_a")
    assert sample_family(cfg) == sample_family(cfg)
    assert sample_family(cfg) != sample_family(dataclasses_replace(cfg, seed=4))
    path = write_family(cfg, tmp_path / "family.yaml")
    scenarios = resolve([f"{path}:train"])
    assert len(scenarios) == 64 and {s.split for s in scenarios} == {"train"}
    ref, ft = get_scenario("tiny/ref").trainer.optim.lr, get_scenario("tiny/ft_ref").trainer.optim.lr
    multiples = []
    for s in scenarios:
        base = ft if s.trainer.regime == "finetune" else ref
        multiples.append(s.trainer.optim.lr / base)
    assert min(multiples) >= 1.0 and max(multiples) <= 100.0 + 1e-9
    logs = np.log(multiples)  # log-uniform: every third of the log range is hit
    assert all(np.any((logs >= a) & (logs < a + math.log(100) / 3)) for a in np.arange(3) * math.log(100) / 3)
    assert {s.trainer.regime for s in scenarios} == {"scratch", "finetune"}
    kinds = {f.kind for s in scenarios for f in s.trainer.faults}
    assert kinds == set(FAULT_KINDS)
    steps = scenarios[0].trainer.optim.steps
    assert all(f.start >= 0 and f.start + f.length <= steps for s in scenarios for f in s.trainer.faults)


def dataclasses_replace(cfg: DistributionConfig, **changes: object) -> DistributionConfig:
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def test_templates_cannot_be_test_scenarios() -> None:
    with pytest.raises(ConfigError, match=r"distribution\.scratch: .*test"):
        from_dict(DistributionConfig, {"scenarios": 4, "scratch": "tiny/high_lr20"}, "distribution")
    with pytest.raises(ConfigError, match=r"lr_multiple: expected \[low, high\]"):
        from_dict(DistributionConfig, {"lr_multiple": [10, 1]})


def test_an_env_runs_the_sampled_scenarios(lbw: None, tmp_path: Path) -> None:
    path = write_family(DistributionConfig(scenarios=4, family="test_sampled_b"), tmp_path / "f.yaml")
    env = gym.make(
        "LBW/WikiText-Tiny-v0",
        scenarios=[f"{path}:train"],
        decision_interval=4,
        trainer_overrides=["optim.steps=8", "data.eval_blocks=2", "base_steps=8"],
    )
    seen = set()
    for seed in range(3):
        _, info = env.reset(seed=seed)
        seen.add(info["scenario"])
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
    assert seen <= {f"test_sampled_b/s{i:03d}" for i in range(4)}
    env.close()


def test_a_training_run_trains_on_the_sampled_family(
    lbw: None, tmp_path: Path, short_training: Callable[..., Path]
) -> None:
    import train_policy

    config = short_training(distribution={"scenarios": 6, "family": "test_sampled_c"})
    assert train_policy.main(["--config", str(config)]) == 0
    run = tmp_path / "run"
    family = run / "train_distribution.yaml"
    assert family.is_file()
    env = yaml.safe_load((run / "env.yaml").read_text())["train"]
    assert env["scenarios"] == [f"{family.resolve()}:train"]
    monitor = (run / "monitor" / "0.monitor.csv").read_text()
    assert json.loads(monitor.splitlines()[0][1:])  # a monitored run happened


def test_a_held_out_val_sample_of_a_training_distribution(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m lbw_env.learning.distribution``: the training config's distribution, another sampler seed, every
    scenario in the val split; the training's own seed (not held out) and a config without one are refused."""
    from lbw_env.learning import distribution

    config = Path(__file__).resolve().parents[1] / "configs" / "train" / "ppo_residual_sde.yaml"
    out = tmp_path / "val.yaml"
    argv = ["--config", str(config), "--scenarios", "5", "--family", "test_sampled_val", "--out", str(out)]
    assert distribution.main([*argv, "--seed", "7"]) == 0
    scenarios = resolve([f"{out}:val"])
    assert len(scenarios) == 5 and {s.split for s in scenarios} == {"val"}
    same = DistributionConfig(scenarios=5, seed=7, family="test_sampled_val")  # the config's other fields are defaults
    assert yaml.safe_load(out.read_text())["scenarios"] == sample_family(same, "val")["scenarios"]
    plain = Path(__file__).resolve().parents[1] / "configs" / "train" / "ppo.yaml"
    refused = {
        "--seed: 0 is the training's own sampler seed": [*argv, "--seed", "0"],
        "samples no training distribution": ["--config", str(plain), *argv[2:], "--seed", "7"],
        "not_a_folder": [*argv[:-1], str(tmp_path / "not_a_folder" / "x.yaml"), "--seed", "7"],  # an OSError
    }
    (tmp_path / "not_a_folder").write_text("")
    for message, args in refused.items():
        with pytest.raises(SystemExit) as exit_:
            distribution.main(args)
        line = capsys.readouterr().err
        assert exit_.value.code == 2 and line.count("\n") == 1 and message in line, line
