"""Any optimizer as the plant (``optim.name``) and ZClip (``optim.clip: zclip``): exact snapshots, true skips.

Each optimizer is held to the contract AdamW is held to in tests/test_trainer.py: a snapshot restores a run bit for
bit (parameters, per-parameter state, and the group-level state Prodigy, D-Adaptation and schedule-free keep in
their parameter groups), a skipped step changes no byte of any of it, a reset equals a fresh plant, and an
evaluation does not move training (schedule-free evaluates its averaged weights and must come back to exactly the
weights it trains). ZClip is checked against the ``zclip`` package, norm by norm.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from lbw_env.config import ConfigError
from lbw_env.plant.clipping import ZClip
from lbw_env.plant.config import OptimConfig, TrainerConfig, ZClipConfig, hashable_trainer, load_trainer_config
from lbw_env.plant.data import Corpus
from lbw_env.plant.optimizer import Control
from lbw_env.plant.optimizers import OPTIMIZERS, eval_weights
from lbw_env.plant.state import SCHEDULE_KEYS
from lbw_env.plant.trainer import Plant

MakeCfg = Callable[..., TrainerConfig]

pytestmark = pytest.mark.usefixtures("torch_threads")

SETTINGS = {
    "adamw": (),
    "prodigy": ("optim.name=prodigy", "optim.lr=1.0"),
    "dadapt_adam": ("optim.name=dadapt_adam", "optim.lr=1.0"),
    "schedulefree_adamw": ("optim.name=schedulefree_adamw", "optim.schedule=constant"),
    "adamw+zclip": ("optim.clip=zclip", "optim.clip_norm=1.0", "optim.zclip.warmup_steps=4"),
}
"""Each optimizer at the settings its named arm uses, and AdamW with ZClip (a short warm-up, so that the adaptive
rule acts within the few steps a test runs)."""

CONTROLS = [
    Control(),
    Control(lr_scale=0.5),
    Control(force_skip=True),
    Control(lr_scale=1.7, skip_gate=1.0),
    Control(),
    Control(lr_scale=0.25),
] * 2
FAULTS = [{"kind": "nan_loss", "start": 11, "length": 2}, {"kind": "grad_noise", "start": 13, "magnitude": 2.0}]


def full_state(trainer: Plant) -> dict[str, Any]:
    """Parameters, per-parameter optimizer state, group state (all but the params and the schedule's LR) and the
    governed statistics."""
    opt = [{k: v.clone() if torch.is_tensor(v) else v for k, v in trainer.optimizer.state.get(p, {}).items()}
           for p in trainer.params]  # fmt: skip
    groups = [
        {k: copy.deepcopy(v) for k, v in g.items() if k not in SCHEDULE_KEYS} for g in trainer.optimizer.param_groups
    ]
    return {
        "params": [p.detach().clone() for p in trainer.params],
        "opt": opt,
        "groups": groups,
        "governed": copy.deepcopy(trainer.governed.state_dict()),
    }


def assert_same(a: dict[str, Any], b: dict[str, Any], skipped: int = 0) -> None:
    """Bitwise equality; ``skipped``: ``b`` is ``a`` after that many skips, which the skip budget's history counts
    (as not-gate skips) and nothing else may."""
    if skipped:
        b = {**b, "governed": dict(b["governed"])}
        history = b["governed"].pop("gate_history")
        assert history[: -skipped or None] == a["governed"]["gate_history"] and not any(history[-skipped:])
        a = {**a, "governed": {k: v for k, v in a["governed"].items() if k != "gate_history"}}
    for x, y in zip(a["params"], b["params"], strict=True):
        assert torch.equal(x, y)
    for sa, sb in zip(a["opt"], b["opt"], strict=True):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]) if torch.is_tensor(sa[k]) else sa[k] == sb[k], k
    assert a["groups"] == b["groups"]
    assert a["governed"] == b["governed"]


def records(trainer: Plant, controls: list[Control]) -> list[dict[str, Any]]:
    out = []
    for c in controls:
        d = trainer.step(c).to_dict()
        del d["seconds"]
        out.append(d)
    return out


@pytest.fixture(params=list(SETTINGS))
def make_plant(request: pytest.FixtureRequest, make_cfg: MakeCfg, corpus: Corpus) -> Callable[..., Plant]:
    def make(*overrides: str, faults: list[dict[str, Any]] | None = None) -> Plant:
        return Plant(make_cfg(*SETTINGS[request.param], *overrides, faults=faults or []), corpus)

    return make


def test_every_optimizer_name_is_tested() -> None:
    assert set(OPTIMIZERS) <= set(SETTINGS)


def test_snapshot_restore_replays_exactly(make_plant: Callable[..., Plant]) -> None:
    trainer = make_plant(faults=FAULTS)
    records(trainer, [Control()] * 9)
    snap = trainer.snapshot()
    first = records(trainer, CONTROLS)
    end = full_state(trainer)
    assert any(r["nonfinite"] for r in first) and any(r["skip_reason"] == "forced" for r in first)
    for _ in range(2):  # a snapshot stays valid for further restores
        trainer.restore(snap)
        assert records(trainer, CONTROLS) == first
        assert_same(end, full_state(trainer))


def test_rollback_restores_the_group_state(make_plant: Callable[..., Plant]) -> None:
    trainer = make_plant()
    records(trainer, [Control()] * 5)
    at_five, snap = full_state(trainer), trainer.snapshot()
    records(trainer, [Control(lr_scale=1.5)] * 4)
    trainer.restore(snap, rewind=False)  # a rollback: the weights and optimizer go back, the data moves on
    assert_same(at_five, full_state(trainer))


def test_a_skip_changes_no_byte_of_any_state(make_plant: Callable[..., Plant]) -> None:
    trainer = make_plant(faults=[{"kind": "nan_loss", "start": 7}])
    records(trainer, [Control()] * 6)  # moments, estimates and averages exist, so any update would show
    before = full_state(trainer)
    forced = trainer.step(Control(force_skip=True))
    assert forced.skipped and forced.skip_reason == "forced"
    assert_same(before, full_state(trainer), skipped=1)
    nonfinite = trainer.step()
    assert nonfinite.skip_reason == "nonfinite"
    assert_same(before, full_state(trainer), skipped=2)
    assert all(p.grad is None for p in trainer.params)
    assert not trainer.step().skipped


def test_reset_equals_a_fresh_plant(make_plant: Callable[..., Plant]) -> None:
    controls = [Control(), Control(lr_scale=1.5), Control(force_skip=True), Control()] * 2
    fresh = make_plant("runtime.seed=5")
    expected = records(fresh, controls)
    reused = make_plant("runtime.seed=0")
    records(reused, controls[:5])
    reused.reset(5)
    assert records(reused, controls) == expected
    assert_same(full_state(fresh), full_state(reused))


def test_evaluate_does_not_disturb_training(make_plant: Callable[..., Plant]) -> None:
    a, b = make_plant(), make_plant()
    head = records(a, [Control()] * 4)
    first = a.evaluate()
    assert a.evaluate() == first and math.isfinite(first.loss)
    tail = records(a, [Control()] * 4)
    assert records(b, [Control()] * 8) == head + tail
    assert_same(full_state(a), full_state(b))


def test_schedule_free_evaluates_its_average_and_trains_its_interpolation(make_cfg: MakeCfg, corpus: Corpus) -> None:
    trainer = Plant(make_cfg(*SETTINGS["schedulefree_adamw"]), corpus)
    records(trainer, [Control()] * 5)
    y = [p.detach().clone() for p in trainer.params]
    beta1 = trainer.optimizer.param_groups[0]["betas"][0]
    x = [yi.lerp(trainer.optimizer.state[p]["z"], 1 - 1 / beta1) for yi, p in zip(y, trainer.params)]
    with eval_weights(trainer.optimizer, trainer.params):
        assert all(torch.equal(p, xi) for p, xi in zip(trainer.params, x))
        assert not trainer.optimizer.param_groups[0]["train_mode"]
    assert all(torch.equal(p, yi) for p, yi in zip(trainer.params, y))
    assert all(g["train_mode"] for g in trainer.optimizer.param_groups)
    assert any(not torch.equal(a, b) for a, b in zip(x, y))  # the two differ: evaluating y would be wrong


def test_lr_free_optimizers_adapt_their_step_size(make_cfg: MakeCfg, corpus: Corpus) -> None:
    for name in ("prodigy", "dadapt_adam"):
        trainer = Plant(make_cfg(*SETTINGS[name]), corpus)
        d0 = trainer.optimizer.param_groups[0]["d"]
        records(trainer, [Control()] * 24)  # d starts at d0 = 1e-6 and moves once the weights have (~16 steps here)
        assert trainer.optimizer.param_groups[0]["d"] > 1.5 * d0, name  # the estimate grew: it is the step size


def test_optimizer_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"optim\.schedule: expected constant with name schedulefree_adamw"):
        load_trainer_config({"optim": {"name": "schedulefree_adamw", "schedule": "cosine"}})
    with pytest.raises(ConfigError, match=r"optim\.name: expected one of"):
        load_trainer_config({"optim": {"name": "sgd"}})
    with pytest.raises(ConfigError, match=r"optim\.warmup_fraction: expected a float in \[0, 1\)"):
        load_trainer_config({"optim": {"warmup_fraction": 1.5}})
    with pytest.raises(ConfigError, match=r"optim\.zclip\.alpha: expected a float in \(0, 1\)"):
        load_trainer_config({"optim": {"zclip": {"alpha": 1.0}}})


@pytest.mark.parametrize(("steps", "expected"), [(200, 20), (160, 16), (5, 1)])
def test_warmup_fraction_resolves_to_the_steps_of_each_config(steps: int, expected: int) -> None:
    cfg = load_trainer_config({"optim": {"steps": steps, "warmup_steps": 0}}, ["optim.warmup_fraction=0.1"])
    explicit = load_trainer_config({"optim": {"steps": steps, "warmup_steps": expected}})
    assert cfg.optim.warmup_steps == expected and cfg.optim.warmup_fraction == 0.0
    assert cfg == explicit  # the same config, so the same run and the same hash


def test_new_fields_at_their_default_leave_the_hashed_config_as_it_was() -> None:
    hashed = hashable_trainer(dataclasses.asdict(TrainerConfig()))
    assert {"name", "warmup_fraction", "clip", "zclip"}.isdisjoint(hashed["optim"])
    changed = hashable_trainer(dataclasses.asdict(load_trainer_config({}, ["optim.name=prodigy", "optim.clip=zclip"])))
    assert changed["optim"]["name"] == "prodigy" and changed["optim"]["clip"] == "zclip"
    assert "zclip" not in changed["optim"]  # its settings are at their defaults: the clip field says it all
    assert set(OptimConfig().__dataclass_fields__) - set(hashed["optim"]) == {
        "name",
        "warmup_fraction",
        "clip",
        "zclip",
    }


# ----------------------------------------------------------------------------------------------------------
# ZClip against the zclip package
# ----------------------------------------------------------------------------------------------------------

NORMS = [1.0, 1.2, 0.9, 1.1, 1.05, 0.95, 1.0, 1.3, 9.0, 1.1, 1.0, 0.98, 30.0, 25.0, 1.2, 1.0, 0.7, 1.15, 5.0, 1.0]
"""Gradient norms with spikes of several sizes after a short warm-up, below and above the fixed cap of 1.0 ... 2.0."""


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"max_norm": 0.0},
        {"max_norm": 2.0, "clip_option": "mean"},
        {"max_norm": 0.0, "mode": "percentile"},
        {"max_norm": 0.0, "skip_update_on_spike": True, "clip_factor": 0.7},
    ],
    ids=["defaults", "no_cap", "mean", "percentile", "skip_update"],
)
def test_zclip_matches_the_package_norm_by_norm(settings: dict[str, Any]) -> None:
    zclip = pytest.importorskip("zclip")
    max_norm = settings.pop("max_norm", 1.0)
    cfg = ZClipConfig(warmup_steps=5, **settings)
    package = zclip.ZClip(
        alpha=cfg.alpha,
        z_thresh=cfg.z_thresh,
        max_grad_norm=max_norm or None,
        warmup_steps=cfg.warmup_steps,
        mode=cfg.mode,
        clip_option=cfg.clip_option,
        clip_factor=cfg.clip_factor,
        skip_update_on_spike=cfg.skip_update_on_spike,
    )
    ours = ZClip(cfg, max_norm=max_norm)
    model = torch.nn.Linear(1, 1, bias=False).double()  # one weight: its gradient's norm is exactly the norm
    for g in NORMS:
        model.weight.grad = torch.tensor([[g]], dtype=torch.float64)
        package.step(model)
        clipped = float(model.weight.grad.abs())
        cap = ours.cap(g)
        expected = g * min(1.0, cap / (g + 1e-6)) if cap > 0 else g  # what the governed step's clipping does
        assert expected == pytest.approx(clipped, rel=1e-12, abs=0.0), g
        assert (ours.mean, ours.var) == (package.mean, package.var)
    assert ours.mean is not None and any(g > 2.0 for g in NORMS)


def test_zclip_state_is_in_the_snapshot_and_a_skip_leaves_it(make_cfg: MakeCfg, corpus: Corpus) -> None:
    trainer = Plant(make_cfg(*SETTINGS["adamw+zclip"]), corpus)
    clipper = trainer.governed.clipper
    assert isinstance(clipper, ZClip) and trainer.governed.clip_norm == 0.0 and clipper.max_norm == 1.0
    records(trainer, [Control()] * 6)
    assert clipper.mean is not None
    before = clipper.state_dict()
    trainer.step(Control(force_skip=True))
    assert clipper.state_dict() == before
    snap = trainer.snapshot()
    records(trainer, [Control()] * 3)
    assert clipper.state_dict() != before
    trainer.restore(snap)
    assert clipper.state_dict() == before
