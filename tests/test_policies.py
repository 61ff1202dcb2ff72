"""Governors: the protocol, the registry, the action codec, and the LBW guard's rules on synthetic telemetry."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbw_env.config import ConfigError, config_dir
from lbw_env.control.envelope import Envelope, EnvelopeConfig
from lbw_env.control.features import FEATURE_NAMES, ObservationView
from lbw_env.control.protocol import Governor
from policies import available, make_governor, make_trusted_governor, register, registry
from policies.base import ActionCodec
from policies.rules import ConstantGovernor, GuardConfig, LBWGuard, load_guard_config

WINDOW = 4


def obs_with(**features: float) -> np.ndarray:
    """A flattened window whose newest row has ``valid=1`` and the given features (others 0)."""
    rows = np.zeros((WINDOW, len(FEATURE_NAMES)), dtype=np.float32)
    row = {"valid": 1.0, "log_lr": math.log10(3e-3) + 3.0, **features}
    for name, value in row.items():
        rows[-1, FEATURE_NAMES.index(name)] = value
    return rows.reshape(-1)


def reset_obs() -> np.ndarray:
    return np.zeros(WINDOW * len(FEATURE_NAMES), dtype=np.float32)


@pytest.mark.parametrize(
    "name",
    [
        "adamw",
        "lbw_guard",
        "lbw_guard_ratio",
        "lbw_guard_tuned",
        "lbw_guard_probe",
        "skip_step",
        "ewm_skip",
        "plateau",
        "fixed_scale:0.02",
        "fixed_scale_rollback:0.02",
    ],
)
@pytest.mark.parametrize("mode", ["continuous", "discrete"])
def test_rule_governors_follow_the_protocol_and_the_action_space(name: str, mode: str) -> None:
    cfg = EnvelopeConfig(action_mode=mode, rollback_action=True)
    gov = make_governor(name, cfg)
    assert isinstance(gov, Governor)
    space = Envelope(cfg).action_space
    action, state = gov.predict(reset_obs(), episode_start=np.ones(1, bool), deterministic=True)
    assert state is None and space.contains(action.astype(space.dtype))
    batched, _ = gov.predict(obs_with(loss=0.8)[None], episode_start=np.zeros(1, bool))
    assert batched.shape == (1, *space.shape)


def test_registry_names_and_errors() -> None:
    names = {"adamw", "lbw_guard", "skip_step", "ewm_skip", "plateau", "ppo", "a2c", "sac", "recurrent_ppo"}
    assert names <= set(available())
    with pytest.raises(ConfigError, match="unknown name 'nope'"):
        make_governor("nope")
    with pytest.raises(ConfigError, match="model file not found"):
        make_governor("ppo:/nonexistent/model.zip")
    with pytest.raises(ConfigError, match="expected ppo:<governor folder"):
        make_governor("ppo")


def test_specs_carry_their_argument() -> None:
    cfg = EnvelopeConfig()
    assert make_governor("skip_step:4.5", cfg).gate == 4.5  # type: ignore[attr-defined]
    assert make_governor("ewm_skip:1.5", cfg).ratio == 1.5  # type: ignore[attr-defined]
    guard_yaml = config_dir() / "governors" / "lbw_guard.yaml"  # absolute: tests must not depend on the cwd
    assert make_governor(f"lbw_guard:{guard_yaml}", cfg).gcfg == GuardConfig()  # type: ignore[attr-defined]


def test_make_governor_pickles_by_reference_and_custom_names_register(monkeypatch: pytest.MonkeyPatch) -> None:
    """Executors ship ``make_governor`` to process and Ray workers: it must pickle as a module-level name."""
    assert pickle.loads(pickle.dumps(make_governor)) is make_governor
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the test's name goes away after it

    @register("test_half_lr")
    def _half(envelope: EnvelopeConfig, arg: str) -> Governor:
        return ConstantGovernor(envelope, scale=0.5)

    assert "test_half_lr" in available()
    assert make_governor("test_half_lr").target == 0.5  # type: ignore[attr-defined]


def test_learned_names_are_reserved_and_the_trusted_factory_pickles() -> None:
    """``--trust-pickle`` hands the engine ``make_trusted_governor``: a module-level name, like make_governor."""
    assert pickle.loads(pickle.dumps(make_trusted_governor)) is make_trusted_governor
    assert make_trusted_governor("adamw").target == 1.0  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="reserved for learned governors"):
        register("ppo")


def test_adamw_is_the_neutral_action() -> None:
    for mode in ("continuous", "discrete"):
        cfg = EnvelopeConfig(action_mode=mode)
        env_neutral = Envelope(cfg).neutral_action()
        action, _ = ConstantGovernor(cfg).predict(obs_with(loss=0.9))
        decision = Envelope(cfg).decode(action)
        assert decision.control.lr_scale == 1.0 and math.isinf(decision.control.skip_gate)
        assert np.array_equal(Envelope(cfg).decode(env_neutral).control.lr_scale, decision.control.lr_scale)


@settings(max_examples=60, deadline=None)
@given(
    current=st.floats(0.005, 2.0),
    target=st.floats(1e-4, 10.0),
    gate=st.one_of(st.floats(0.5, 12.0), st.just(math.inf)),
    mode=st.sampled_from(["continuous", "discrete"]),
)
def test_codec_predicts_the_envelope(current: float, target: float, gate: float, mode: str) -> None:
    """What a rule governor believes the scale will be is exactly what the envelope applies."""
    cfg = EnvelopeConfig(action_mode=mode)
    codec, envelope = ActionCodec(cfg), Envelope(cfg)
    envelope.lr_scale = current
    decision = envelope.decode(codec.encode(current, target, gate))
    assert decision.control.lr_scale == pytest.approx(codec.scale_after(current, target), rel=1e-5)
    if math.isinf(gate):
        assert math.isinf(decision.control.skip_gate)
    elif mode == "continuous":
        assert decision.control.skip_gate == pytest.approx(min(max(gate, cfg.gate_min), cfg.gate_max), rel=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    sent=st.lists(st.one_of(st.floats(-1.5, 1.5), st.just(math.nan)), min_size=5, max_size=5),
    mode=st.sampled_from(["continuous", "discrete"]),
)
def test_a_rule_that_follows_another_policy_tracks_the_scale_the_envelope_reaches(sent: list[float], mode: str) -> None:
    """DAgger's labeller: after each answer the guard is told what was actually sent (here arbitrary actions,
    NaN and out-of-range values included) and its tracked scale stays the envelope's; following its own answers
    is exactly not following at all."""
    cfg = EnvelopeConfig(action_mode=mode)
    healthy = obs_with(loss=0.8, loss_trend=-0.2, log_update_ratio=0.5)
    follower, alone, envelope = LBWGuard(cfg), LBWGuard(cfg), Envelope(cfg)
    n = len(envelope.neutral_action())
    for i, move in enumerate(sent):
        obs = reset_obs() if i == 0 else healthy
        own, _ = alone.predict(obs, episode_start=np.array([i == 0]))
        answer, _ = follower.predict(obs, episode_start=np.array([i == 0]))
        assert np.array_equal(own, answer) or i > 0  # the same rule on the same observations, until it follows
        if mode == "continuous":
            action = np.asarray([move, 1.0, -1.0][:n], dtype=np.float32)
        else:
            bins = 0 if math.isnan(move) else int(np.clip(round((move + 1) * 2), 0, cfg.lr_bins - 1))
            action = np.asarray([bins, cfg.gate_bins - 1, 0][:n], dtype=np.int64)
        follower.follow(action)
        assert follower.scale == pytest.approx(envelope.decode(action).control.lr_scale, rel=1e-6)
    twin, solo = LBWGuard(cfg), LBWGuard(cfg)
    for i in range(5):
        obs = reset_obs() if i == 0 else healthy
        answer, _ = twin.predict(obs, episode_start=np.array([i == 0]))
        twin.follow(answer)
        assert np.array_equal(answer, solo.predict(obs, episode_start=np.array([i == 0]))[0])
        assert twin.scale == solo.scale


def test_guard_config_file_matches_the_dataclass() -> None:
    loaded = load_guard_config()
    assert loaded == GuardConfig()  # the YAML documents the defaults; the two must not drift


def run_guard(guard: LBWGuard, observations: list[np.ndarray]) -> list[tuple[float, float, bool]]:
    """Feed observations; return (scale the envelope applies, gate, rollback) per decision."""
    env = Envelope(guard.envelope)
    out = []
    start = True
    for obs in observations:
        action, _ = guard.predict(obs, episode_start=np.array([start]))
        start = False
        d = env.decode(action)
        out.append((d.control.lr_scale, d.control.skip_gate, d.rollback_requested))
        assert d.control.lr_scale == pytest.approx(guard.scale, rel=1e-6)  # float32 actions
    return out


def guard() -> LBWGuard:
    return LBWGuard(EnvelopeConfig(rollback_action=True), GuardConfig())


def test_guard_slow_start_then_grows_to_the_schedule_when_healthy() -> None:
    healthy = obs_with(loss=0.8, loss_trend=-0.2, log_update_ratio=0.5)
    steps = run_guard(guard(), [reset_obs()] + [healthy] * 5)
    scales = [s for s, _, _ in steps]
    assert scales[0] < 0.2  # slow start before any telemetry
    assert scales == sorted(scales) and scales[-1] == 1.0
    assert all(g == pytest.approx(GuardConfig().gate_stable, rel=1e-4) for _, g, _ in steps[1:])


def test_guard_backs_off_rolls_back_and_remembers_a_ceiling() -> None:
    healthy = obs_with(loss=0.8, loss_trend=-0.2, log_update_ratio=0.5)
    damaged = obs_with(loss=0.9, loss_vs_best=0.15, loss_trend=0.5, log_update_ratio=0.5)
    g = guard()
    steps = run_guard(g, [reset_obs(), healthy, healthy, healthy, healthy, damaged])
    before, (after, gate, rollback) = steps[-2][0], steps[-1]
    assert after <= before * GuardConfig().backoff * (1 + 1e-6) and rollback  # float32 actions
    assert gate == pytest.approx(GuardConfig().gate_alert, rel=1e-4)
    # After recovery it grows again, but only up to the remembered ceiling on the effective LR.
    steps = run_guard_continue(g, [healthy] * 8)
    assert max(s for s, _, _ in steps) < 1.0


def run_guard_continue(g: LBWGuard, observations: list[np.ndarray]) -> list[tuple[float, float, bool]]:
    env = Envelope(g.envelope)
    env.lr_scale = g.scale
    out = []
    for obs in observations:
        action, _ = g.predict(obs, episode_start=np.array([False]))
        d = env.decode(action)
        out.append((d.control.lr_scale, d.control.skip_gate, d.rollback_requested))
    return out


def test_guard_does_not_cut_the_lr_for_a_nan_batch() -> None:
    """Non-finite steps are skipped by the plant; they are no evidence against the LR (a tighter gate is)."""
    healthy = obs_with(loss=0.8, loss_trend=-0.2, log_update_ratio=0.5)
    nan_burst = obs_with(loss=0.8, skip_rate=0.5, nonfinite_rate=0.5, loss_z_max=5.0, log_update_ratio=0.5)
    steps = run_guard(guard(), [reset_obs(), *[healthy] * 4, nan_burst])
    assert steps[-1][0] == steps[-2][0] and not steps[-1][2]
    assert steps[-1][1] == pytest.approx(GuardConfig().gate_alert, rel=1e-4)


def test_guard_treats_a_huge_update_as_damage() -> None:
    healthy = obs_with(loss=0.8, loss_trend=-0.2, log_update_ratio=0.5)
    rewrite = obs_with(loss=0.8, log_update_ratio=math.log10(0.3) + 3.0)  # ‖Δθ‖/‖θ‖ = 0.3 per step
    steps = run_guard(guard(), [reset_obs(), *[healthy] * 4, rewrite])
    assert steps[-1][0] < steps[-2][0] and steps[-1][2]


def test_the_update_ratio_cap_follows_the_first_interval_and_keeps_the_rest_of_the_guard() -> None:
    """``target_update_ratio``: the scale is capped where the first interval's update ratio says the target lies,
    whatever comes later; off (``inf``, the shipped guard), the same telemetry grows to the full schedule."""
    first = obs_with(loss=0.8, loss_trend=-0.2, log_update_ratio=math.log10(0.01) + 3.0)  # ratio 1e-2
    healthy = obs_with(loss=0.8, loss_trend=-0.2, log_update_ratio=0.5)
    capped = LBWGuard(EnvelopeConfig(rollback_action=True), GuardConfig(target_update_ratio=0.02))
    steps = run_guard(capped, [reset_obs(), first, *[healthy] * 8])
    start = steps[0][0]  # the scale of the first interval: 2 x that gives a ratio of 0.02
    assert capped.ratio_cap == pytest.approx(2 * start, rel=1e-5)
    assert max(s for s, _, _ in steps) == pytest.approx(2 * start, rel=1e-5) and steps[-1][0] < 1.0
    assert [s for s, _, _ in run_guard(guard(), [reset_obs(), first, *[healthy] * 8])][-1] == 1.0
    # An unstable interval still backs off below the cap, and a new episode measures again.
    damaged = obs_with(loss=0.9, loss_vs_best=0.15, loss_trend=0.5, log_update_ratio=0.5)
    after = run_guard_continue(capped, [damaged])[0][0]
    assert after < 2 * start * GuardConfig().backoff * 1.01
    capped.reset()
    assert capped.ratio_cap == math.inf and not capped.ratio_measured
    with pytest.raises(ConfigError, match="target_update_ratio"):
        GuardConfig(target_update_ratio=0.0).validate()


def test_a_hot_probe_interval_asks_for_one_rollback() -> None:
    """``probe_rollback``: a first interval whose update ratio was more than that multiple of the target asks for a
    rollback with the next action (and only then); a cooler one, a run that already rolled back, or the default
    (``inf``) does not."""
    healthy = obs_with(loss=0.8, loss_trend=-0.2, log_update_ratio=0.5)

    def first(ratio: float, rollbacks: float = 0.0) -> np.ndarray:
        return obs_with(loss=0.8, loss_trend=-0.2, log_update_ratio=math.log10(ratio) + 3.0, rollbacks=rollbacks)

    cfg = GuardConfig(target_update_ratio=0.02, probe_rollback=1.5)
    env = EnvelopeConfig(rollback_action=True)
    hot = run_guard(LBWGuard(env, cfg), [reset_obs(), first(0.04), *[healthy] * 3])
    assert [r for _, _, r in hot] == [False, True, False, False, False]
    assert hot[1][0] == pytest.approx(hot[0][0] / 2, rel=1e-5)  # the next interval already runs at the cap
    assert not any(r for _, _, r in run_guard(LBWGuard(env, cfg), [reset_obs(), first(0.025), healthy]))
    assert not any(r for _, _, r in run_guard(LBWGuard(env, cfg), [reset_obs(), first(0.04, 1 / 3), healthy]))
    off = GuardConfig(target_update_ratio=0.02)
    assert not any(r for _, _, r in run_guard(LBWGuard(env, off), [reset_obs(), first(0.04), healthy]))
    with pytest.raises(ConfigError, match="probe_rollback"):
        GuardConfig(probe_rollback=0.5).validate()


def test_the_fixed_scale_oracles_hold_their_scale_and_the_rollback_one_rolls_back_once() -> None:
    """``fixed_scale:<x>`` asks for x from the start: the envelope applies 1/max_cut first, then x (within one cut);
    ``fixed_scale_rollback:<x>`` asks for one rollback, at its first decision with telemetry, and never again
    (each episode: an episode start resets it)."""
    healthy = obs_with(loss=0.8, loss_trend=-0.2, log_update_ratio=0.5)
    cfg = EnvelopeConfig(rollback_action=True)
    expected = {"fixed_scale:0.02": [False] * 4, "fixed_scale_rollback:0.02": [False, True, False, False]}
    for spec, rollbacks in expected.items():
        for _ in range(2):  # a second episode of the same governor
            steps = run_guard(make_governor(spec, cfg), [reset_obs(), *[healthy] * 3])  # type: ignore[arg-type]
            assert [round(s, 6) for s, _, _ in steps] == [round(1 / cfg.max_cut, 6)] + [0.02] * 3
            assert [r for _, _, r in steps] == rollbacks and all(math.isinf(g) for _, g, _ in steps)


def test_observation_view_reads_the_newest_row() -> None:
    view = ObservationView(obs_with(loss=0.7, skip_rate=0.25))
    assert view.started and view["loss"] == pytest.approx(0.7) and view["skip_rate"] == 0.25
    assert not ObservationView(reset_obs()).started
