"""The full-information fit of a once-per-run switch (``warm_start.counterfactual``): its reward table is the
returns of the switch's own training env, choice by choice (the base's read from the objective's run of it);
the fit raises the expected return over the contexts and picks the better rule where the table says so; bad
configs are one line; ``train_policy.py`` runs it and scores the base before the fitted switch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from lbw_env.config import ConfigError, from_dict
from lbw_env.learning import residual as lr
from lbw_env.learning.config import TrainConfig, WarmStartConfig
from lbw_env.learning.counterfactual import expected_gain, fit_choice, label
from lbw_env.learning.objective import ObjectiveConfig
from lbw_env.learning.vec_env import make_env
from policies import make_governor
from tests.test_residual import ENV, TINY_ID
from tests.test_switch import SwitchSpaces

ONCE = lr.ResidualConfig(base="lbw_guard", switch=["lbw_guard_probe"], switch_at=1)


def test_the_reward_table_is_what_the_training_env_pays_for_each_choice(lbw: None) -> None:
    objective = ObjectiveConfig(relative_to="lbw_guard", seeds=2, end_is_terminal=True, correction_penalty=0.001)
    kwargs = {"residual": ONCE, "objective": objective, "make_governor": make_governor, **ENV}
    contexts = [(3, "tiny/high_lr"), (4, "tiny/ft_high_lr")]
    env = make_env(TINY_ID, None, **kwargs, scenarios=["tiny/high_lr", "tiny/ft_high_lr"])
    labels = label(env, contexts)
    assert labels.returns.shape == (2, 2) and labels.obs.shape == (2, *env.observation_space.shape)
    for row, (seed, scenario) in enumerate(contexts):
        for choice in (0, 1):  # each choice run for real, in the same env
            obs, _ = env.reset(seed=seed, options={"scenario": scenario})
            assert np.array_equal(obs, labels.obs[row])
            _, reward, *_ = env.step(np.int64(choice))
            assert reward == pytest.approx(labels.returns[row, choice], abs=1e-9)
    assert labels.returns[0, 1] != labels.returns[0, 0]  # the rules part on tiny/high_lr: the table says something
    env.close()


def test_the_fit_raises_the_expected_return_and_picks_the_better_rule() -> None:
    """A table where the other rule pays exactly when the first feature is positive: the fitted switch, started
    at its base, hands over there and only there."""
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(256, SwitchSpaces().observation_space.shape[0])).astype(np.float32)
    returns = np.zeros((256, 2))
    returns[:, 1] = np.where(obs[:, 0] > 0, 0.05, -0.05) + rng.normal(0, 0.01, 256)
    model = PPO("MlpPolicy", DummyVecEnv([SwitchSpaces]), seed=0, device="cpu", policy_kwargs={"net_arch": [16]})
    lr.start_at_base(model.policy, lr.ResidualConfig(base="lbw_guard", switch=["lbw_guard_probe"]))
    with torch.no_grad():
        before = float(expected_gain(model.policy, obs, returns))
    history = fit_choice(model.policy, obs, returns, WarmStartConfig(counterfactual_epochs=100, batch_size=64))
    with torch.no_grad():
        after = float(expected_gain(model.policy, obs, returns))
        choice = model.policy.get_distribution(torch.as_tensor(obs)).mode().numpy()
    assert after > 0.02 > abs(before) and history[-1] < history[0]  # at most ~0.025: half the rows pay 0.05
    assert np.mean(choice == (obs[:, 0] > 0)) > 0.95


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"residual": {"base": "lbw_guard", "switch": ["lbw_guard_probe"]}}, "a once-per-run switch"),
        ({"objective": {"relative_to": "lbw_guard", "seeds": 0}}, r"objective\.seeds > 0"),
        ({"objective": {"relative_to": "adamw", "seeds": 2}}, r"relative_to to be the switch's base"),
        ({"algo": "sac"}, "an actor-critic policy"),
        ({"warm_start": {"counterfactual": True, "counterfactual_epochs": 0}}, r"counterfactual_epochs: expected"),
    ],
)
def test_bad_counterfactual_configs_are_one_line(changes: dict[str, Any], message: str) -> None:
    data: dict[str, Any] = {
        "residual": {"base": "lbw_guard", "switch": ["lbw_guard_probe"], "switch_at": 1},
        "objective": {"relative_to": "lbw_guard", "seeds": 2},
        "warm_start": {"counterfactual": True},
        "total_timesteps": 0,
        **changes,
    }
    with pytest.raises(ConfigError, match=message):
        from_dict(TrainConfig, data, "config")


def test_no_training_steps_only_with_the_counterfactual_fit() -> None:
    with pytest.raises(ConfigError, match=r"total_timesteps: expected an int >= 1 \(0 only with"):
        from_dict(TrainConfig, {"total_timesteps": 0}, "config")


@pytest.mark.slow
def test_train_policy_fits_a_switch_scores_the_base_first_and_ships_what_selection_keeps(
    lbw: None, tmp_path: Path, short_training: Callable[..., Path]
) -> None:
    import train_policy

    config = short_training(
        residual={"base": "lbw_guard", "switch": ["lbw_guard_probe"], "switch_at": 1},
        objective={"end_is_terminal": True, "relative_to": "lbw_guard", "seeds": 2, "per_scenario": True},
        env={
            "decision_interval": 4,
            "scenarios": ["tiny/high_lr", "tiny/ft_high_lr"],
            "trainer_overrides": ["optim.steps=16", "base_steps=8", "data.eval_blocks=4"],
        },
        warm_start={"counterfactual": True, "counterfactual_epochs": 20, "value_epochs": 2},
        eval={"scenarios": ["tiny/high_lr"], "seeds": 1, "eval_freq": 0, "at_start": True, "select": "paired"},
        total_timesteps=0,
    )
    assert train_policy.main(["--config", str(config)]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    fitted = summary["warm_start"]["counterfactual"]
    assert fitted["contexts"] == 4 and fitted["runs"] == 4  # 2 scenarios x 2 seeds, one run each besides the base
    assert 0 < fitted["seconds"] < summary["wall_seconds"]
    table = np.load(run / "counterfactual.npz")
    assert table["returns"].shape == (4, 2) and sorted(set(table["scenarios"])) == ["tiny/ft_high_lr", "tiny/high_lr"]
    assert len(np.load(run / "evaluations.npz")["results"]) == 2  # the base, then the fitted switch
    for name in ("best_model", "final/model", "bc_model"):
        governor = make_governor(f"ppo:{run / name}")
        assert governor.config.switch_at == 1  # type: ignore[attr-defined]
