"""Residual governors (base rule + bounded learned correction): at zero correction a residual governor is its
base on whole episodes (same actions, same final metrics) on qwen2-tiny, through a governor file, the registry
and the training wrapper; a correction moves the action within its bounds and the rule keeps tracking the LR
scale the envelope really applies; files record their base; bad input fails in one line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from lbw_env.config import ConfigError
from lbw_env.control.compat import GovernanceSettings
from lbw_env.control.envelope import Envelope, EnvelopeConfig
from lbw_env.control.governance import GovernanceConfig
from lbw_env.learning import residual as lr
from lbw_env.learning.objective import ObjectiveConfig
from lbw_env.learning.policy_file import MANIFEST, load_policy_file, save_policy_file
from lbw_env.learning.vec_env import make_env, wrapper_kwargs
from policies import make_governor
from policies.base import ActionCodec
from policies.residual import ResidualGovernor, residual_governor

TINY_ID = "LBW/WikiText-Tiny-v0"
OVERRIDES = ["optim.steps=48", "data.eval_blocks=4", "base_steps=16"]
"""12 decisions of 4 steps: long enough for the guard's slow start, growth, back-off and rollbacks."""
ENV: dict[str, Any] = {"decision_interval": 4, "trainer_overrides": OVERRIDES}
SETTINGS = GovernanceSettings.of(GovernanceConfig(decision_interval=4))
RESIDUAL = lr.ResidualConfig(base="lbw_guard")


class CorrectionSpaces(gym.Env[np.ndarray, np.ndarray]):
    """The env's observations and the correction space, nothing behind them (the models are never trained)."""

    def __init__(self) -> None:
        self.observation_space = SETTINGS.observation_space()
        self.action_space = lr.correction_space()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        return self.observation_space.sample(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        return self.observation_space.sample(), 0.0, False, False, {}


def zero_model() -> PPO:
    """A fresh PPO in the correction space, output layer zeroed, with statistics far from identity (so the
    normalised observations the policy sees differ from the raw ones the base sees)."""
    venv = VecNormalize(DummyVecEnv([CorrectionSpaces]), norm_obs=True)
    rng = np.random.default_rng(0)
    size = venv.observation_space.shape[0]
    venv.obs_rms.mean, venv.obs_rms.var = rng.normal(0, 1, size), rng.uniform(0.2, 3.0, size)
    model = PPO("MlpPolicy", venv, seed=0, device="cpu", policy_kwargs={"net_arch": [16, 16], "log_std_init": -2})
    lr.start_at_base(model.policy, RESIDUAL)
    return model


def run_episode(governor: Any, scenario: str, seed: int = 3, env: gym.Env | None = None) -> dict[str, Any]:
    """One whole episode; the actions sent, the controls applied, the rewards and the final metrics."""
    env = env or gym.make(TINY_ID, **ENV, scenarios=[scenario])
    obs, _ = env.reset(seed=seed)
    actions, controls, rewards = [], [], []
    start, done = True, False
    while not done:
        action, _ = governor.predict(obs, episode_start=np.array([start]), deterministic=True)
        obs, reward, terminated, truncated, info = env.step(action)
        actions.append(np.asarray(action).tolist())
        controls.append(info["control"])
        rewards.append(reward)
        start, done = False, terminated or truncated
    env.close()
    return {"actions": actions, "controls": controls, "rewards": rewards, "final": _final(info)}


def _final(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info["final"].items() if k not in ("train_seconds", "wall_time")}


# ----------------------------------------------------------------------------------------------------------
# Zero correction = the base, on whole episodes
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["tiny/high_lr", "tiny/nan"])
def test_zero_correction_is_the_base_on_whole_episodes(lbw: None, tmp_path: Path, scenario: str) -> None:
    model = zero_model()
    folder = tmp_path / "residual"
    vn = model.get_vec_normalize_env()
    save_policy_file(model, folder, SETTINGS, algorithm="ppo", vecnormalize=vn, residual=RESIDUAL)
    governor = make_governor(f"ppo:{folder}")
    assert isinstance(governor, ResidualGovernor) and governor.config == RESIDUAL
    base = run_episode(make_governor("lbw_guard", SETTINGS.envelope), scenario)
    residual = run_episode(governor, scenario)
    assert residual["actions"] == base["actions"]
    assert residual["controls"] == base["controls"] and residual["rewards"] == base["rewards"]
    assert residual["final"] == base["final"]
    # The guard did act (else the test would show nothing): it moved the LR scale.
    assert len({c["lr_scale"] for c in base["controls"]}) > 2


def test_training_wrapper_at_zero_correction_is_the_base(lbw: None) -> None:
    """What the policy trains in: ResidualActions over the env, the zeroed policy's deterministic corrections
    (on normalised observations, as in training) give the base's episode exactly."""
    model = zero_model()
    vn = model.get_vec_normalize_env()
    rules = lr.make_rules(RESIDUAL, SETTINGS.envelope, make_governor)
    wrapped = lr.ResidualActions(gym.make(TINY_ID, **ENV, scenarios=["tiny/high_lr"]), rules, RESIDUAL)

    class Policy:
        def predict(self, obs: np.ndarray, **_: Any) -> tuple[np.ndarray, None]:
            c, _ = model.predict(vn.normalize_obs(obs[None]).astype(np.float32), deterministic=True)
            assert not np.any(c)  # exactly zero
            return c[0], None

    residual = run_episode(Policy(), "tiny/high_lr", env=wrapped)
    base = run_episode(make_governor("lbw_guard", SETTINGS.envelope), "tiny/high_lr")
    assert residual["controls"] == base["controls"] and residual["final"] == base["final"]


# ----------------------------------------------------------------------------------------------------------
# A correction
# ----------------------------------------------------------------------------------------------------------


class Constant:
    """A learned part that always answers ``c``."""

    def __init__(self, c: list[float]) -> None:
        self.c = np.asarray(c, dtype=np.float32)

    def predict(self, obs: np.ndarray, state: Any = None, episode_start: Any = None, deterministic: bool = False):
        return self.c.copy(), state


def test_a_correction_moves_the_run_and_the_rule_tracks_the_real_scale(lbw: None) -> None:
    """A constant LR cut: the controls differ from the base's, every action stays in the space, and the scale
    the rule reasons with is, at every decision, the scale the envelope applied."""
    cfg = lr.ResidualConfig(base="lbw_guard", lr_bound=0.5)
    governor = residual_governor(cfg, SETTINGS.envelope, Constant([-1.0, 0.0]), make_governor)
    env = gym.make(TINY_ID, **ENV, scenarios=["tiny/ref"])
    obs, _ = env.reset(seed=1)
    space = Envelope(SETTINGS.envelope).action_space
    done, start, scales = False, True, []
    while not done:
        action, _ = governor.predict(obs, episode_start=np.array([start]), deterministic=True)
        assert space.contains(action)
        obs, _, terminated, truncated, info = env.step(action)
        assert governor.base.scale == info["control"]["lr_scale"]
        scales.append(info["control"]["lr_scale"])
        start, done = False, terminated or truncated
    base = run_episode(make_governor("lbw_guard", SETTINGS.envelope), "tiny/ref", seed=1)
    assert max(scales) < max(c["lr_scale"] for c in base["controls"])


def test_codec_correction_units_and_bounds() -> None:
    codec = ActionCodec(EnvelopeConfig())
    base = codec.encode(1.0, 1.0, 6.0, True)  # hold, 6-sigma gate, rollback
    out = codec.correct(base, np.array([1.0, -1.0]), (0.25, 0.5))
    assert out.dtype == np.float32 and out[2] == base[2]  # the rollback is the base's
    assert out[0] == pytest.approx(0.25) and out[1] == pytest.approx(base[1] - 0.5)
    assert codec.scale_of(1.0, out) == pytest.approx(2.0**0.25, rel=1e-6)
    # Clipped to the action space: a correction cannot leave it, and the envelope bounds the rest.
    top = codec.correct(codec.encode(1.0, 2.0, float("inf")), np.array([1.0, 1.0]), (2.0, 2.0))
    assert top[0] == 1.0 and top[1] == 1.0
    assert lr.clean_correction([np.nan, 3.0]).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="continuous"):
        ActionCodec(EnvelopeConfig(action_mode="discrete")).correct(base, np.ones(2), (0.1, 0.1))


# ----------------------------------------------------------------------------------------------------------
# Files and bad input
# ----------------------------------------------------------------------------------------------------------


def test_governor_file_records_its_base_and_refuses_a_bad_one(tmp_path: Path) -> None:
    model = zero_model()
    folder = tmp_path / "g"
    save_policy_file(model, folder, SETTINGS, algorithm="ppo", residual=RESIDUAL)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["residual"] == {"base": "lbw_guard", "lr_bound": 0.25, "gate_bound": 0.5}
    assert load_policy_file(folder, "ppo").residual == RESIDUAL
    # The correction space is only valid with a residual record (and vice versa).
    with pytest.raises(ConfigError, match="action space does not match its envelope"):
        save_policy_file(model, tmp_path / "h", SETTINGS, algorithm="ppo")
    manifest["residual"]["lr_bound"] = 5.0
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"residual: lr_bound: expected a float in \(0, 2\]"):
        load_policy_file(folder, "ppo")
    manifest["residual"] = {"base": "nope", "lr_bound": 0.25, "gate_bound": 0.5}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"residual\.base: governor .nope.: unknown name"):
        make_governor(f"ppo:{folder}")


def test_bases_must_be_continuous_rules() -> None:
    with pytest.raises(ConfigError, match=r"needs env\.envelope\.action_mode: continuous"):
        lr.make_rules(RESIDUAL, EnvelopeConfig(action_mode="discrete"), make_governor)
    with pytest.raises(ConfigError, match="needs a governor factory"):
        lr.make_rules(RESIDUAL, EnvelopeConfig(), None)
    with pytest.raises(ConfigError, match=r"residual.gate_bound: expected a float in \(0, 2\]"):
        from lbw_env.config import from_dict

        from_dict(lr.ResidualConfig, {"base": "adamw", "gate_bound": 0}, "residual")


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------


def test_train_policy_trains_a_residual_governor_and_saves_its_base(
    lbw: None, tmp_path: Path, short_training: Callable[..., Path]
) -> None:
    """``residual.base: lbw_guard`` through the command line, with the return relative to the guard and a warm
    start: the policy acts in the correction space, the run's governor files name their base and load as
    residual governors; without the factory, train() refuses."""
    import train_policy
    from lbw_env import learning

    config = short_training(
        hyperparams={"n_steps": 8, "batch_size": 16, "n_epochs": 2, "policy_kwargs": {"net_arch": [16]}},
        residual={"base": "lbw_guard"},
        objective={"end_is_terminal": True, "relative_to": "lbw_guard", "seeds": 2, "correction_penalty": 0.01},
        warm_start={"episodes": 1, "bc_epochs": 0, "value_epochs": 2},
        eval={"scenarios": ["tiny/high_lr"], "seeds": 1, "eval_freq": 0, "at_start": True},
    )
    with pytest.raises(ConfigError, match="needs a governor factory"):
        learning.train(learning.load_config(config, [f"run_dir={tmp_path / 'other'}"]))
    assert not (tmp_path / "other").exists()
    assert train_policy.main(["--config", str(config)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["warm_start"]["teacher"] == "the residual base (zero correction)"
    # The warm start's policy is the base exactly: BC has nothing to do, the output layer is still zero.
    assert summary["warm_start"]["imitation_loss_before"] == 0.0
    # eval.at_start: the starting policy (the base exactly) is scored first, on the held-out episode with the
    # training objective, and competes for best_model: its score is the base's own, rollout by rollout.
    evaluations = np.load(tmp_path / "run" / "evaluations.npz")
    assert evaluations["timesteps"].tolist() == [0, 16]
    cfg = learning.load_config(config)
    kwargs = {**wrapper_kwargs(cfg, make_governor, training=False), **cfg.env_kwargs(), "scenarios": ["tiny/high_lr"]}
    base_env = make_env(cfg.env_id, cfg.eval_episodes(), **kwargs)
    base_env.reset()
    base_return, done = 0.0, False
    while not done:
        _, reward, terminated, truncated, _ = base_env.step(np.zeros(2, dtype=np.float32))
        base_return, done = base_return + float(reward), terminated or truncated
    assert evaluations["results"][0].tolist() == pytest.approx([base_return], abs=1e-6)
    assert summary["best_eval_mean_reward"] >= base_return - 1e-6
    for name in ("best_model", "final/model"):
        governor = make_governor(f"ppo:{tmp_path / 'run' / name}")
        assert isinstance(governor, ResidualGovernor) and governor.config.base == "lbw_guard"
        assert governor.learned.action_space == lr.correction_space()  # type: ignore[union-attr]
    # A residual run's SB3 zip converts to a residual governor (its base from the run's config.yaml), acting alike.
    from lbw_env.learning.convert import convert

    converted = convert(tmp_path / "run" / "best_model.zip", tmp_path / "converted", trust_pickle=True)
    governor = make_governor(f"ppo:{converted}")
    assert isinstance(governor, ResidualGovernor) and governor.config == lr.ResidualConfig(base="lbw_guard")
    # ... and so does the zip itself, loaded with trust: never as a policy acting alone in the correction space.
    trusted = make_governor(f"ppo:{tmp_path / 'run' / 'best_model.zip'}", trust_pickle=True)
    assert isinstance(trusted, ResidualGovernor) and trusted.config == governor.config
    with pytest.raises(ConfigError, match=r"residual\.base: a residual correction needs continuous actions"):
        learning.load_config(config, ["env.envelope.action_mode=discrete"])


def test_the_correction_penalty_is_taken_off_the_reward() -> None:
    class Stub(gym.Env[np.ndarray, np.ndarray]):
        observation_space = SETTINGS.observation_space()
        action_space = SETTINGS.action_space()

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
            return np.zeros(self.observation_space.shape, np.float32), {}

        def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
            return np.zeros(self.observation_space.shape, np.float32), 1.0, False, False, {}

    env = lr.ResidualActions(Stub(), lr.make_rules(RESIDUAL, SETTINGS.envelope, make_governor), RESIDUAL, 0.25)
    env.reset()
    _, reward, _, _, info = env.step(np.array([1.0, -1.0], dtype=np.float32))
    assert reward == 1.0 - 0.25 * 2 and info["residual"] == {"correction": [1.0, -1.0], "penalty": -0.5}


def test_the_correction_penalty_shapes_training_only(lbw: None) -> None:
    """Held-out evaluation (model selection) scores the metric: no penalty on the correction there."""
    objective = ObjectiveConfig(correction_penalty=0.25)
    for training, penalty in ((True, 0.25), (False, 0.0)):
        env = make_env(TINY_ID, None, RESIDUAL, make_governor, objective, training=training, **ENV)
        assert isinstance(env, lr.ResidualActions) and env.penalty == penalty
        env.close()
