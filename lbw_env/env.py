"""``LBWEnv``: governing real language-model training as a Gymnasium environment."""

from __future__ import annotations

import collections
import dataclasses
import io
import time
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from .config import ConfigError, check, deep_merge, from_dict
from .control.features import FEATURE_NAMES, FEATURES
from .control.governance import Governance, GovernanceConfig
from .control.reward import RewardConfig, reward_terms
from .plant import runtime
from .plant.records import StepRecord
from .plant.trainer import Plant, Snapshot
from .render import EpisodeTrace, ansi_line, draw_frame
from .scenarios import Scenario, get_scenario, resolve, with_overrides


@dataclasses.dataclass
class EnvConfig(GovernanceConfig):
    """Everything an :class:`LBWEnv` needs besides the scenarios' own training configs.

    The governance settings (``decision_interval``, ``window``, ``envelope``, ``healthy_ratio``) are inherited
    from :class:`~lbw_env.control.governance.GovernanceConfig`, the one definition the integrations use too.
    """

    scenarios: list[str] = dataclasses.field(default_factory=lambda: ["tiny:train"])
    """Scenario pool: ``family/name``, ``family``, or ``family:train``/``family:heldout``. ``reset`` draws from it."""
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    """Reward weights."""
    trainer_overrides: list[str] = dataclasses.field(default_factory=list)
    """``key=value`` overrides applied to every scenario's trainer config (e.g. ``runtime.threads=1``)."""
    initial_cache: int = 32
    """How many (scenario, seed) initial states to keep in memory, so that resets cost a copy."""

    def validate(self) -> None:
        super().validate()
        check(self.initial_cache >= 1, "initial_cache", "an int >= 1", self.initial_cache)


@dataclasses.dataclass
class _Initial:
    snapshot: Snapshot
    valid_loss: float


class LBWEnv(gym.Env[np.ndarray, np.ndarray]):
    """Govern a language model's AdamW training on WikiText, one decision interval at a time.

    ## Description

    Each episode is one training run of a *scenario* (model preset, regime, LR, schedule, faults) drawn from
    the pool at ``reset``. Every ``step`` runs ``decision_interval`` real AdamW steps under the control that the
    action asks for, after the safety envelope has bounded it. The governor never touches the model: it sees
    telemetry and moves two knobs, the LR scale and the skip gate.

    ## Action Space

    ``action_mode: continuous`` (default): ``Box(-1, 1, (2,), float32)``, or ``(3,)`` with ``rollback_action``.

    | Num | Action | Meaning |
    |-----|--------|---------|
    | 0 | LR move | multiply the LR scale by ``max_factor ** a`` (bounded to ``[lr_scale_min, lr_scale_max]``) |
    | 1 | skip gate | ``a >= never_above``: never skip; else a gate from ``gate_min`` (a=-1) to ``gate_max`` z-units |
    | 2 | rollback | (optional) ``a > 0`` asks to roll back to the last good snapshot |

    The default envelope has the rollback component (``rollback_action: true``) and no automatic rollback
    (``auto_rollback: false``): the envelope every evaluation suite runs, so a governor trained on an id's
    defaults is evaluated and deployed (``lbw_env.integrations``) under the envelope it learned in.

    ``action_mode: discrete``: ``MultiDiscrete([lr_bins, gate_bins(, 2)])`` over the same moves and gates; the
    middle LR bin holds the scale, the last gate bin never skips.

    NaN, inf and out-of-range values are clamped (NaN to the neutral value) and counted in
    ``info["interventions"]``, never an error. A malformed action is a ``ValueError`` naming ``action``: the
    wrong number of values, values that are not real numbers (complex, boolean, strings), an integer array for
    the continuous space (a ``MultiDiscrete`` policy's bins), or fractional bins for the discrete space.

    ## Observation Space

    ``Box(-5, 5, (window * {n_features},), float32)``: the last ``window`` decision intervals, oldest first,
    each a row of these features (zero rows pad the start of an episode):

    {feature_table}

    ## Rewards

    Per decision: the decrease of the smoothed training log-loss over the interval, minus ``skip_cost`` per
    skipped step and ``rollback_cost`` per rollback. At the end of the episode, a correction from the last
    smoothed training loss to the measured validation loss, so the return telescopes to
    ``initial loss - final validation loss - costs``; ``divergence_penalty`` if the run diverged. Every term
    is in ``info["reward_terms"]``.

    ## Starting State

    ``reset(seed)`` draws a scenario (or takes ``options["scenario"]``) and a run seed from ``seed``; the run
    starts from a fresh initialisation (``scratch``) or the cached base checkpoint (``finetune``), with empty
    AdamW state, LR scale ``lr_scale_init`` and the gate off. Initial states are cached, so a reset costs a copy.

    ## Episode End

    * ``terminated``: the run diverged beyond what the envelope can recover — the envelope's own criterion
      (``auto_rollback: true``) needed a rollback and the rollback budget was spent. With the default envelope
      (``auto_rollback: false``) the envelope never declares divergence: a diverged run goes on to its end and
      shows in the final validation loss (and the reward).
    * ``truncated``: the scenario's step budget is spent.

    An exception in training propagates; it is never reported as ``truncated``.

    ## Info

    ``scenario``, ``records`` (the interval's :class:`~lbw_env.plant.records.StepRecord` list), ``control``,
    ``interventions``, ``rollback`` (the reason, or ``""``), ``reward_terms``, ``step``; at the episode's end
    also ``final`` with ``valid_loss``, ``valid_ppl``, ``diverged``, ``wall_time`` and step counts.

    ## Arguments

    ``gymnasium.make("LBW/WikiText-Tiny-v0", config={{...}}, render_mode="ansi")`` where ``config`` is an
    :class:`EnvConfig` or its mapping (keys as in ``EnvConfig``; unknown keys are errors).

    ## Rendering

    ``render_mode="ansi"``: one line per decision. ``render_mode="rgb_array"`` (what SB3 asks for when it makes
    an env from its id): a ``(480, 640, 3)`` ``uint8`` image of the episode so far — step and smoothed loss,
    skipped steps and rollbacks, the LR scale — drawn only when ``render()`` is called (see
    :mod:`lbw_env.render`).

    ## Pickling

    An env pickles at any point (``pickle``, ``copy.deepcopy``): the state goes through ``torch.save``, which
    keeps tensors that share storage sharing it (the governed optimizer's norm buffers are views), and a copy
    steps exactly as the original. The initial-state cache is left out; it is rebuilt on demand.

    ## Version History

    * v0: initial version.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}  # noqa: RUF012

    def __init__(
        self, config: EnvConfig | Mapping[str, Any] | None = None, render_mode: str | None = None, **kwargs: Any
    ) -> None:
        # Keyword arguments (the registration's defaults, e.g. the id's scenario pool, and the caller's) are the
        # base; an explicit ``config`` overrides them key by key.
        if isinstance(config, EnvConfig):
            cfg = config if not kwargs else from_dict(EnvConfig, deep_merge(kwargs, dataclasses.asdict(config)))
        elif config is None or isinstance(config, Mapping):
            cfg = from_dict(EnvConfig, deep_merge(kwargs, dict(config or {})))
        else:
            raise ConfigError(f"config: expected an EnvConfig or a mapping of its fields, got {config!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(f"render_mode: expected one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.cfg = cfg
        self.render_mode = render_mode
        self.pool: list[Scenario] = [with_overrides(s, cfg.trainer_overrides) for s in resolve(cfg.scenarios)]
        # Envelope, telemetry window and rollback targets: the same Governance the integrations use.
        self.governance: Governance[Snapshot] = Governance(cfg)
        self.envelope = self.governance.envelope
        self.action_space = self.envelope.action_space
        self.observation_space = self.governance.observation_space()
        self._trainers: dict[str, Plant] = {}
        self._initial: collections.OrderedDict[tuple[str, int], _Initial] = collections.OrderedDict()
        self.trainer: Plant | None = None
        self.scenario: Scenario | None = None
        self._good_owner: Plant | None = None  # whose parameter shapes the rollback buffers have
        self._ended = False
        self._last_records: list[StepRecord] = []
        self._last_info: dict[str, Any] = {}
        self._trace: EpisodeTrace | None = None

    # -- plant management -------------------------------------------------------------------------------

    def _get_trainer(self, scenario: Scenario) -> Plant:
        if scenario.name not in self._trainers:
            self._trainers[scenario.name] = Plant(scenario.trainer, gate=self.cfg.envelope.gate_config())
        return self._trainers[scenario.name]

    def _scenario(self, name: str) -> Scenario:
        for s in self.pool:
            if s.name == name:
                return s
        return with_overrides(get_scenario(name), self.cfg.trainer_overrides)

    def _start(self, scenario: Scenario, run_seed: int) -> _Initial:
        """Bring the scenario's trainer to its initial state for ``run_seed`` (cached after the first time)."""
        trainer = self._get_trainer(scenario)
        key = (scenario.name, run_seed)
        initial = self._initial.get(key)
        if initial is not None:
            self._initial.move_to_end(key)
            trainer.restore(initial.snapshot)
            return initial
        trainer.reset(run_seed)
        initial = _Initial(trainer.snapshot(), trainer.evaluate("valid").loss)
        self._initial[key] = initial
        if len(self._initial) > self.cfg.initial_cache:
            self._initial.popitem(last=False)
        return initial

    # -- Gymnasium API ----------------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if options is not None and not isinstance(options, Mapping):
            raise ValueError(f"reset options: expected a mapping such as {{'scenario': 'tiny/ref'}}, got {options!r}")
        options = dict(options or {})
        unknown = set(options) - {"scenario"}
        if unknown:
            raise ValueError(f"reset options: unknown keys {sorted(unknown)}; expected 'scenario'")
        name = options.get("scenario", "")
        if "scenario" in options and not (isinstance(name, str) and name.count("/") == 1):
            raise ValueError(f"reset options.scenario: expected one scenario as a 'family/name' string, got {name!r}")
        # Draw both numbers every time, so a run's seed does not depend on how the scenario was chosen.
        index = int(self.np_random.integers(len(self.pool)))
        run_seed = int(self.np_random.integers(2**31 - 1))
        self.scenario = self._scenario(options["scenario"]) if "scenario" in options else self.pool[index]
        self.trainer = self._get_trainer(self.scenario)
        runtime.configure(self.scenario.trainer.runtime.threads, self.scenario.trainer.runtime.mallopt)
        initial = self._start(self.scenario, run_seed)
        # Reuse the rollback buffers only for the same trainer: scenarios of a pool may have different shapes.
        if self._good_owner is not self.trainer:
            self.governance.forget_snapshots()
        self._good_owner = self.trainer
        trainer = self.trainer
        obs = self.governance.reset(
            initial.valid_loss,
            lambda into: trainer.snapshot(into=into),
            vocab_size=trainer.corpus.vocab_size,
            total_steps=self.scenario.trainer.optim.steps,
        )
        self._initial_loss = initial.valid_loss
        self._t0 = time.perf_counter()
        self._train_seconds = 0.0
        self._skipped = 0
        self._ended = False
        self._last_records = []
        self._last_info = {"scenario": self.scenario.name, "run_seed": run_seed, "step": 0}
        self._trace = EpisodeTrace.start(self.scenario.name, self.scenario.trainer.optim.steps, initial.valid_loss)
        return obs, dict(self._last_info)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self.trainer is None or self.governance.window is None or self.scenario is None:
            raise RuntimeError("LBWEnv.step() called before reset()")
        if self._ended or self.trainer.done:
            raise RuntimeError("LBWEnv.step() called after the episode ended; call reset()")
        trainer, envelope = self.trainer, self.envelope
        decision = self.governance.decide(action)

        # Run the interval under the bounded control.
        n = min(self.cfg.decision_interval, trainer.cfg.optim.steps - trainer.t)
        records = [trainer.step(decision.control) for _ in range(n)]
        self._train_seconds += sum(r.seconds for r in records)
        skipped = sum(r.skipped for r in records)
        self._skipped += skipped
        # The envelope's rollback policy: restore the last good weights (not the data position: training moves
        # on to new batches), or declare divergence; healthy intervals leave rollback targets.
        outcome = self.governance.end_interval(
            records,
            trainer.t,
            trainer.governed.loss_stats,
            decision.rollback_requested,
            snapshot_fn=lambda into: trainer.snapshot(into=into),
            restore_fn=lambda snap: trainer.restore(snap, rewind=False),
        )
        reason, rolled_back, terminated = outcome.reason, outcome.rolled_back, outcome.terminated
        truncated = trainer.done and not terminated
        self._ended = terminated or truncated

        info: dict[str, Any] = {
            "scenario": self.scenario.name,
            "step": trainer.t,
            "records": records,
            "control": {"lr_scale": decision.control.lr_scale, "skip_gate": decision.control.skip_gate},
            "interventions": dict(envelope.interventions),
            "rollback": reason,
        }
        valid_loss = None
        if terminated or truncated:
            result = trainer.evaluate("valid")
            valid_loss = result.loss
            info["final"] = {
                "valid_loss": result.loss,
                "valid_ppl": result.ppl,
                "initial_valid_loss": self._initial_loss,
                "diverged": terminated,
                "steps": trainer.t,
                "skipped_steps": self._skipped,
                "rollbacks": envelope.rollbacks,
                "train_seconds": self._train_seconds,
                "wall_time": time.perf_counter() - self._t0,
            }
        terms = reward_terms(
            self.cfg.reward, outcome.prev_loss, outcome.loss, skipped, rolled_back, terminated, valid_loss
        )
        info["reward_terms"] = terms
        self._last_records, self._last_info = records, info
        if self._trace is not None:
            self._trace.add(records, outcome.loss, bool(rolled_back))
            if "final" in info:
                self._trace.final_ppl = info["final"]["valid_ppl"]
        reward = float(sum(terms.values()))
        return self.governance.observation(), reward, terminated, truncated, info

    def render(self) -> str | np.ndarray | None:
        """``ansi``: the last decision as a line of text; ``rgb_array``: the episode so far as an RGB image."""
        if self.render_mode == "ansi":
            return ansi_line(self._last_info, self._last_records)
        if self.render_mode == "rgb_array":
            bounds = (self.cfg.envelope.lr_scale_min, self.cfg.envelope.lr_scale_max)
            return draw_frame(self._trace, bounds)
        return None

    # -- pickling ---------------------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # Plain pickle copies every tensor's storage separately, so views (the governed optimizer's norm
        # targets into one buffer) would come back as unconnected copies and the copy would silently measure
        # garbage; torch.save keeps storages shared. The initial-state cache (snapshots of up to
        # ``initial_cache`` runs) is left out: _start rebuilds an entry on demand, with identical results.
        state = dict(self.__dict__)
        state["_initial"] = collections.OrderedDict()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return {"torch_state": buffer.getvalue()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # weights_only=False: an env is arbitrary Python objects; unpickling it trusts the bytes as pickle does.
        self.__dict__.update(torch.load(io.BytesIO(state["torch_state"]), weights_only=False))
        if self.scenario is not None:  # the same thread settings as the original's (they change float sums)
            runtime.configure(self.scenario.trainer.runtime.threads, self.scenario.trainer.runtime.mallopt)


def _feature_table() -> str:
    rows = ["| Index | Feature | Meaning |", "|-------|---------|---------|"]
    rows += [f"| {i} | ``{name}`` | {FEATURES[name].doc} |" for i, name in enumerate(FEATURE_NAMES)]
    return "\n    ".join(rows)


# The observation table is generated from FEATURE_NAMES, so the docstring cannot drift from the code.
LBWEnv.__doc__ = (
    (LBWEnv.__doc__ or "")
    .replace("{feature_table}", _feature_table())
    .replace("{n_features}", str(len(FEATURE_NAMES)))
    .replace("{{", "{")
    .replace("}}", "}")
)
