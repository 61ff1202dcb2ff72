"""The governor in real loops: env, plain PyTorch loop and Hugging Face ``Trainer`` agree record for record;
true skips through the HF path; LoRA (adapters only, bit-exact snapshot/restore, from_pretrained + LoRA).

The three runs share one scenario (tiny preset, shortened), one run seed and one governor: the plain loop and
the HF run are built from a plant :class:`~lbw_env.plant.trainer.Plant` with the env scenario's config (same model
init, same AdamW, same batches in the same order via ``BatchStream``/``PlantBlocks``, same LR schedule via
``ScheduleLR(Plant.scheduled_lr)``), so every StepRecord field but ``seconds`` must be equal, bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lbw_env.config import ConfigError, from_dict
from lbw_env.control.envelope import EnvelopeConfig
from lbw_env.control.features import FEATURE_NAMES
from lbw_env.control.governance import GovernanceConfig
from lbw_env.env import LBWEnv
from lbw_env.integrations import GovernedLoop, ScheduleLR
from lbw_env.plant.config import load_trainer_config
from lbw_env.plant.records import StepRecord
from lbw_env.plant.trainer import Plant
from policies import make_governor

STEPS = 48
SHOCK = "faults=[{kind: lr_shock, start: 20, length: 8, magnitude: 30.0}]"
OVERRIDES = [f"optim.steps={STEPS}", "data.seq_len=32", "data.batch_size=4", "data.eval_blocks=4", SHOCK]
"""tiny/ref shortened to 6 decisions of 8 steps, with an LR shock (x30) in the middle: skips and rollbacks."""
ENVELOPE = {"rollback_action": True, "max_rollbacks": 3}
ENVELOPE_CFG = from_dict(EnvelopeConfig, ENVELOPE)

SCRIPT = [
    [0.0, 1.0, -1.0],  # neutral: hold the LR scale, never skip
    [0.5, 1.0, -1.0],  # LR up (x sqrt 2)
    [0.0, -1.0, -1.0],  # tightest skip gate (2 sigma): gate skips once statistics exist
    [0.0, -1.0, -1.0],
    [0.0, -1.0, 1.0],  # ask for a rollback
    [-0.5, 0.2, -1.0],  # LR down, a middling gate
    [1.0, 1.0, -1.0],
]


class Scripted:
    """A governor that plays a fixed action list (the same controls for every run), ignoring observations."""

    def __init__(self, actions: list[list[float]]) -> None:
        self.actions = [np.asarray(a, dtype=np.float32) for a in actions]
        self.i = 0
        self.observations: list[np.ndarray] = []

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        self.observations.append(np.array(observation, copy=True))
        action = self.actions[min(self.i, len(self.actions) - 1)]
        self.i += 1
        return action, state


def compared(records: list[StepRecord]) -> list[dict[str, Any]]:
    """Every field but the wall time, with non-finite floats as strings (NaN == NaN)."""
    out = []
    for r in records:
        d = r.to_dict()
        d.pop("seconds")
        out.append(d)
    return out


@dataclasses.dataclass
class EnvRun:
    env: LBWEnv
    records: list[StepRecord]
    run_seed: int
    initial_loss: float
    infos: list[dict[str, Any]]


def run_env(governor: Any, seed: int = 0) -> EnvRun:
    """One episode of the tiny scenario, driven like the evaluator drives a governor."""
    env = LBWEnv({"scenarios": ["tiny/ref"], "trainer_overrides": OVERRIDES, "envelope": ENVELOPE})
    obs, info = env.reset(seed=seed)
    state, episode_start, infos = None, np.ones((1,), dtype=bool), []
    while True:
        action, state = governor.predict(obs, state=state, episode_start=episode_start, deterministic=True)
        episode_start = np.zeros((1,), dtype=bool)
        obs, _, terminated, truncated, step_info = env.step(action)
        infos.append(step_info)
        if terminated or truncated:
            break
    records = [r for i in infos for r in i["records"]]
    return EnvRun(env, records, info["run_seed"], infos[-1]["final"]["initial_valid_loss"], infos)


def governance_of(env: LBWEnv) -> GovernanceConfig:
    """The env's governance settings: an EnvConfig *is* a GovernanceConfig (one definition of the fields)."""
    assert isinstance(env.cfg, GovernanceConfig)
    return env.cfg


def plant_for(run: EnvRun) -> Plant:
    """A second plant with the env scenario's config, at the env run's initial state."""
    assert run.env.scenario is not None
    plant = Plant(run.env.scenario.trainer, gate=run.env.cfg.envelope.gate_config())
    plant.reset(run.run_seed)
    return plant


def run_plain_loop(run: EnvRun, governor: Any) -> GovernedLoop:
    """The user's own loop: batches, forward, loss, backward, ``loop.step(loss)``, their LR scheduler."""
    plant = plant_for(run)
    loop = GovernedLoop(
        plant.optimizer,
        governor,
        total_steps=STEPS,
        vocab_size=plant.corpus.vocab_size,
        config=governance_of(run.env),
        params=plant.model.parameters(),
        initial_loss=run.initial_loss,
    )
    scheduler = ScheduleLR(plant.optimizer, plant.scheduled_lr)
    model = plant.model
    for _ in range(STEPS):
        x = plant.batches.next()
        logits = model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        loss.backward()
        loop.step(loss, tokens=int(x[:, 1:].numel()))
        scheduler.step()
        if loop.terminated:
            break
    return loop


def hf_args(tmp_path: Path, **kw: Any) -> Any:
    from transformers import TrainingArguments

    base: dict[str, Any] = dict(
        output_dir=str(tmp_path / "hf"),
        max_steps=STEPS,
        per_device_train_batch_size=4,
        max_grad_norm=0.0,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    base.update(kw)
    return TrainingArguments(**base)


def run_hf(run: EnvRun, governor: Any, tmp_path: Path, callbacks: list[Any] | None = None, **args: Any) -> Any:
    """A ``GovernedTrainer`` on the plant's model, AdamW, schedule and batches."""
    from lbw_env.integrations.hf import GovernedTrainer, PlantBlocks

    plant = plant_for(run)
    trainer = GovernedTrainer(
        model=plant.model,
        args=hf_args(tmp_path, **args),
        train_dataset=PlantBlocks.from_plant(plant),
        optimizers=(plant.optimizer, ScheduleLR(plant.optimizer, plant.scheduled_lr)),
        callbacks=callbacks,
        governor=governor,
        governance=governance_of(run.env),
        initial_loss=run.initial_loss,
    )
    trainer.train()
    return trainer


# ----------------------------------------------------------------------------------------------------------
# env == plain loop == HF Trainer
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("governor", ["scripted", "lbw_guard"])
def test_env_plain_loop_and_hf_trainer_agree(lbw: None, tmp_path: Path, governor: str) -> None:
    def make() -> Any:
        return Scripted(SCRIPT) if governor == "scripted" else make_governor("lbw_guard", ENVELOPE_CFG)

    env_gov, loop_gov, hf_gov = make(), make(), make()
    env_run = run_env(env_gov)
    loop = run_plain_loop(env_run, loop_gov)
    hf = run_hf(env_run, hf_gov, tmp_path)

    expected = compared(env_run.records)
    assert len(expected) == STEPS
    assert compared(loop.records) == expected
    assert compared(hf.lbw.records) == expected
    # The same observations reached the governor, so the same decisions were taken.
    if governor == "scripted":
        assert len(env_gov.observations) == len(loop_gov.observations) == len(hf_gov.observations)
        for a, b, c in zip(env_gov.observations, loop_gov.observations, hf_gov.observations):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)
        # ... and the script exercised what matters: LR moves, gate skips, rollbacks.
        assert {r["lr_scale"] for r in expected} != {1.0}
        assert any(r["skip_reason"] == "gate" for r in expected)
        rollbacks = [i["rollback"] for i in env_run.infos]
        assert "requested" in rollbacks
    outcomes = [(h.outcome.reason, h.outcome.rolled_back, h.outcome.terminated) for h in loop.history]
    assert outcomes == [(h.outcome.reason, h.outcome.rolled_back, h.outcome.terminated) for h in hf.lbw.history]
    assert [i["rollback"] for i in env_run.infos] == [o[0] for o in outcomes]
    # The final weights agree too (the env's trainer vs the HF run's model).
    env_params = [p.detach() for p in env_run.env.trainer.params]  # type: ignore[union-attr]
    hf_params = [p.detach() for p in hf.model.parameters() if p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(env_params, hf_params, strict=True))


def test_hf_true_skip_changes_no_byte(lbw: None, tmp_path: Path) -> None:
    """Every skipped step of an HF run (gate skips, and an injected non-finite gradient) leaves the weights and the
    AdamW state byte-identical; every applied step changes them."""
    from transformers import TrainerCallback

    class Watch(TrainerCallback):
        """Copies the trainable state right before ``optimizer.step()`` and compares right after it."""

        def __init__(self) -> None:
            self.before: tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]] | None = None
            self.checked = {"skipped": 0, "applied": 0}

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            params = [p for p in kw["model"].parameters() if p.requires_grad]
            if state.global_step == 30:  # a non-finite gradient element (a broken reduction), after HF's norm pass
                params[0].grad.view(-1)[0] = math.inf
            self.before = (
                [p.detach().clone() for p in params],
                [{k: v.clone() for k, v in kw["optimizer"].state.get(p, {}).items()} for p in params],
            )

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            assert self.before is not None
            opt = kw["optimizer"]  # accelerate's wrapper around the governed proxy
            record = opt.optimizer.last_record
            params = [p for p in kw["model"].parameters() if p.requires_grad]
            same_params = all(torch.equal(a, p.detach()) for a, p in zip(self.before[0], params))
            same_state = all(
                set(old) == set(opt.state.get(p, {})) and all(torch.equal(v, opt.state[p][k]) for k, v in old.items())
                for old, p in zip(self.before[1], params)
            )
            if record.skipped:
                assert same_params and same_state, f"skipped step {record.step} ({record.skip_reason}) changed state"
                self.checked["skipped"] += 1
            else:
                assert not same_params and not same_state
                self.checked["applied"] += 1

    env_run = run_env(Scripted(SCRIPT))
    watch = Watch()
    # Plain AdamW for one interval, then the tightest gate; no rollbacks (they restore state on purpose).
    governor = Scripted([[0.0, 1.0, -1.0], [0.0, -1.0, -1.0]])
    config = governance_of(env_run.env)
    config = dataclasses.replace(config, envelope=dataclasses.replace(config.envelope, auto_rollback=False))
    from lbw_env.integrations.hf import GovernedTrainer, PlantBlocks

    plant = plant_for(env_run)
    hf = GovernedTrainer(
        model=plant.model,
        args=hf_args(tmp_path),
        train_dataset=PlantBlocks.from_plant(plant),
        optimizers=(plant.optimizer, ScheduleLR(plant.optimizer, plant.scheduled_lr)),
        callbacks=[watch],
        governor=governor,
        governance=config,
        initial_loss=env_run.initial_loss,
        rollback=False,
    )
    hf.train()
    reasons = [r.skip_reason for r in hf.lbw.records]
    assert len(reasons) == STEPS
    assert "gate" in reasons and reasons[30] == "nonfinite"
    assert watch.checked["skipped"] == sum(r.skipped for r in hf.lbw.records) >= 2
    assert watch.checked["applied"] == STEPS - watch.checked["skipped"]


def test_hf_takes_over_grad_clipping(lbw: None, tmp_path: Path) -> None:
    """``max_grad_norm`` moves into the governed step: the record shows the unclipped norm, AdamW the clipped one."""
    env_run = run_env(Scripted([[0.0, 1.0, -1.0]]))
    hf = run_hf(env_run, make_governor("adamw", ENVELOPE_CFG), tmp_path, max_grad_norm=0.05, max_steps=8)
    assert hf.args.max_grad_norm == 0.0
    assert hf.lbw.governed.clip_norm == 0.05
    assert all(r.grad_norm > 0.05 for r in hf.lbw.records)  # measured before clipping


def test_hf_governs_the_optimizer_and_schedule_it_builds(lbw: None, tmp_path: Path) -> None:
    """Without ``optimizers=``: the Trainer's own AdamW and linear schedule, governed; the records' LR is HF's."""
    from lbw_env.integrations.hf import GovernedTrainer, PlantBlocks

    env_run = run_env(Scripted([[0.0, 1.0, -1.0]]))
    plant = plant_for(env_run)
    args = hf_args(tmp_path, max_steps=8, learning_rate=1e-3, lr_scheduler_type="linear")
    hf = GovernedTrainer(
        model=plant.model, args=args, train_dataset=PlantBlocks.from_plant(plant), governor=Scripted([[0.0, 1.0, -1.0]])
    )
    before = [p.detach().clone() for p in plant.params]
    hf.train()
    assert isinstance(hf.lbw.optimizer, torch.optim.AdamW) and hf.lbw.optimizer is not plant.optimizer
    assert [r.lr for r in hf.lbw.records] == pytest.approx([1e-3 * (1 - t / 8) for t in range(8)], rel=1e-12)
    assert not any(r.skipped for r in hf.lbw.records)
    assert all(not torch.equal(a, p.detach()) for a, p in zip(before, plant.params))


def test_hf_refuses_what_would_break_governance(lbw: None, tmp_path: Path) -> None:
    from lbw_env.integrations.hf import GovernedTrainer, PlantBlocks

    env_run = run_env(Scripted([[0.0, 1.0, -1.0]]))
    plant = plant_for(env_run)
    with pytest.raises(ValueError, match="remove_unused_columns"):
        GovernedTrainer(
            model=plant.model,
            args=hf_args(tmp_path, remove_unused_columns=True),
            train_dataset=PlantBlocks.from_plant(plant),
            governor="adamw",
        )


def test_a_spec_governor_needs_a_factory(lbw: None) -> None:
    """lbw_env never imports policies: a spec string is built by the factory the caller passes, for the envelope
    the loop enforces (``max_rollbacks: 0`` without rollback)."""
    plant = Plant(load_trainer_config(overrides=OVERRIDES))
    with pytest.raises(ConfigError, match=r"^governor 'adamw' is a spec string: also pass make_governor=") as err:
        GovernedLoop(plant.optimizer, "adamw", total_steps=8, vocab_size=plant.corpus.vocab_size)
    assert "\n" not in str(err.value)
    seen: list[Any] = []

    def factory(spec: str, envelope: Any) -> Any:
        seen.append((spec, envelope.max_rollbacks))
        return make_governor(spec, envelope)

    loop = GovernedLoop(
        plant.optimizer,
        "adamw",
        total_steps=8,
        vocab_size=plant.corpus.vocab_size,
        rollback=False,
        make_governor=factory,
    )
    assert seen == [("adamw", 0)] and hasattr(loop.governor, "predict")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 0}, "vocab_size: expected an int >= 2, got 0"),
        ({"vocab_size": math.nan}, "vocab_size: expected an int >= 2, got nan"),
        ({"total_steps": "10"}, "total_steps: expected an int >= 1, got '10'"),
        ({"total_steps": 0}, "total_steps: expected an int >= 1, got 0"),
        ({"initial_loss": math.inf}, "initial_loss: expected a finite number or None, got inf"),
    ],
)
def test_a_plain_loop_refuses_what_would_make_its_observations_meaningless(kwargs: dict, message: str) -> None:
    """ln(vocab_size) divides the loss feature and total_steps the progress one: a bad value would make every
    observation inf or NaN and the governor act on nonsense, so it is refused before anything is built."""
    model = torch.nn.Linear(4, 4)
    args: dict[str, Any] = {"total_steps": 10, "vocab_size": np.int64(50), **kwargs}  # numpy ints are counts too
    with pytest.raises(ConfigError, match=f"^{message}$"):
        GovernedLoop(torch.optim.AdamW(model.parameters()), "adamw", make_governor=make_governor, **args)


def test_a_loss_that_is_not_one_number_is_named() -> None:
    """A refused step changes nothing: no step, and the governor is not asked again for the same interval."""
    model = torch.nn.Linear(4, 4)
    asked: list[int] = []

    def counting(spec: str, envelope: Any) -> Any:
        governor = make_governor(spec, envelope)
        predict = governor.predict
        governor.predict = lambda *a, **k: (asked.append(1), predict(*a, **k))[1]  # type: ignore[method-assign]
        return governor

    loop = GovernedLoop(torch.optim.AdamW(model.parameters()), "adamw", total_steps=4, vocab_size=50,
                        make_governor=counting)  # fmt: skip
    model(torch.ones(2, 4)).sum().backward()
    for loss, what in ((torch.ones(3), "a tensor of shape (3,)"), ("x", "'x'")):
        expected = f"loss: expected a one-element tensor or a number, got {what}"
        with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
            loop.step(loss)  # type: ignore[arg-type]
    assert loop.t == 0 and loop.step(torch.tensor(1.5)).loss == 1.5  # nothing was stepped, and it goes on
    assert len(asked) == 1


def test_plain_loop_without_rollback_and_unknown_initial_loss(lbw: None) -> None:
    """``rollback=False`` keeps no snapshots and refuses requests; ``initial_loss=None`` starts from the first loss."""
    env_run = run_env(Scripted([[0.0, 1.0, -1.0]]))
    plant = plant_for(env_run)
    loop = GovernedLoop(
        plant.optimizer,
        Scripted([[0.0, 1.0, 1.0]]),  # asks for a rollback every decision
        total_steps=16,
        vocab_size=plant.corpus.vocab_size,
        config=governance_of(env_run.env),
        rollback=False,
    )
    assert loop.governance.good is None
    for _ in range(16):
        x = plant.batches.next()
        loss = F.cross_entropy(plant.model(input_ids=x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        record = loop.step(loss)
    assert record.step == 15 and not loop.terminated
    assert [h.outcome.reason for h in loop.history] == ["requested", "requested"]
    assert loop.governance.interventions["rollback_refused"] == 2
    assert loop.governance.initial_loss == loop.records[0].loss
    assert set(loop.metrics()) >= {"governor/lr_scale", "governor/skipped_steps", "telemetry/grad_norm"}


# ----------------------------------------------------------------------------------------------------------
# One default envelope; a governor's own training settings
# ----------------------------------------------------------------------------------------------------------


def test_env_and_plain_loop_with_their_defaults_agree(lbw: None) -> None:
    """No governance settings anywhere: the env id's defaults and the loop's are the same (the evaluation suites'),
    so the guard through an LR shock gives the same records either way (rollback requests included)."""
    env = LBWEnv({"scenarios": ["tiny/ref"], "trainer_overrides": OVERRIDES})
    env_gov = make_governor("lbw_guard", env.cfg.envelope)
    obs, info = env.reset(seed=0)
    infos, start = [], True
    while True:
        action, _ = env_gov.predict(obs, episode_start=np.array([start]), deterministic=True)
        start = False
        obs, _, terminated, truncated, step_info = env.step(action)
        infos.append(step_info)
        if terminated or truncated:
            break
    records = [r for i in infos for r in i["records"]]
    env_run = EnvRun(env, records, info["run_seed"], infos[-1]["final"]["initial_valid_loss"], infos)

    plant = plant_for(env_run)
    loop = GovernedLoop(
        plant.optimizer,
        "lbw_guard",
        make_governor=make_governor,
        total_steps=STEPS,
        vocab_size=plant.corpus.vocab_size,
        params=plant.model.parameters(),
        initial_loss=env_run.initial_loss,  # the env starts from the validation loss (data, not a setting)
    )
    assert dataclasses.asdict(loop.config) == {
        k: v for k, v in dataclasses.asdict(env.cfg).items() if k in dataclasses.asdict(GovernanceConfig())
    }
    scheduler = ScheduleLR(plant.optimizer, plant.scheduled_lr)
    for _ in range(STEPS):
        x = plant.batches.next()
        loss = F.cross_entropy(plant.model(input_ids=x[:, :-1]).logits.flatten(0, 1).float(), x[:, 1:].flatten())
        loss.backward()
        loop.step(loss, tokens=int(x[:, 1:].numel()))
        scheduler.step()
    assert compared(loop.records) == compared(env_run.records)
    reasons = [i["rollback"] for i in infos]
    assert reasons == [h.outcome.reason for h in loop.history]
    assert "requested" in reasons, "the shock should have made the guard ask for a rollback"


class Trained(Scripted):
    """A scripted governor that carries the settings it was 'trained' with (as a learned one from a policy file)."""

    def __init__(self, actions: list[list[float]], settings: Any) -> None:
        super().__init__(actions)
        self.settings = settings


@dataclasses.dataclass(frozen=True)
class FakeSettings:
    decision_interval: int = 4
    window: int = 2
    envelope: Any = dataclasses.field(default_factory=lambda: {"rollback_action": False, "max_rollbacks": 1})


def small_optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)


def test_a_governor_s_training_settings_are_adopted() -> None:
    gov = Trained([[0.0, 1.0]], FakeSettings())
    loop = GovernedLoop(small_optimizer(), gov, total_steps=16, vocab_size=2048)
    assert (loop.config.decision_interval, loop.config.window) == (4, 2)
    assert loop.config.envelope == EnvelopeConfig(rollback_action=False, max_rollbacks=1)
    assert loop.governance.action_space.shape == (2,)
    assert loop.governance.observation().shape == (2 * len(FEATURE_NAMES),)
    # An equal config is no conflict; the loop still enforces no rollback budget without rollback targets.
    same = GovernanceConfig(
        decision_interval=4, window=2, envelope=EnvelopeConfig(rollback_action=False, max_rollbacks=1)
    )
    loop = GovernedLoop(small_optimizer(), gov, total_steps=16, vocab_size=2048, config=same, rollback=False)
    assert loop.config.envelope.max_rollbacks == 0
    # Without settings (rule governors): the defaults.
    assert (
        GovernedLoop(small_optimizer(), Scripted([[0.0, 1.0, -1.0]]), total_steps=8, vocab_size=2048).config
        == GovernanceConfig()
    )


def test_a_conflicting_config_is_one_line_naming_the_fields() -> None:
    gov = Trained([[0.0, 1.0]], FakeSettings())
    conflicts = (
        r"^window: trained with 2, this run has 4; envelope\.rollback_action: trained with False, this run has True; "
        r"envelope\.max_rollbacks: trained with 1, this run has 3 \(the governor's training settings"
    )
    with pytest.raises(ConfigError, match=conflicts) as err:
        GovernedLoop(
            small_optimizer(), gov, total_steps=16, vocab_size=2048, config=GovernanceConfig(decision_interval=4)
        )
    assert "\n" not in str(err.value) and "pass no governance config" in str(err.value)
    bad = Trained([[0.0, 1.0]], FakeSettings(envelope={"lr_scale_max": float("inf")}))
    with pytest.raises(ConfigError, match=r"^governor settings\.envelope\.lr_scale_max: expected a finite number"):
        GovernedLoop(small_optimizer(), bad, total_steps=16, vocab_size=2048)


def test_a_spec_is_rebuilt_for_its_own_settings() -> None:
    """A factory builds a spec for the loop's envelope; a governor that turns out to carry other settings is
    built again for them, so its actions are encoded for the envelope that will decode them."""
    seen: list[EnvelopeConfig | None] = []

    def factory(spec: str, envelope: EnvelopeConfig | None) -> Any:
        seen.append(envelope)
        return Trained([[0.0, 1.0]], FakeSettings())

    loop = GovernedLoop(small_optimizer(), "learned", make_governor=factory, total_steps=8, vocab_size=2048)
    assert seen == [EnvelopeConfig(), EnvelopeConfig(rollback_action=False, max_rollbacks=1)]
    assert loop.config.window == 2


def test_hf_trainer_adopts_or_refuses_a_governor_s_settings(lbw: None, tmp_path: Path) -> None:
    from lbw_env.integrations.hf import GovernedTrainer, PlantBlocks

    plant = Plant(load_trainer_config(overrides=OVERRIDES))
    common = {
        "model": plant.model,
        "args": hf_args(tmp_path, max_steps=8),
        "train_dataset": PlantBlocks.from_plant(plant),
    }
    gov = Trained([[0.0, 1.0]], FakeSettings())
    trainer = GovernedTrainer(**common, governor=gov)
    assert trainer.lbw_config.window == 2 and trainer.lbw_config.envelope.rollback_action is False
    with pytest.raises(ConfigError, match=r"^decision_interval: trained with 4, this run has 8"):
        GovernedTrainer(
            **common,
            governor=gov,
            governance=GovernanceConfig(window=2, envelope=EnvelopeConfig(rollback_action=False, max_rollbacks=1)),
        )
    with pytest.raises(ConfigError, match=r"make_governor=policies\.make_governor"):
        GovernedTrainer(**common)  # the default governor is the spec "lbw_guard": it needs the factory
    trainer.train()
    assert len(trainer.lbw.records) == 8 and len(trainer.lbw.history) == 2  # 2 decisions of 4 steps


# ----------------------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def lora_cfg(make_cfg: Callable[..., Any]) -> Callable[..., Any]:
    """A LoRA fine-tune of the qwen2-tiny base (an 8-step base checkpoint: cheap, and enough to fine-tune)."""

    def make(*overrides: str, **kw: Any) -> Any:
        return make_cfg("regime=finetune", "base_steps=8", "model.lora.r=4", "optim.warmup_steps=0", *overrides, **kw)

    return make


def state_bytes(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_lora_trains_only_the_adapters(lora_cfg: Callable[..., Any], corpus: Any) -> None:
    trainer = Plant(lora_cfg(), corpus)
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert {id(p) for p in trainer.params} == {id(p) for p in trainer.model.parameters() if p.requires_grad}
    described = trainer.describe()
    assert described["trainable_parameters"] < described["parameters"] / 5
    before = state_bytes(trainer.model)
    records = [trainer.step() for _ in range(4)]
    after = state_bytes(trainer.model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_B" in k for k in changed)  # B starts at zero: the adapters really learned
    # Telemetry is over the trainable (adapter) parameters.
    adapter_norm = float(torch.linalg.vector_norm(torch.stack([p.detach().norm() for p in trainer.params])))
    assert records[-1].param_norm == pytest.approx(adapter_norm, rel=1e-5)
    assert all(0 < r.update_ratio < 1 for r in records)


def test_lora_snapshot_restore_is_bit_exact(lora_cfg: Callable[..., Any], corpus: Any) -> None:
    from lbw_env.plant.optimizer import Control

    faults = [{"kind": "grad_noise", "start": 0, "length": 100, "magnitude": 0.3}]
    trainer = Plant(lora_cfg(faults=faults), corpus)
    for _ in range(3):
        trainer.step()
    snap = trainer.snapshot()
    controls = [Control(), Control(lr_scale=0.5), Control(force_skip=True), Control(lr_scale=1.5, skip_gate=1.0)]
    first = [trainer.step(c) for c in controls]
    end_first = state_bytes(trainer.model)
    trainer.restore(snap)
    assert [trainer.step(c) for c in controls] == first
    end_second = state_bytes(trainer.model)
    assert all(torch.equal(end_first[k], end_second[k]) for k in end_first)

    # reset(seed) re-initialises the adapters exactly as a fresh trainer with that seed does.
    fresh = Plant(lora_cfg("runtime.seed=5", faults=faults), corpus)
    trainer.reset(5)
    a, b = state_bytes(trainer.model), state_bytes(fresh.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [trainer.step() for _ in range(3)] == [fresh.step() for _ in range(3)]


def test_from_pretrained_with_lora(make_cfg: Callable[..., Any], corpus: Any, tmp_path: Path) -> None:
    """A save_pretrained checkpoint + LoRA: the checkpoint is the frozen base (B = 0: the same function at the
    start), only the adapters train, and the base bytes never change."""
    from lbw_env.plant.models import build_model

    cfg = make_cfg()
    base = build_model(cfg.model, corpus.vocab_size, cfg.data.seq_len, seed=3)
    base.save_pretrained(tmp_path / "ckpt")
    trainer = Plant(make_cfg(f"model.pretrained={tmp_path / 'ckpt'}", "model.lora.r=2", "model.lora.alpha=4"), corpus)
    assert trainer.lora is not None and trainer.lora.r == 2
    x = trainer.eval_data("valid")[:2, :-1]
    with torch.no_grad():
        assert torch.equal(trainer.model(input_ids=x).logits, base(input_ids=x).logits)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert len(frozen) == len(list(base.parameters()))
    for _ in range(3):
        assert not trainer.step().skipped
    now = dict(trainer.model.named_parameters())
    assert all(torch.equal(v, now[n]) for n, v in frozen.items())
    with torch.no_grad():
        assert not torch.equal(trainer.model(input_ids=x).logits, base(input_ids=x).logits)


def test_lora_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"model\.lora\.r:"):
        load_trainer_config({"model": {"lora": {"r": 8}}})  # LoRA on a random init: refused
    with pytest.raises(ConfigError, match=r"model\.lora\.rank"):
        load_trainer_config({"regime": "finetune", "model": {"lora": {"rank": 8}}})
    with pytest.raises(ConfigError, match="dropout"):
        load_trainer_config({"regime": "finetune", "model": {"lora": {"r": 8, "dropout": 1.5}}})
