"""The envelope's contract at its edges: configs it refuses, actions it refuses, and the one default envelope.

No model and no data: configs and actions are checked on the classes (milliseconds). Whole episodes under the
envelope are in tests/test_env.py; the same default through the env and a plain loop in tests/test_integrations.py.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from lbw_env.config import ConfigError, from_dict, to_dict
from lbw_env.control.envelope import Envelope, EnvelopeConfig
from lbw_env.control.governance import GovernanceConfig
from lbw_env.env import EnvConfig
from lbw_env.evaluation import load_suite

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------------------
# Config validation: one line naming the field
# ----------------------------------------------------------------------------------------------------------

BAD_ENVELOPES: list[tuple[dict[str, Any], str]] = [
    ({"lr_scale_max": math.inf}, "lr_scale_max"),
    ({"lr_scale_max": math.nan}, "lr_scale_max"),
    ({"lr_scale_min": -math.inf}, "lr_scale_min"),
    ({"lr_scale_min": 0.0}, "lr_scale_min"),
    ({"lr_scale_init": math.inf, "lr_scale_max": math.inf}, "lr_scale_max"),
    ({"lr_scale_init": 3.0}, "lr_scale_max"),  # above the max
    ({"lr_scale_init": 0.001}, "lr_scale_init"),  # below the min
    ({"lr_scale_min": 3.0, "lr_scale_max": 1.0}, "lr_scale_init"),  # inverted range
    ({"max_factor": math.inf}, "max_factor"),
    ({"max_factor": 1.0}, "max_factor"),
    ({"max_cut": math.inf}, "max_cut"),
    ({"max_cut": 0.5}, "max_cut"),
    ({"gate_min": math.nan}, "gate_min"),
    ({"gate_max": math.inf}, "gate_max"),
    ({"gate_min": 6.0, "gate_max": 3.0}, "gate_max"),  # inverted
    ({"gate_min": 0.0}, "gate_min"),
    ({"never_above": math.inf}, "never_above"),
    ({"never_above": -1.0}, "never_above"),
    ({"runaway_ratio": math.inf}, "runaway_ratio"),
    ({"max_skip_fraction": math.nan}, "max_skip_fraction"),
    ({"lr_bins": 4}, "lr_bins"),  # even: no bin holds the scale, so "neutral" would drift the LR
    ({"lr_bins": 1}, "lr_bins"),
    ({"gate_bins": 1}, "gate_bins"),
    ({"max_rollbacks": -1}, "max_rollbacks"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_ENVELOPES, ids=[f"{k}" for k, _ in BAD_ENVELOPES])
def test_bad_envelope_is_one_line_naming_the_field(bad: dict[str, Any], field: str) -> None:
    # From YAML / a mapping (the env's config, a suite's env section) ...
    with pytest.raises(ConfigError, match=rf"^envelope\.{field}: expected") as err:
        from_dict(EnvConfig, {"envelope": bad})
    assert "\n" not in str(err.value)
    # ... and built in code, where no from_dict runs: the envelope and every config that holds one check it.
    cfg = EnvelopeConfig(**bad)
    with pytest.raises(ConfigError, match=rf"^{field}: expected"):
        Envelope(cfg)
    with pytest.raises(ConfigError, match=rf"^envelope\.{field}: expected"):
        GovernanceConfig(envelope=cfg).validate()


def test_yaml_inf_is_refused() -> None:
    """``lr_scale_max: .inf`` in YAML (a float PyYAML reads as inf) let the LR scale grow x2 per decision."""
    with pytest.raises(ConfigError, match=r"^envelope\.lr_scale_max: expected a finite number, got inf$"):
        from_dict(EnvConfig, yaml.safe_load("envelope: {lr_scale_max: .inf}"))


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"decision_interval": 0}, "decision_interval"),
        ({"window": 2.5}, "window"),
        ({"healthy_ratio": math.inf}, "healthy_ratio"),
        ({"healthy_ratio": 0.5}, "healthy_ratio"),
    ],
)
def test_bad_governance_is_one_line_naming_the_field(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}: expected"):
        GovernanceConfig(**bad).validate()


# ----------------------------------------------------------------------------------------------------------
# Actions: malformed ones are refused with one line; NaN/inf/out-of-range are clamped and counted
# ----------------------------------------------------------------------------------------------------------


def envelope(mode: str = "continuous", **kw: Any) -> Envelope:
    return Envelope(EnvelopeConfig(action_mode=mode, **kw))


@pytest.mark.parametrize(
    ("mode", "action", "match"),
    [
        # A MultiDiscrete policy's bins driving the continuous env: used to be clipped to [1, 1, 1] (a rollback).
        ("continuous", np.array([2, 4, 1]), "integer array"),
        ("continuous", np.array([0, 1, 0], dtype=np.int32), "integer array"),
        ("continuous", np.array([0.1, 0.2, 0.3]) + 1j, "complex"),
        ("continuous", [0.1, 1j, 0.0], "complex"),
        ("continuous", np.array([True, False, True]), "booleans"),
        ("continuous", ["0.1", "up", "x"], "expected 3 numbers"),
        ("continuous", ["0.1", "0.2", "0.3"], "expected 3 numbers"),
        ("continuous", [0.1, None, 0.0], "expected 3 numbers"),
        ("continuous", [[0.1, 0.2], [0.3]], "expected 3 numbers"),
        ("discrete", np.array([1.5, 4.0, 0.0]), "integer bins"),
        ("discrete", [2, 4, 0.25], "integer bins"),
        ("discrete", np.array([2, 4, 1]) + 0j, "complex"),
        ("discrete", np.array([True, False]), "booleans"),
        ("discrete", np.array([True, False, True]), "booleans"),
        ("discrete", np.array([2, 4]), r"shape \(3,\)"),
        ("discrete", np.zeros((2, 3), dtype=np.int64), r"shape \(3,\)"),
    ],
)
def test_malformed_actions_are_one_line_errors(mode: str, action: Any, match: str) -> None:
    env = envelope(mode)
    with pytest.raises(ValueError, match=f"^action: .*{match}") as err:
        env.decode(action)
    assert "\n" not in str(err.value)
    # Nothing moved, nothing counted.
    assert env.lr_scale == env.cfg.lr_scale_init and not any(env.interventions.values())


def test_well_formed_actions_of_every_dtype() -> None:
    cont = envelope("continuous")
    for action in ([0.0, 1.0, -1.0], [0, 1, -1], np.array([0.0, 1.0, -1.0], dtype=np.float16), (0.0, 1.0, -1.0)):
        d = cont.decode(action)
        assert d.control.lr_scale == 1.0 and math.isinf(d.control.skip_gate) and not d.rollback_requested
    assert cont.decode(np.array([[0.0, 1.0, 1.0]], dtype=np.float32)).rollback_requested  # SB3's batched (1, n)
    disc = envelope("discrete")
    for action in (np.array([2, 4, 0]), np.array([2, 4, 0], dtype=np.uint8), [2, 4, 0], np.array([2.0, 4.0, 0.0])):
        d = disc.decode(action)
        assert d.control.lr_scale == 1.0 and math.isinf(d.control.skip_gate) and not d.rollback_requested
    assert not any(cont.interventions.values()) and not any(disc.interventions.values())


def test_nonfinite_and_out_of_range_are_clamped_and_counted() -> None:
    """The documented contract (env docstring, Action Space): never an error, always counted."""
    cont = envelope("continuous")
    d = cont.decode(np.array([np.nan, np.inf, -np.inf], dtype=np.float32))
    assert d.control.lr_scale == 1.0 and math.isinf(d.control.skip_gate) and not d.rollback_requested
    assert cont.interventions["action_nonfinite"] == 1 and cont.interventions["action_clipped"] == 1
    disc = envelope("discrete")
    d = disc.decode(np.array([np.nan, 99.0, -np.inf]))
    assert d.control.lr_scale == 1.0 and math.isinf(d.control.skip_gate) and not d.rollback_requested
    assert disc.interventions["action_nonfinite"] == 1 and disc.interventions["action_clipped"] == 1
    d = disc.decode([7, -3, 5])
    assert d.control.lr_scale == 2.0 and d.control.skip_gate == disc.cfg.gate_min and d.rollback_requested
    assert disc.interventions["action_clipped"] == 2


# ----------------------------------------------------------------------------------------------------------
# One default envelope: the suites', the env ids' and the integrations'
# ----------------------------------------------------------------------------------------------------------


def governance_fields(cfg: GovernanceConfig) -> dict[str, Any]:
    return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(GovernanceConfig)}


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "suites").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_suite_runs_the_default_governance(path: Path) -> None:
    """The suites' ``env:`` sections agree among themselves and with the defaults, so ``GovernanceConfig()`` (a
    plain loop, a Trainer), ``EnvConfig()`` (every env id) and a suite measure one and the same envelope."""
    suite = load_suite(path)
    assert governance_fields(suite.env_config()) == governance_fields(GovernanceConfig())


def test_the_defaults_are_the_evaluation_envelope() -> None:
    default = GovernanceConfig()
    assert default.envelope.rollback_action is True and default.envelope.auto_rollback is False
    assert governance_fields(EnvConfig()) == governance_fields(default)
    assert envelope().action_space.shape == (3,)
