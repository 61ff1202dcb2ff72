"""Baseline arms by name, per-arm env overrides, config hashes that survive new fields, and the guard ablations.

The committed records of ``benchmarks/results/tiny_test`` are read (never written) to check that the plan of its
suite still gives the config hash every stored record carries: a config field added since, at its default, must not
invalidate them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lbw_env.config import ConfigError
from lbw_env.control.envelope import Envelope, EnvelopeConfig
from lbw_env.control.features import FEATURE_NAMES
from lbw_env.evaluation.arms import NAMED_ARMS
from lbw_env.evaluation.suite import load_suite, prepare
from policies import make_governor
from policies.rules import ABLATIONS

REPO = Path(__file__).resolve().parents[1]


def test_the_tiny_test_plan_gives_the_hashes_of_its_committed_records() -> None:
    records = [json.loads(line) for line in (REPO / "benchmarks/results/tiny_test/records.jsonl").open()]
    stored = {(r["scenario"], r["arm"], r["seed"]): r["config_hash"] for r in records}
    plan = prepare(load_suite("tiny_test"), make_governor)
    assert stored and set(stored) <= set(plan.hashes)
    assert {k: plan.hashes[k] for k in stored} == stored


def test_a_named_arm_equals_the_explicit_arm_it_stands_for() -> None:
    explicit = {
        "adamw_warmup": ["optim.warmup_steps=16"],  # tiny runs are 160 steps: 10 % is 16
        "adamw_clip1.0": ["optim.clip_norm=1.0"],
    }
    arms = [{"label": k, "governor": "adamw", "trainer_overrides": v} for k, v in explicit.items()]
    old = prepare(load_suite({"scenarios": ["tiny:test"], "arms": arms, "seeds": 1}), make_governor)
    new = prepare(load_suite({"scenarios": ["tiny:test"], "arms": list(explicit), "seeds": 1}), make_governor)
    assert new.hashes == old.hashes


def test_every_named_arm_resolves_and_builds() -> None:
    names = [n for n in NAMED_ARMS if n != "adamw_tuned"]  # needs a swept family (test_tuned_adamw.py), not tiny
    suite = load_suite({"scenarios": ["tiny/ref", "tiny/ft_ref"], "arms": names, "seeds": 1})
    assert [a.label for a in suite.arms] == names
    for arm in suite.arms:
        named = NAMED_ARMS[arm.label]
        assert (arm.governor, arm.trainer_overrides, arm.env_overrides) == (
            named.governor,
            list(named.trainer_overrides),
            list(named.env_overrides),
        )
        assert named.why, arm.label
    plan = prepare(suite, make_governor)  # builds every governor and every arm's trainer config per scenario
    assert len(set(plan.hashes.values())) == len(plan.hashes)  # no two arms are the same configuration
    assert suite.arm_env(suite.arms[names.index("adamw_rollback")]).envelope.auto_rollback


def test_named_arms_get_the_settings_they_promise() -> None:
    from lbw_env.scenarios import get_scenario, with_overrides

    suite = load_suite({"scenarios": ["lr_stress/ref_b1"], "arms": list(NAMED_ARMS), "seeds": 1})
    arms = {a.label: a for a in suite.arms}
    base = get_scenario("lr_stress/ref_b1")

    def optim(label: str):  # type: ignore[no-untyped-def]
        return with_overrides(base, suite.arm_env(arms[label]).trainer_overrides).trainer.optim

    assert base.trainer.optim.steps == 200 and optim("adamw_warmup").warmup_steps == 20
    assert (optim("prodigy").name, optim("prodigy").lr) == ("prodigy", 1.0)
    assert (optim("lbw_guard_dadapt_adam").name, optim("lbw_guard_dadapt_adam").lr) == ("dadapt_adam", 1.0)
    sf = optim("schedulefree_adamw")
    assert (sf.name, sf.schedule, sf.lr) == ("schedulefree_adamw", "constant", base.trainer.optim.lr)
    assert (optim("zclip").clip, optim("zclip").clip_norm) == ("zclip", 1.0)
    assert arms["lbw_guard_prodigy"].governor == "lbw_guard"
    assert optim("adamw_tuned").lr == 3e-3  # lr_stress's sweep chose the reference LR


def test_arm_env_overrides_are_checked() -> None:
    with pytest.raises(ConfigError, match="env_overrides: expected no trainer_overrides"):
        load_suite({"arms": [{"label": "x", "governor": "adamw", "env_overrides": ["trainer_overrides=[a=1]"]}]})
    bad = {"arms": [{"label": "x", "governor": "adamw", "env_overrides": ["envelope.nope=1"]}]}
    with pytest.raises(ConfigError, match=r"envelope\.nope"):
        prepare(load_suite(bad), make_governor)


# ----------------------------------------------------------------------------------------------------------
# Guard ablations: each changes what the guard does
# ----------------------------------------------------------------------------------------------------------

WINDOW = 4


def obs_with(**features: float) -> np.ndarray:
    rows = np.zeros((WINDOW, len(FEATURE_NAMES)), dtype=np.float32)
    for name, value in {"valid": 1.0, "log_lr": np.log10(3e-3) + 3.0, **features}.items():
        rows[-1, FEATURE_NAMES.index(name)] = value
    return rows.reshape(-1)


EPISODE = [
    np.zeros(WINDOW * len(FEATURE_NAMES), dtype=np.float32),  # reset: no telemetry yet
    *[obs_with(loss=0.8, loss_trend=-0.2, log_update_ratio=0.5)] * 4,  # healthy
    obs_with(loss=0.9, loss_vs_best=0.15, loss_trend=0.5, log_update_ratio=0.5),  # damaged: back off, roll back
    *[obs_with(loss=0.8, loss_trend=-0.2, log_update_ratio=0.5)] * 10,  # healthy again
]
"""Synthetic telemetry of an episode: a healthy start, one damaging interval, recovery."""


def actions(spec: str) -> list[tuple[float, float, bool]]:
    cfg = EnvelopeConfig(rollback_action=True)
    governor, envelope = make_governor(spec, cfg), Envelope(cfg)
    out = []
    for i, obs in enumerate(EPISODE):
        action, _ = governor.predict(obs, episode_start=np.array([i == 0]), deterministic=True)
        d = envelope.decode(action)
        out.append((d.control.lr_scale, d.control.skip_gate, d.rollback_requested))
    return out


def test_each_guard_ablation_changes_the_guards_actions() -> None:
    guard = actions("lbw_guard")
    scales, rollbacks = [s for s, _, _ in guard], [r for _, _, r in guard]
    assert scales[0] < 0.2 and rollbacks[5] and max(scales[6:]) < 1.0  # slow start, rollback, ceiling
    no_slow = actions("lbw_guard_no_slow_start")
    assert no_slow[0][0] == pytest.approx(1.0) and no_slow != guard
    no_rollback = actions("lbw_guard_no_rollback")
    assert not any(r for _, _, r in no_rollback) and [s for s, _, _ in no_rollback] == scales
    no_ceiling = actions("lbw_guard_no_ceiling")
    assert no_ceiling[:6] == guard[:6] and max(s for s, _, _ in no_ceiling[6:]) == pytest.approx(1.0)  # float32
    assert set(ABLATIONS) == {a for a in NAMED_ARMS if a.startswith("lbw_guard_no_")}


def test_ablations_record_the_thresholds_they_ran_with() -> None:
    from lbw_env.cache import sha256_file
    from lbw_env.config import config_dir

    guard_file = sha256_file(config_dir() / "governors" / "lbw_guard.yaml")
    hashes = {name: getattr(make_governor(name), "governor_hash", "") for name in ABLATIONS}
    assert hashes["lbw_guard_no_rollback"] == f"{guard_file}:no_rollback"
    assert len(set(hashes.values())) == len(ABLATIONS)
