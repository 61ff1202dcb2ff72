"""Observation features: encoding and decoding live in one place and invert each other."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lbw_env.control.features import FEATURE_NAMES, FEATURES, OBS_BOUND, ObservationView, TelemetryWindow
from lbw_env.plant.records import StepRecord


@pytest.mark.parametrize("name", FEATURE_NAMES)
@pytest.mark.parametrize("x", [1e-4, 0.01, 0.37, 1.0, 2.5])
def test_decode_inverts_encode(name: str, x: float) -> None:
    f = FEATURES[name]
    assert f.decode(f.encode(x)) == pytest.approx(x, rel=1e-12)


def record(step: int, loss: float, lr: float, update_ratio: float, skipped: bool = False) -> StepRecord:
    return StepRecord(
        step=step, loss=loss, grad_norm=0.8, update_ratio=0.0 if skipped else update_ratio, param_norm=10.0,
        lr=0.0 if skipped else lr, lr_scale=0.5, skipped=skipped, skip_reason="gate" if skipped else "none",
        nonfinite=False, loss_z=1.5, grad_z=0.5,
    )  # fmt: skip


def test_view_reads_back_physical_values() -> None:
    window = TelemetryWindow(window=2, vocab_size=2048, total_steps=100, max_rollbacks=3)
    window.reset(7.0)
    window.push([record(i, 6.5, 3e-3, 2e-3) for i in range(8)], lr_scale=0.5, rollbacks=1, step=8, loss_cv=0.04)
    view = ObservationView(window.observation())
    assert view.started
    # float32 observations: decoded values are exact to float32 precision
    assert view.physical("log_lr") == pytest.approx(3e-3, rel=1e-6)
    assert view.physical("log_update_ratio") == pytest.approx(2e-3, rel=1e-6)
    assert view.physical("loss_cv") == pytest.approx(0.04, rel=1e-6)
    assert view.physical("lr_scale") == pytest.approx(0.5, rel=1e-6)
    assert view.physical("loss_z_max") == pytest.approx(1.5, rel=1e-6)
    assert view.physical("rollbacks") == pytest.approx(1 / 3, rel=1e-6)


def test_nothing_applied_reads_as_none() -> None:
    """An interval of skipped steps measured no LR and no update: the view says so instead of a fake value."""
    window = TelemetryWindow(window=1, vocab_size=2048, total_steps=100, max_rollbacks=3)
    window.reset(7.0)
    window.push([record(i, 6.5, 3e-3, 2e-3, skipped=True) for i in range(4)], 1.0, 0, 4)
    view = ObservationView(window.observation())
    assert view["log_lr"] == -OBS_BOUND and view.physical("log_lr") is None
    assert view.physical("log_update_ratio") is None
    assert view.physical("skip_rate") == 1.0


def test_nonfinite_z_saturates() -> None:
    window = TelemetryWindow(window=1, vocab_size=2048, total_steps=100, max_rollbacks=3)
    window.reset(7.0)
    bad = record(0, math.nan, 3e-3, 2e-3)
    bad.loss_z = math.inf
    window.push([bad, record(1, 6.5, 3e-3, 2e-3)], 1.0, 0, 2)
    obs = window.observation()
    assert np.all(np.isfinite(obs))
    assert ObservationView(obs)["loss_z_max"] == OBS_BOUND


def test_rules_use_the_decoder_not_constants() -> None:
    """The rule governors must not restate the encoding (a changed offset would silently break them)."""
    import inspect

    import policies.rules as rules

    src = inspect.getsource(rules)
    for needle in ("10 **", "10**", "/ 10.0", "- 3.0)", "2.0 * obs"):
        assert needle not in src, (
            f"policies/rules.py decodes a feature by hand ({needle!r}); use ObservationView.physical"
        )
