"""``LBWEnv``: Gymnasium/SB3 compliance, spaces, vectorisation, determinism, the envelope, faults and the reward.

Episodes here are real training runs of the tiny family, shortened through the env's own config
(``trainer_overrides``), so that every behaviour is checked end to end on the CPU in about two minutes.
The envelope and the skip budget are property-tested with hypothesis directly on their classes (no model).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import math
import pickle
import re
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv

import lbw_env
from lbw_env import ENV_IDS, FEATURE_NAMES, LBWEnv
from lbw_env.control.envelope import Envelope, EnvelopeConfig
from lbw_env.control.features import OBS_BOUND
from lbw_env.control.reward import capped
from lbw_env.plant.optimizer import Control, GateConfig, GovernedOptimizer
from lbw_env.render import FRAME_HEIGHT, FRAME_WIDTH

TINY_ID = "LBW/WikiText-Tiny-v0"
SHORT = ["optim.steps=32", "base_steps=8", "runtime.threads=1"]
"""Tiny episodes of 32 optimizer steps = 4 decisions of 8 steps (about a second on one core); fine-tune scenarios
of the pool start from an 8-step base checkpoint instead of spending seconds pretraining one."""
CHECK_OVERRIDES = ["optim.steps=16", "base_steps=8", "data.eval_blocks=4", "runtime.threads=1"]
"""For the API checkers on every id: short episodes and an 8-step base checkpoint for fine-tune regimes."""
CHECK_SHRINK = {"trainer_overrides": ["data.seq_len=32", "data.batch_size=2"], "decision_interval": 4}
"""On top of CHECK_OVERRIDES, by default: smaller batches and decisions, so that qwen2-m scenarios cost ~50 ms a
decision (the registered sizes, up to ~2 s a decision, are checked by the ``slow`` variant)."""
COST_TERMS = ("skip_cost", "rollback_cost", "divergence_penalty")


def shock(start: int, magnitude: float, length: int = 8) -> str:
    """A ``faults=`` override: one LR shock (it replaces the scenario's own faults)."""
    return f"faults=[{{kind: lr_shock, start: {start}, length: {length}, magnitude: {magnitude}}}]"


# ----------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ----------------------------------------------------------------------------------------------------------


def make_env(
    scenarios: Sequence[str] = ("tiny/ref",), overrides: Sequence[str] = (), render_mode: str | None = None, **cfg: Any
) -> LBWEnv:
    """A tiny-family env through the registered id (its spec included), unwrapped, with short episodes."""
    config = {"scenarios": list(scenarios), "trainer_overrides": [*SHORT, *overrides], **cfg}
    env = gym.make(TINY_ID, config=config, render_mode=render_mode).unwrapped
    assert isinstance(env, LBWEnv)
    return env


@dataclasses.dataclass
class Episode:
    """Everything one episode returned."""

    reset_obs: np.ndarray
    reset_info: dict[str, Any]
    obs: list[np.ndarray] = dataclasses.field(default_factory=list)
    rewards: list[float] = dataclasses.field(default_factory=list)
    terminated: list[bool] = dataclasses.field(default_factory=list)
    truncated: list[bool] = dataclasses.field(default_factory=list)
    infos: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def final(self) -> dict[str, Any]:
        return self.infos[-1]["final"]

    @property
    def records(self) -> list[Any]:
        return [r for info in self.infos for r in info["records"]]


Policy = Callable[[LBWEnv, int], Any]


def neutral(env: LBWEnv, i: int) -> Any:
    """Plain AdamW: hold the LR scale, never skip."""
    return env.envelope.neutral_action()


def random_policy(seed: int) -> Policy:
    """Actions drawn from the action space with its own seeded generator."""

    def act(env: LBWEnv, i: int) -> Any:
        if i == 0:
            env.action_space.seed(seed)
        return env.action_space.sample()

    return act


def run_episode(
    env: gym.Env,
    policy: Policy = neutral,
    seed: int | None = 0,
    options: dict[str, Any] | None = None,
    before_step: Callable[[int], None] | None = None,
) -> Episode:
    """Reset, then step with ``policy`` until ``terminated`` or ``truncated``."""
    obs, info = env.reset(seed=seed, options=options)
    ep = Episode(obs, info)
    unwrapped = env.unwrapped
    assert isinstance(unwrapped, LBWEnv)
    for i in range(10_000):
        if before_step is not None:
            before_step(i)
        obs, reward, terminated, truncated, info = env.step(policy(unwrapped, i))
        ep.obs.append(obs)
        ep.rewards.append(reward)
        ep.terminated.append(terminated)
        ep.truncated.append(truncated)
        ep.infos.append(info)
        if terminated or truncated:
            return ep
    raise AssertionError("the episode never ended")


def assert_valid_obs(space: gym.spaces.Box, obs: np.ndarray) -> None:
    assert isinstance(obs, np.ndarray)
    assert obs.dtype == np.float32
    assert obs.shape == space.shape
    assert np.isfinite(obs).all()
    assert space.contains(obs), f"observation outside {space}: min {obs.min()}, max {obs.max()}"


# ----------------------------------------------------------------------------------------------------------
# API compliance: Gymnasium's and SB3's checkers on every registered id
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["shrunk", pytest.param("registered", marks=pytest.mark.slow)])
@pytest.mark.parametrize("env_id", list(ENV_IDS))
def test_checkers_pass_on_every_id(lbw: None, env_id: str, size: str) -> None:
    # The id's own pool, passed again: a ``config`` given to make() replaces the registered one entirely.
    config: dict[str, Any] = {"scenarios": ENV_IDS[env_id], "trainer_overrides": CHECK_OVERRIDES}
    if size == "shrunk":
        config["trainer_overrides"] = [*CHECK_OVERRIDES, *CHECK_SHRINK["trainer_overrides"]]
        config["decision_interval"] = CHECK_SHRINK["decision_interval"]
    env = gym.make(env_id, config=config).unwrapped
    assert env.spec is not None and env.spec.id == env_id
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env, skip_render_check=False, skip_close_check=False)
    complaints = [str(w.message) for w in caught if "WARN" in str(w.message)]
    assert not complaints, f"gymnasium's checker complained: {complaints}"

    for mode in ("ansi", "rgb_array"):
        env = gym.make(env_id, config=config, render_mode=mode).unwrapped
        sb3_check_env(env, warn=True, skip_render_check=False)
        env.close()


# ----------------------------------------------------------------------------------------------------------
# Spaces, in both action modes, with and without the rollback action
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rollback_action", [False, True], ids=["no_rollback", "rollback_action"])
@pytest.mark.parametrize("mode", ["continuous", "discrete"])
def test_spaces_and_whole_episodes(lbw: None, mode: str, rollback_action: bool) -> None:
    envelope = {"action_mode": mode, "rollback_action": rollback_action, "max_rollbacks": 8}
    # The NaN burst and a shock are moved into the short episode so that rollbacks and non-finite rows show up.
    faults = "faults=[{kind: nan_loss, start: 4, length: 8}, {kind: lr_shock, start: 16, length: 4, magnitude: 300}]"
    env = make_env(["tiny/ref"], [faults], envelope=envelope)
    n = 3 if rollback_action else 2
    if mode == "continuous":
        assert env.action_space == gym.spaces.Box(-1.0, 1.0, (n,), dtype=np.float32)
    else:
        cfg = EnvelopeConfig()
        nvec = [cfg.lr_bins, cfg.gate_bins] + ([2] if rollback_action else [])
        assert env.action_space == gym.spaces.MultiDiscrete(nvec)
    assert env.observation_space == gym.spaces.Box(
        -OBS_BOUND, OBS_BOUND, (env.cfg.window * len(FEATURE_NAMES),), dtype=np.float32
    )
    assert env.envelope.neutral_action() in env.action_space

    for seed in (0, 1):
        ep = run_episode(env, random_policy(seed), seed=seed)
        assert_valid_obs(env.observation_space, ep.reset_obs)
        for obs in ep.obs:
            assert_valid_obs(env.observation_space, obs)
        assert all(isinstance(r, float) and math.isfinite(r) for r in ep.rewards)
        assert all(type(x) is bool for x in ep.terminated + ep.truncated)
        assert ep.truncated[-1] or ep.terminated[-1]
        assert any(r.nonfinite for r in ep.records), "the NaN burst should have reached the telemetry"


# ----------------------------------------------------------------------------------------------------------
# Vectorised: Gymnasium sync / async and SB3 SubprocVecEnv run whole episodes
# ----------------------------------------------------------------------------------------------------------

DECISIONS = 4  # 32 steps / 8 per decision


@pytest.fixture
def vec_config(lbw: None, shared_data: Path, lbw_cache: Path) -> dict[str, Any]:
    """Config for worker processes. Data root and cache are explicit: a forkserver started earlier in the session
    would hand its workers the environment of that moment, not this test's ``$LBW_DATA_DIR``."""
    paths = [f"data.root={shared_data}", f"runtime.cache_dir={lbw_cache}"]
    return {"scenarios": ["tiny:train"], "trainer_overrides": [*SHORT, *paths]}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_gymnasium_vector_envs(vec_config: dict[str, Any], mode: str) -> None:
    envs = gym.make_vec(TINY_ID, num_envs=2, vectorization_mode=mode, config=vec_config)
    try:
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (2, *envs.single_observation_space.shape) and obs.dtype == np.float32
        ended_at: list[list[int]] = [[], []]
        for t in range(1, 2 * DECISIONS + 1):
            obs, rewards, terminated, truncated, info = envs.step(envs.action_space.sample())
            assert np.isfinite(rewards).all()
            for i in range(2):
                assert envs.single_observation_space.contains(obs[i])
                if terminated[i] or truncated[i]:
                    ended_at[i].append(t)
                    assert info["_final"][i] and not info["final"]["diverged"][i]
                    assert truncated[i] and not terminated[i]
            if all(ended_at):
                break
        # Next-step autoreset: an episode ends after exactly DECISIONS steps, in every sub-env.
        assert ended_at == [[DECISIONS], [DECISIONS]]
    finally:
        envs.close()


def test_sb3_subproc_vec_env(vec_config: dict[str, Any]) -> None:
    # SB3's make_vec_env asks for render_mode="rgb_array" (as here) unless told. The "module:id" form imports
    # lbw_env (which registers the ids) in the forkserver's fresh worker processes, whose __main__ is pytest's;
    # a user script that imports lbw_env needs no prefix (tests/test_sb3_quickstart.py runs one).
    envs = make_vec_env(
        f"lbw_env:{TINY_ID}", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv, env_kwargs={"config": vec_config}
    )
    try:
        obs = envs.reset()
        assert obs.shape == (2, *envs.observation_space.shape) and obs.dtype == np.float32
        for t in range(1, DECISIONS + 1):
            actions = np.stack([envs.action_space.sample() for _ in range(2)])
            obs, rewards, dones, infos = envs.step(actions)
            assert np.isfinite(obs).all() and np.isfinite(rewards).all()
            assert list(dones) == [t == DECISIONS] * 2
        for info in infos:
            assert envs.observation_space.contains(info["terminal_observation"])
            assert info["TimeLimit.truncated"] and not info["final"]["diverged"]
    finally:
        envs.close()


# ----------------------------------------------------------------------------------------------------------
# Determinism and reset cost
# ----------------------------------------------------------------------------------------------------------

FAULTS = (
    "faults=[{kind: grad_noise, start: 2, length: 6, magnitude: 2.0}, {kind: bad_batch, start: 10, length: 2},"
    " {kind: nan_loss, start: 14, length: 1}, {kind: lr_shock, start: 20, length: 3, magnitude: 20.0}]"
)


def comparable(ep: Episode) -> tuple[Any, ...]:
    """An episode minus wall-clock measurements (StepRecord.seconds is excluded from equality by design)."""
    infos = []
    for info in ep.infos:
        info = dict(info)
        if "final" in info:
            info["final"] = {k: v for k, v in info["final"].items() if k not in ("wall_time", "train_seconds")}
        infos.append(info)
    return (ep.reset_info, ep.rewards, ep.terminated, ep.truncated, infos)


def test_determinism_same_seed_same_actions(lbw: None) -> None:
    a = make_env(["tiny:train"], [FAULTS])
    b = make_env(["tiny:train"], [FAULTS])
    first = run_episode(a, random_policy(5), seed=11)
    again = run_episode(b, random_policy(5), seed=11)  # a fresh env
    cached = run_episode(a, random_policy(5), seed=11)  # the same env, from its cached initial state
    for other in (again, cached):
        assert np.array_equal(first.reset_obs, other.reset_obs)
        assert len(first.obs) == len(other.obs)
        assert all(np.array_equal(x, y) for x, y in zip(first.obs, other.obs))
        assert first.records == other.records
        assert comparable(first) == comparable(other)
    assert any(r.skipped for r in first.records), "the faults should have made the run non-trivial"

    # A different seed: another run seed (and maybe scenario), so other batches, weights and losses.
    different = run_episode(a, random_policy(5), seed=12)
    assert different.reset_info["run_seed"] != first.reset_info["run_seed"]
    assert [r.loss for r in different.records] != [r.loss for r in first.records]


def test_reset_same_seed_twice(lbw: None) -> None:
    env = make_env(["tiny:train"])
    obs1, info1 = env.reset(seed=3)
    obs1 = obs1.copy()
    env.step(env.envelope.neutral_action())
    obs2, info2 = env.reset(seed=3)
    assert np.array_equal(obs1, obs2) and obs1.dtype == np.float32
    assert info1 == info2
    _, info3 = env.reset(seed=4)
    assert info3["run_seed"] != info1["run_seed"]


def test_reset_costs_no_more_than_a_decision(lbw: None) -> None:
    env = make_env(["tiny/ref"], ["optim.steps=64"])
    env.reset(seed=0)  # the first reset builds the trainer and the corpus: not measured
    steps = []
    for _ in range(6):
        t0 = time.perf_counter()
        env.step(env.envelope.neutral_action())
        steps.append(time.perf_counter() - t0)
    cached, fresh = [], []
    for seed in range(1, 6):
        t0 = time.perf_counter()
        env.reset(seed=seed)  # a new run seed: a fresh initialisation and a validation pass
        fresh.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        env.reset(seed=seed)  # the same seed again: a copy from the initial-state cache
        cached.append(time.perf_counter() - t0)
    step = statistics.median(steps)
    assert statistics.median(cached) <= step, (cached, steps)
    assert statistics.median(fresh) <= step, (fresh, steps)


# ----------------------------------------------------------------------------------------------------------
# The envelope, property-tested (no model)
# ----------------------------------------------------------------------------------------------------------

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-3.0, 3.0),
    st.integers(-(2**40), 2**40),
    st.sampled_from([0.0, -1.0, 1.0, 0.9, 1e300, -1e300, 1e-300, math.inf, -math.inf, math.nan]),
)
"""Continuous action values: anything real; NaN, inf and out-of-range values are clamped and counted."""
bins = st.one_of(
    st.integers(-(2**40), 2**40),
    st.integers(-3, 12).map(float),
    st.sampled_from([1e300, -1e300, math.inf, -math.inf, math.nan]),
)
"""Discrete action values: integral (ints or floats) or non-finite; fractions are refused (tests/test_envelope.py)."""


@st.composite
def envelope_configs(draw: st.DrawFn) -> EnvelopeConfig:
    lo = draw(st.floats(1e-3, 1.0))
    init = lo * draw(st.floats(1.0, 10.0))
    gate_min = draw(st.floats(0.1, 5.0))
    cfg = EnvelopeConfig(
        action_mode=draw(st.sampled_from(["continuous", "discrete"])),
        lr_scale_min=lo,
        lr_scale_init=init,
        lr_scale_max=init * draw(st.floats(1.0, 10.0)),
        max_factor=draw(st.floats(1.01, 10.0)),
        max_cut=draw(st.floats(1.01, 20.0)),
        gate_min=gate_min,
        gate_max=gate_min + draw(st.floats(0.0, 10.0)),
        never_above=draw(st.floats(-0.9, 1.0)),
        lr_bins=draw(st.sampled_from([3, 5, 7, 9])),
        gate_bins=draw(st.integers(2, 9)),
        rollback_action=draw(st.booleans()),
    )
    cfg.validate()
    return cfg


@settings(max_examples=150, deadline=None)
@given(cfg=envelope_configs(), data=st.data())
def test_envelope_bounds_any_action_sequence(cfg: EnvelopeConfig, data: st.DataObject) -> None:
    env = Envelope(cfg)
    n = env.action_space.shape[0]
    values = numbers if cfg.action_mode == "continuous" else bins
    actions = data.draw(st.lists(st.lists(values, min_size=n, max_size=n), max_size=40))
    hi = np.ones(n) if cfg.action_mode == "continuous" else np.asarray(env.action_space.nvec) - 1.0
    lo = -np.ones(n) if cfg.action_mode == "continuous" else np.zeros(n)
    for raw in actions:
        # As a policy hands it over: a float32 array (huge values overflow to inf), or a plain list.
        as_float32 = data.draw(st.booleans())
        with np.errstate(over="ignore"):
            action: Any = np.asarray(raw, dtype=np.float32) if as_float32 else raw
        a = np.asarray(action, dtype=np.float64)
        before = dict(env.interventions)
        old = env.lr_scale
        decision = env.decode(action)
        lr = decision.control.lr_scale
        assert cfg.lr_scale_min <= lr <= cfg.lr_scale_max
        assert lr == env.lr_scale
        factor = lr / old
        assert 1.0 / cfg.max_cut * (1 - 1e-9) <= factor <= cfg.max_factor * (1 + 1e-9)
        assert math.isclose(decision.lr_move, factor, rel_tol=1e-12)
        gate = decision.control.skip_gate
        assert gate == math.inf or cfg.gate_min <= gate <= cfg.gate_max
        assert isinstance(decision.rollback_requested, bool)
        assert decision.rollback_requested is False or cfg.rollback_action
        # Every correction is counted, once per decision: NaN (-> neutral), and inf or out of range (-> bound).
        nan = np.isnan(a)
        out_of_range = bool(np.any(((a < lo) | (a > hi)) & ~nan))
        assert env.interventions["action_nonfinite"] - before["action_nonfinite"] == int(nan.any())
        assert env.interventions["action_clipped"] - before["action_clipped"] == int(out_of_range)
        assert env.interventions["lr_scale_bounded"] - before["lr_scale_bounded"] in (0, 1)
        assert env.interventions["rollbacks"] == 0


@settings(max_examples=100, deadline=None)
@given(cfg=envelope_configs(), moves=st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=30))
def test_envelope_counts_lr_bounding(cfg: EnvelopeConfig, moves: list[float]) -> None:
    cfg = dataclasses.replace(cfg, action_mode="continuous")
    env = Envelope(cfg)
    for m in moves:
        old = env.lr_scale
        target = old * (cfg.max_factor**m if m >= 0 else cfg.max_cut**m)
        before = env.interventions["lr_scale_bounded"]
        action = np.zeros(env.action_space.shape, dtype=np.float64)
        action[0] = m
        env.decode(action)
        outside = target < cfg.lr_scale_min * (1 - 1e-9) or target > cfg.lr_scale_max * (1 + 1e-9)
        inside = cfg.lr_scale_min * (1 + 1e-9) < target < cfg.lr_scale_max * (1 - 1e-9)
        bounded = env.interventions["lr_scale_bounded"] - before
        if outside:
            assert bounded == 1
        if inside:
            assert bounded == 0 and math.isclose(env.lr_scale, target, rel_tol=1e-12)


@pytest.mark.parametrize("mode", ["continuous", "discrete"])
@pytest.mark.parametrize("rollback_action", [False, True])
def test_envelope_wrong_shape_raises(mode: str, rollback_action: bool) -> None:
    env = Envelope(EnvelopeConfig(action_mode=mode, rollback_action=rollback_action))
    n = 3 if rollback_action else 2
    for bad in ([], [0.0] * (n - 1), [0.0] * (n + 1), np.zeros((n + 1, 2)), 0.5):
        with pytest.raises(ValueError, match=re.escape(f"({n},)")):
            env.decode(bad)
    with pytest.raises(ValueError, match=f"expected {n} numbers"):
        env.decode(["lr", "gate"][:n] + ["x"] * (n - 2))
    assert env.lr_scale == EnvelopeConfig().lr_scale_init  # a refused action moves nothing


def test_envelope_nan_means_neutral_and_inf_the_bound() -> None:
    env = Envelope(EnvelopeConfig())
    d = env.decode([math.nan, math.nan, math.nan])
    assert d.control.lr_scale == 1.0 and d.control.skip_gate == math.inf and not d.rollback_requested
    assert env.interventions["action_nonfinite"] == 1
    d = env.decode([math.inf, -math.inf, -math.inf])
    assert d.control.lr_scale == 2.0 and d.control.skip_gate == env.cfg.gate_min
    assert env.interventions["action_clipped"] == 1
    d = env.decode([-1e30, 1e30, math.inf])
    assert d.control.lr_scale == 2.0 / env.cfg.max_cut and d.control.skip_gate == math.inf and d.rollback_requested


# ----------------------------------------------------------------------------------------------------------
# The skip budget, property-tested on GovernedOptimizer with a tiny module
# ----------------------------------------------------------------------------------------------------------

steps_strategy = st.lists(
    st.tuples(
        st.one_of(st.floats(0.0, 10.0), st.floats(10.0, 1e6), st.sampled_from([math.nan, math.inf])),  # loss
        st.floats(1e-4, 1e4),  # gradient scale
        st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0, math.inf]),  # skip gate
    ),
    min_size=1,
    max_size=160,
)


@settings(max_examples=40, deadline=None)
@given(
    steps=steps_strategy,
    fraction=st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]),
    window=st.integers(1, 40),
)
def test_gate_skips_within_budget_in_every_window(
    steps: list[tuple[float, float, float]], fraction: float, window: int
) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gate = GateConfig(stats_warmup=2, max_skip_fraction=fraction, budget_window=window)
    governed = GovernedOptimizer(optimizer, gate=gate)
    skipped_by_gate: list[bool] = []
    for loss, grad, skip_gate in steps:
        for p in model.parameters():
            p.grad = torch.full_like(p, grad)
        record = governed.step(loss, Control(skip_gate=skip_gate))
        skipped_by_gate.append(record.skip_reason == "gate")
        if not math.isfinite(loss):
            assert record.skip_reason == "nonfinite"
    budget = fraction * window
    for end in range(1, len(skipped_by_gate) + 1):
        assert sum(skipped_by_gate[max(0, end - window) : end]) <= budget + 1e-9


def test_skip_budget_binds() -> None:
    """A gate that wants every step skipped gets exactly its budget, not more and not (much) less."""
    model = torch.nn.Linear(3, 2)
    gate = GateConfig(stats_warmup=2, max_skip_fraction=0.25, budget_window=32)
    governed = GovernedOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), gate=gate)
    reasons = []
    for t in range(200):
        for p in model.parameters():
            p.grad = torch.full_like(p, 1.0)
        reasons.append(governed.step(float(t), Control(skip_gate=0.0)).skip_reason)  # a rising loss: z > 0
    late = reasons[-64:]
    assert 14 <= late.count("gate") <= 16


# ----------------------------------------------------------------------------------------------------------
# Faults: NaN batches, runaways, exhausted rollbacks, exceptions
# ----------------------------------------------------------------------------------------------------------


def test_nan_batch_is_skipped_and_weights_unchanged(lbw: None) -> None:
    env = make_env(["tiny/ref"], ["faults=[{kind: nan_loss, start: 9, length: 3}]"])
    env.reset(seed=0)
    trainer = env.trainer
    assert trainer is not None
    real_step = trainer.step
    checked = []

    def spy(control: Control = Control()) -> Any:
        params = [p.detach().clone() for p in trainer.params]
        moments = [{k: v.clone() for k, v in trainer.optimizer.state.get(p, {}).items()} for p in trainer.params]
        record = real_step(control)
        if record.skip_reason == "nonfinite":
            assert all(torch.equal(a, p) for a, p in zip(params, trainer.params)), "a NaN step changed the weights"
            for saved, p in zip(moments, trainer.params):
                now = trainer.optimizer.state.get(p, {})
                assert saved.keys() == now.keys() and all(torch.equal(saved[k], now[k]) for k in saved)
            checked.append(record.step)
        return record

    trainer.step = spy  # type: ignore[method-assign]
    ep = run_episode(env, seed=1)  # the same trainer object: the spy stays in place
    for info in ep.infos:
        for r in info["records"]:
            if 9 <= r.step < 12:
                assert r.skipped and r.nonfinite and r.skip_reason == "nonfinite" and r.lr == 0.0
            else:
                assert not r.skipped and math.isfinite(r.loss)
    assert checked == [9, 10, 11]
    assert all(info["rollback"] == "" for info in ep.infos)  # a short burst is below the streak limit
    assert ep.truncated[-1] and not ep.terminated[-1]
    assert math.isfinite(ep.final["valid_loss"])


AUTO = {"auto_rollback": True}
"""The envelope rolling back by itself (off by default, as in the evaluation suites)."""


def test_runaway_loss_rolls_back_to_good_weights(lbw: None) -> None:
    env = make_env(["tiny/ref"], ["optim.steps=48", shock(24, 1000.0)], envelope=AUTO)
    boundary: list[float] = []  # validation loss at every decision boundary (evaluate() changes no state)
    ep = run_episode(env, seed=0, before_step=lambda i: boundary.append(env.trainer.evaluate("valid").loss))
    reasons = [info["rollback"] for info in ep.infos]
    assert "runaway" in reasons, reasons
    k = reasons.index("runaway")
    assert ep.infos[k]["interventions"]["rollbacks"] == 1
    assert ep.infos[k]["reward_terms"]["rollback_cost"] < 0
    assert ep.infos[k]["step"] > 24  # the shock came first
    pre_shock = boundary[3]  # after step 24 = 3 decisions of 8
    # Right after the rollback the weights are exactly an earlier boundary's (the last good snapshot) ...
    restored = boundary[k + 1]
    assert min(abs(restored - b) for b in boundary[: k + 1]) < 1e-6, (restored, boundary)
    # ... so the validation loss is back near its pre-shock value (instead of the damaged run's).
    assert restored <= pre_shock + 0.5, (restored, pre_shock)
    assert not any(ep.terminated) and ep.truncated[-1]
    assert ep.final["rollbacks"] == 1 and not ep.final["diverged"]


def test_exhausted_rollbacks_terminate(lbw: None) -> None:
    env = make_env(["tiny/ref"], [shock(8, 1e4, length=24)], envelope={**AUTO, "max_rollbacks": 0})
    ep = run_episode(env, seed=0)
    assert ep.terminated[-1] and not ep.truncated[-1]
    assert not any(ep.truncated)
    assert ep.infos[-1]["rollback"] in ("runaway", "nonfinite")
    assert ep.final["diverged"] is True and ep.final["rollbacks"] == 0
    assert ep.infos[-1]["reward_terms"]["divergence_penalty"] == -env.cfg.reward.divergence_penalty
    assert ep.final["steps"] < 32
    with pytest.raises(RuntimeError, match="episode ended"):
        env.step(env.envelope.neutral_action())


def test_requested_rollbacks_within_budget_then_refused(lbw: None) -> None:
    env = make_env(["tiny/ref"], envelope={"rollback_action": True, "max_rollbacks": 1})
    ask = np.array([0.0, 1.0, 1.0], dtype=np.float32)
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(ask)
    assert info["rollback"] == "requested" and not terminated and not truncated
    assert info["interventions"]["rollbacks"] == 1 and info["reward_terms"]["rollback_cost"] < 0
    # Beyond the budget a healthy run's request is refused and counted; the run goes on.
    _, _, terminated, truncated, info = env.step(ask)
    assert not terminated and not truncated
    assert info["interventions"]["rollbacks"] == 1 and info["interventions"]["rollback_refused"] == 1
    assert info["reward_terms"]["rollback_cost"] == 0.0

    # Discrete mode, no rollback budget at all.
    env = make_env(["tiny/ref"], envelope={"action_mode": "discrete", "rollback_action": True, "max_rollbacks": 0})
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(np.array([2, 4, 1]))
    assert not terminated and info["interventions"]["rollback_refused"] == 1


def test_requesting_governor_cannot_mask_divergence(lbw: None) -> None:
    """A run that diverges with the budget spent terminates, even if the governor keeps asking for rollbacks."""
    env = make_env(["tiny/ref"], [shock(8, 1e4, length=24)], envelope={**AUTO, "max_rollbacks": 0})
    ask = lambda env, i: np.array([0.0, 1.0, 1.0], dtype=np.float32)  # noqa: E731
    ep = run_episode(env, ask, seed=0)
    assert ep.terminated[-1] and not ep.truncated[-1], [info["rollback"] for info in ep.infos]
    assert ep.final["diverged"] is True and ep.final["steps"] < 32


def test_training_exception_propagates(lbw: None) -> None:
    env = gym.make(TINY_ID, config={"scenarios": ["tiny/ref"], "trainer_overrides": SHORT})
    env.reset(seed=0)
    trainer = env.unwrapped.trainer

    def broken(control: Control = Control()) -> Any:
        raise RuntimeError("CUDA error: device-side assert triggered (simulated)")

    trainer.step = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="simulated"):
        env.step(env.action_space.sample())


def test_step_before_reset_raises() -> None:
    env = LBWEnv({"scenarios": ["tiny/ref"]})
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(env.envelope.neutral_action())


# ----------------------------------------------------------------------------------------------------------
# Reward: the return telescopes, and it ranks runs like their validation perplexity
# ----------------------------------------------------------------------------------------------------------


def assert_telescopes(ep: Episode) -> None:
    """sum(rewards) == capped(initial valid loss) - capped(final valid loss) + costs, up to float error."""
    for reward, info in zip(ep.rewards, ep.infos):
        assert math.isclose(reward, sum(info["reward_terms"].values()), rel_tol=1e-12, abs_tol=1e-12)
    costs = sum(info["reward_terms"][k] for info in ep.infos for k in COST_TERMS)
    expected = capped(ep.final["initial_valid_loss"]) - capped(ep.final["valid_loss"]) + costs
    assert math.isclose(sum(ep.rewards), expected, rel_tol=1e-9, abs_tol=1e-9), (sum(ep.rewards), expected)


@pytest.mark.parametrize(
    ("case", "overrides", "envelope"),
    [
        ("random_actions", [FAULTS], {}),
        ("rollback", ["optim.steps=48", shock(24, 1000.0)], {"auto_rollback": True}),
        ("diverged", [shock(8, 1e4, length=24)], {"auto_rollback": True, "max_rollbacks": 0}),
    ],
)
def test_return_telescopes(lbw: None, case: str, overrides: list[str], envelope: dict[str, Any]) -> None:
    env = make_env(["tiny/ref"], overrides, envelope=envelope)
    policy = random_policy(3) if case == "random_actions" else neutral
    ep = run_episode(env, policy, seed=0)
    assert_telescopes(ep)
    costs = {k: sum(info["reward_terms"][k] for info in ep.infos) for k in COST_TERMS}
    if case == "random_actions":
        assert costs["skip_cost"] < 0, "random gates should have skipped something"
    elif case == "rollback":
        assert costs["rollback_cost"] < 0
    else:
        assert costs["divergence_penalty"] < 0 and ep.terminated[-1]


def test_return_orders_runs_like_validation_ppl(lbw: None) -> None:
    env = make_env(["tiny/ref"])
    cfg = env.cfg.envelope
    returns, ppls = [], []
    for scale in (1 / 8, 1 / 4, 1 / 2, 1.0, 2.0):
        move = math.log(scale) / math.log(cfg.max_factor if scale >= 1 else cfg.max_cut)

        def policy(env: LBWEnv, i: int, move: float = move) -> np.ndarray:
            return np.array([move if i == 0 else 0.0, 1.0, -1.0], dtype=np.float32)  # one move, hold; never skip

        ep = run_episode(env, policy, seed=0)
        assert all(math.isclose(info["control"]["lr_scale"], scale, rel_tol=1e-6) for info in ep.infos)
        assert_telescopes(ep)
        returns.append(sum(ep.rewards))
        ppls.append(ep.final["valid_ppl"])
    pairs = [(i, j) for i in range(len(ppls)) for j in range(i + 1, len(ppls))]
    distinct = [(i, j) for i, j in pairs if abs(math.log(ppls[i] / ppls[j])) > 1e-3]
    assert len(distinct) >= len(pairs) - 1, f"the LR scales should give different runs: {ppls}"
    discordant = [(i, j) for i, j in distinct if (returns[i] - returns[j]) * (ppls[j] - ppls[i]) <= 0]
    assert not discordant, f"returns {returns} vs ppl {ppls}"


# ----------------------------------------------------------------------------------------------------------
# Documentation and rendering
# ----------------------------------------------------------------------------------------------------------


def test_docstring_sections_and_feature_table() -> None:
    doc = LBWEnv.__doc__ or ""
    for section in (
        "Action Space",
        "Observation Space",
        "Rewards",
        "Starting State",
        "Episode End",
        "Arguments",
        "Version History",
    ):
        assert re.search(rf"^\s*#+\s*{section}\s*$", doc, re.MULTILINE), f"missing section {section!r}"
    rows = [line.strip() for line in doc.splitlines() if line.strip().startswith("|")]
    for i, name in enumerate(FEATURE_NAMES):
        assert any(re.match(rf"\|\s*{i}\s*\|\s*`*{name}`*\s*\|", row) for row in rows), f"no table row for {name}"
    assert "{" not in doc.replace("{...}", ""), "an unfilled template field in the docstring"
    assert str(len(FEATURE_NAMES)) in doc


def test_render_ansi(lbw: None) -> None:
    env = make_env(["tiny/ref"], render_mode="ansi")
    env.reset(seed=0)
    assert isinstance(env.render(), str)
    env.step(env.envelope.neutral_action())
    text = env.render()
    assert isinstance(text, str) and "tiny/ref" in text and "lr_scale" in text
    assert make_env(["tiny/ref"]).render() is None
    with pytest.raises(ValueError, match="render_mode"):
        LBWEnv({"scenarios": ["tiny/ref"]}, render_mode="human")


def test_render_rgb_array(lbw: None) -> None:
    """SB3 makes envs from an id with ``render_mode="rgb_array"``: a fixed-shape RGB image of the episode so far."""
    env = make_env(["tiny/ref"], ["faults=[{kind: nan_loss, start: 9, length: 2}]"], render_mode="rgb_array")
    blank = env.render()  # before any reset: a frame of the same shape (video recorders need one shape)
    assert isinstance(blank, np.ndarray) and blank.shape == (FRAME_HEIGHT, FRAME_WIDTH, 3) and blank.dtype == np.uint8
    env.reset(seed=0)
    started = env.render()
    ask = np.array([-0.5, 1.0, 1.0], dtype=np.float32)  # cut the LR and ask for a rollback, every decision
    ep = run_episode(env, lambda env, i: ask if i == 1 else env.envelope.neutral_action(), seed=0)
    frame = env.render()
    assert frame.shape == started.shape == blank.shape and frame.dtype == np.uint8
    assert not np.array_equal(frame, started) and frame.std() > 10  # drawn, not blank
    trace = env._trace
    assert trace is not None and trace.steps == list(range(32)) and sum(trace.skipped) == 2
    assert trace.rollbacks == [16] and trace.final_ppl == ep.final["valid_ppl"]
    assert trace.lr_scales[-1] == pytest.approx(env.cfg.envelope.max_cut**-0.5, rel=1e-6)
    assert env.metadata["render_modes"] == ["ansi", "rgb_array"] and env.metadata["render_fps"] > 0


def test_env_pickles_and_the_copy_steps_identically(lbw: None) -> None:
    """pickle and deepcopy mid-episode: the copies go on exactly as the original (records, observations, rewards).
    Plain pickling of the plant's tensors would lose the sharing of views (the norm buffers), so LBWEnv pickles
    through torch.save."""
    env = make_env(["tiny/ref", "tiny/ft_ref"], [FAULTS])
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, env.action_space.shape).astype(np.float32) for _ in range(DECISIONS)]
    env.reset(seed=1)
    env.step(actions[0])
    copies = [pickle.loads(pickle.dumps(env)), copy.deepcopy(env)]
    assert all(isinstance(c, LBWEnv) and c._initial == collections.OrderedDict() for c in copies)
    for action in actions[1:]:
        obs, reward, terminated, truncated, info = env.step(action)
        for c in copies:
            c_obs, c_reward, c_terminated, c_truncated, c_info = c.step(action)
            assert np.array_equal(obs, c_obs) and reward == c_reward
            assert (terminated, truncated) == (c_terminated, c_truncated)
            assert info["records"] == c_info["records"] and info["control"] == c_info["control"]
    assert truncated
    # The copy resets like the original (its initial-state cache was left out and is rebuilt).
    for c in copies:
        assert np.array_equal(c.reset(seed=3)[0], env.reset(seed=3)[0])
        assert c.step(actions[0])[4]["records"] == env.step(actions[0])[4]["records"]


def test_every_id_is_registered() -> None:
    for env_id, pool in ENV_IDS.items():
        spec = gym.spec(env_id)
        assert spec.entry_point == lbw_env.ENTRY_POINT
        assert spec.kwargs["scenarios"] == pool
        # An explicit config keeps the id's pool unless it names its own scenarios.
        env = gym.make(env_id, config={"window": 2}).unwrapped
        assert {s.name for s in env.pool} == {s.name for s in lbw_env.scenarios.resolve(pool)}
        assert all(s.split == "train" for s in env.pool)  # val selects, test reports: neither trains
        assert env.cfg.window == 2
