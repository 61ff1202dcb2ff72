"""TrainConfig: one training run of a learned governor, as a typed dataclass with a docstring per field.

Loaded strictly by :mod:`lbw_env.config` (unknown keys and mistyped values fail with their dotted key, before
anything is built), from a YAML file plus ``key=value`` overrides. ``validate`` goes further than types: the
hyperparameters must be constructor arguments of the algorithm, SAC needs continuous actions, and every scenario
spec must resolve, so that a typo fails in a second instead of after minutes of env start-up.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import gymnasium as gym

import lbw_env
from lbw_env.config import (
    ConfigError,
    check,
    deep_merge,
    describe,
    from_dict,
    load,
    parse_overrides,
    read_yaml,
)
from lbw_env.scenarios import check_scenario_data, require_not_test, resolve, with_overrides

from .algos import algo_class, check_hyperparams
from .artifacts import run_dir_of_checkpoint
from .distribution import DistributionConfig
from .objective import ObjectiveConfig
from .residual import ResidualConfig

if TYPE_CHECKING:
    from lbw_env.env import EnvConfig


@dataclasses.dataclass
class NormalizeConfig:
    """VecNormalize: running statistics of observations (saved beside every model) and of returns."""

    norm_obs: bool = True
    """Normalise observations with running mean/std (the statistics are saved as ``vecnormalize.pkl``)."""
    norm_reward: bool = True
    """Scale rewards by the running std of the discounted return during training (never at evaluation)."""
    clip_obs: float = 10.0
    """Clip normalised observations to ``[-clip_obs, clip_obs]``."""
    clip_reward: float = 10.0
    """Clip normalised rewards to ``[-clip_reward, clip_reward]``."""

    def validate(self) -> None:
        # ``inf > 0`` holds: a non-finite clip would disable clipping while looking like a bound.
        check(math.isfinite(self.clip_obs) and self.clip_obs > 0, "clip_obs", "a positive finite float", self.clip_obs)
        check(
            math.isfinite(self.clip_reward) and self.clip_reward > 0,
            "clip_reward",
            "a positive finite float",
            self.clip_reward,
        )


SELECT_RULES = ("mean", "paired")
"""How a new evaluation replaces the best model (``eval.select``): see :func:`.callbacks.replaces_best`. Here,
not beside the rule, so that reading a config stays free of SB3's callbacks and scipy."""


@dataclasses.dataclass
class EvalConfig:
    """Evaluation during training on held-out scenarios (SB3 ``EvalCallback``), on fixed episodes."""

    scenarios: list[str] = dataclasses.field(default_factory=lambda: ["tiny:val"])
    """Scenario specs of the evaluation episodes (``family:val``, ``family/name`` ...): val, never test."""
    seeds: int = 2
    """Episodes per scenario per evaluation (``reset(seed=seed_offset + i)``, the same at every evaluation)."""
    seed_offset: int = 10_000
    """First evaluation seed. Far from the seeds 0..N that evaluation suites use, so that model selection
    never sees the suite's own initialisations and batch orders."""
    eval_freq: int = 2048
    """Timesteps (decisions summed over envs) between evaluations; 0: only once, at the end of training."""
    deterministic: bool = True
    """Evaluate the deterministic policy (mean action)."""
    at_start: bool = False
    """Also evaluate the starting policy, before any update (after the warm start), as a candidate for
    ``best_model``: a residual policy starts exactly at its base, so training must beat the base's own score on
    the held-out episodes (which counts the base's own skip and rollback costs) to replace it."""
    select: str = "mean"
    """How an evaluation replaces ``best_model``: ``mean`` (SB3's rule: a higher mean reward) or ``paired`` (the
    95 % paired t-interval of its per-episode rewards minus the best's lies above 0). With few evaluation
    episodes and noisy scenarios ``mean`` ships the luckiest checkpoint; ``paired`` (with ``at_start``) keeps the
    starting policy unless training beat it on the held-out episodes beyond their noise."""

    def validate(self) -> None:
        check(isinstance(self.at_start, bool), "at_start", "true or false", self.at_start)
        check(self.select in SELECT_RULES, "select", f"one of {', '.join(SELECT_RULES)}", self.select)
        check(self.seeds >= 1, "seeds", "an int >= 1", self.seeds)
        check(self.seed_offset >= 0, "seed_offset", "an int >= 0", self.seed_offset)
        check(self.eval_freq >= 0, "eval_freq", "an int >= 0 (0: only at the end)", self.eval_freq)
        check(bool(self.scenarios), "scenarios", "a non-empty list of scenario specs", self.scenarios)


@dataclasses.dataclass
class WarmStartConfig:
    """Imitation warm start before RL (:mod:`.warmstart`): rule rollouts, behaviour cloning, a pre-fit critic."""

    episodes: int = 0
    """Rollouts of the teacher on the training pool before RL; 0: no warm start (the policy starts as built)."""
    teacher: str = ""
    """Rule governor to clone (``lbw_guard`` ...). A residual policy's teacher is its base, whose action is the
    zero correction the policy already starts at: leave this empty then (the rollouts still warm the critic and
    the observation statistics)."""
    seed_offset: int = 5_000
    """First reset seed of the rollouts: apart from the policy's own training seeds (``seed`` + i) and from the
    evaluation seeds (``eval.seed_offset``, 10 000)."""
    bc_epochs: int = 30
    """Passes of behaviour cloning over the rollouts (a few thousand samples: cheap next to one episode)."""
    value_epochs: int = 30
    """Passes fitting the critic to the rollouts' returns under ``hyperparams.gamma`` (a cold critic's first
    advantages are noise, and PPO's first updates would move the policy on them)."""
    learning_rate: float = 1.0e-3
    """Adam step size of both fits (Adam's usual default; the fits are small supervised problems)."""
    batch_size: int = 64
    """Minibatch size of both fits."""
    loss: Literal["mse", "nll"] = "mse"
    """Continuous actions: ``mse`` fits the mean action and leaves the exploration std as configured; ``nll``
    maximises the log-likelihood (shrinks the std too). Discrete actions always use ``nll``."""
    dagger_rounds: int = 0
    """DAgger rounds after cloning (Ross et al. 2011): the policy drives ``dagger_episodes`` episodes, the teacher
    labels every state they visit, the labels join the data, and cloning runs again on all of it. Cloning alone
    sees only the teacher's states, so one early mistake takes the clone where it never saw the teacher act.
    0: cloning only. Not for a residual policy (its teacher answers the zero correction everywhere)."""
    dagger_episodes: int = 4
    """Episodes the policy drives in each DAgger round (reset seeds after the cloning rollouts')."""
    dagger_beta: float = 0.5
    """In round i the teacher's own action is sent at a decision with probability ``dagger_beta ** i`` (Ross et
    al.'s mixture, decaying to the policy alone); the teacher labels every decision either way."""

    counterfactual: bool = False
    """A once-per-run switch (``residual.switch_at``): before RL, run every training context (``objective.seeds``
    seeds, ``objective.per_scenario``) under every rule and fit the choice to the whole reward table
    (:mod:`.counterfactual`: a contextual bandit with every choice observed). The base is evaluated first (with
    ``eval.at_start``), the fitted switch next, and selection decides between them and anything RL adds after."""
    counterfactual_epochs: int = 200
    """Adam passes of that fit over the contexts (with ``batch_size`` and ``learning_rate``)."""

    def validate(self) -> None:
        check(self.episodes >= 0, "episodes", "an int >= 0 (0: no warm start)", self.episodes)
        check(isinstance(self.counterfactual, bool), "counterfactual", "true or false", self.counterfactual)
        check(self.counterfactual_epochs >= 1, "counterfactual_epochs", "an int >= 1", self.counterfactual_epochs)
        check(self.seed_offset >= 0, "seed_offset", "an int >= 0", self.seed_offset)
        check(self.bc_epochs >= 0, "bc_epochs", "an int >= 0", self.bc_epochs)
        check(self.value_epochs >= 0, "value_epochs", "an int >= 0", self.value_epochs)
        rate = self.learning_rate
        check(math.isfinite(rate) and rate > 0, "learning_rate", "a positive finite float", rate)
        check(self.batch_size >= 1, "batch_size", "an int >= 1", self.batch_size)
        check(self.dagger_rounds >= 0, "dagger_rounds", "an int >= 0 (0: cloning only)", self.dagger_rounds)
        check(self.dagger_episodes >= 1, "dagger_episodes", "an int >= 1", self.dagger_episodes)
        check(0.0 <= self.dagger_beta <= 1.0, "dagger_beta", "a float in [0, 1]", self.dagger_beta)


@dataclasses.dataclass
class TrainConfig:
    """One training run of a learned governor."""

    env_id: str = "LBW/WikiText-Tiny-v0"
    """Registered Gymnasium id (its scenario pool is the training pool unless ``env.scenarios`` is set)."""
    env: dict[str, Any] = dataclasses.field(default_factory=dict)
    """:class:`~lbw_env.env.EnvConfig` keys merged over the id's registration: ``decision_interval``, ``window``,
    ``envelope``, ``reward``, ``trainer_overrides`` (e.g. ``["optim.steps=96"]``) ... Unknown keys are errors."""
    algo: Literal["ppo", "a2c", "sac", "recurrent_ppo"] = "ppo"
    """SB3 algorithm; ``sac`` needs continuous actions; ``recurrent_ppo`` is sb3-contrib's LSTM PPO."""
    policy: str = ""
    """SB3 policy name; empty: ``MlpPolicy`` (``MlpLstmPolicy`` for ``recurrent_ppo``)."""
    hyperparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of the algorithm's constructor (``n_steps``, ``batch_size``, ``learning_rate`` — a float
    or ``lin_<x>`` for a linear decay —, ``gamma``, ``policy_kwargs`` with ``net_arch`` and ``activation_fn`` as
    a name such as ``tanh`` ...). Unknown names are errors."""
    total_timesteps: int = 20_000
    """Env steps (governor decisions, summed over envs) to train for, counted from the start of the run
    (a resumed run trains only the rest)."""
    n_envs: int = 2
    """Parallel envs (each a training run of the plant)."""
    vec_env: Literal["subproc", "dummy"] = "subproc"
    """``subproc``: one process per env (uses several cores); ``dummy``: all envs in this process."""
    threads: int = 1
    """Torch threads in this process and in each env process (set through the env's ``runtime.threads``
    trainer override, which wins over ``env.trainer_overrides``). Tiny models scale badly past one thread,
    and two processes x two threads on two cores thrash."""
    seed: int = 0
    """Seed of the policy, the envs (env i resets with ``seed + i``) and the action sampling."""
    device: str = "cpu"
    """Torch device of the policy (``cpu``: small MLP policies gain nothing from a GPU)."""
    normalize: NormalizeConfig = dataclasses.field(default_factory=NormalizeConfig)
    """VecNormalize settings (the evaluation env uses the training statistics, frozen, without reward scaling)."""
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    """Held-out evaluation, which picks ``best_model.zip``."""
    residual: ResidualConfig = dataclasses.field(default_factory=ResidualConfig)
    """Residual governor: ``residual.base`` names the rule the policy corrects (``lbw_guard`` ...), within
    ``lr_bound`` / ``gate_bound``, or, with ``residual.switch``, the first of the rules it picks from at each
    decision; the policy's output layer starts so that its deterministic answer is the base's, so training starts
    at the base. Empty base (the default): the policy acts alone."""
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
    """What the learner maximises (:mod:`.objective`): the budget's end as terminal, a terminal-only reward, a
    return relative to a rule's run on the same scenario and seed, a cost on a residual correction."""
    warm_start: WarmStartConfig = dataclasses.field(default_factory=WarmStartConfig)
    """Behaviour cloning of a rule and a pre-fit critic before RL (``warm_start.episodes`` > 0)."""
    distribution: DistributionConfig = dataclasses.field(default_factory=DistributionConfig)
    """Sampled training scenarios (``distribution.scenarios`` > 0): they replace ``env.scenarios`` as the pool,
    written to ``<run>/train_distribution.yaml``."""
    max_minutes: float = 0.0
    """Wall-clock budget of the training loop in minutes (0: none). When it is spent, training stops early and the
    run still evaluates, saves and plots (a few minutes more for the final evaluation)."""
    checkpoint_freq: int = 4096
    """Timesteps between checkpoints (model, VecNormalize, replay buffer); 0: none."""
    save_replay_buffer: bool = True
    """Off-policy algorithms: save the replay buffer with every checkpoint (needed for an exact resume)."""
    runs_dir: str = "runs"
    """Parent folder of run folders ``<env>__<algo>__<seed>__<time>``."""
    run_dir: str = ""
    """Explicit run folder (e.g. ``artifacts/ppo_tiny``); empty: a new folder under ``runs_dir``, or the folder
    of the checkpoint being resumed."""
    resume: str = ""
    """Checkpoint ``.zip`` to continue from (``<run>/checkpoints/model_<N>_steps.zip``): same run folder,
    timesteps, TensorBoard run and monitor files continue."""
    progress_bar: bool = True
    """Show SB3's progress bar (tqdm + rich)."""
    verbose: int = 1
    """SB3 verbosity: 0 quiet, 1 training logs and evaluations on stdout."""
    log_interval: int = 1
    """SB3 ``learn(log_interval=...)``: rollouts (on-policy) or episodes (off-policy) between log dumps."""

    def validate(self) -> None:
        steps_ok = self.total_timesteps >= 1 or (self.total_timesteps == 0 and self.warm_start.counterfactual)
        check(steps_ok, "total_timesteps", "an int >= 1 (0 only with warm_start.counterfactual)", self.total_timesteps)
        check(self.n_envs >= 1, "n_envs", "an int >= 1", self.n_envs)
        check(self.threads >= 1, "threads", "an int >= 1", self.threads)
        check(self.seed >= 0, "seed", "an int >= 0", self.seed)
        check(self.checkpoint_freq >= 0, "checkpoint_freq", "an int >= 0 (0: no checkpoints)", self.checkpoint_freq)
        check(self.log_interval >= 1, "log_interval", "an int >= 1", self.log_interval)
        minutes = self.max_minutes
        check(math.isfinite(minutes) and minutes >= 0, "max_minutes", "a finite float >= 0 (0: no limit)", minutes)
        check(not self.resume or self.resume.endswith(".zip"), "resume", "a checkpoint .zip path", self.resume)
        env_cfg = self.env_config()
        if self.residual.enabled and env_cfg.envelope.action_mode != "continuous":
            raise ConfigError(
                f"residual.base: a residual correction needs continuous actions, but env.envelope.action_mode is "
                f"{env_cfg.envelope.action_mode!r}"
            )
        if self.algo == "sac" and env_cfg.envelope.action_mode != "continuous":
            raise ConfigError(
                f"algo: sac needs continuous actions, but env.envelope.action_mode is "
                f"{env_cfg.envelope.action_mode!r}; use ppo/a2c/recurrent_ppo or action_mode: continuous"
            )
        self._check_warm_start()
        self._check_scenarios(env_cfg)
        try:
            cls = algo_class(self.algo)
        except ConfigError as e:  # e.g. recurrent_ppo without sb3-contrib
            raise ConfigError(f"algo: {e}") from None
        check_hyperparams(cls, self.hyperparams)
        # The env's observation is a flat Box: image (Cnn) and dict (MultiInput) policies cannot take it.
        flat = sorted(name for name in cls.policy_aliases if name.startswith("Mlp"))
        check(self.policy_name() in flat, "policy", f"one of {', '.join(flat)} (empty: the default)", self.policy)
        device = re.fullmatch(r"cpu|auto|mps|cuda(:\d+)?", self.device)
        check(device is not None, "device", "cpu, cuda, cuda:<index>, mps or auto", self.device)

    # -- derived configuration --------------------------------------------------------------------------

    def env_kwargs(self) -> dict[str, Any]:
        """The env mapping actually passed to ``gymnasium.make``: ``env`` plus the ``runtime.threads`` override."""
        kwargs = dict(self.env)
        overrides = kwargs.get("trainer_overrides") or []
        if not isinstance(overrides, list):
            raise ConfigError(f"env.trainer_overrides: expected a list of key=value strings, got {overrides!r}")
        kwargs["trainer_overrides"] = [*overrides, f"runtime.threads={self.threads}"]
        return kwargs

    def env_config(self, scenarios: Sequence[str] | None = None) -> EnvConfig:
        """The resolved :class:`~lbw_env.env.EnvConfig` of training (or, with ``scenarios``, of evaluation)."""
        # Imported here, not at the top: lbw_env.env loads torch, which --help-config and the checks of a
        # config file (no env built yet) do without.
        from lbw_env.env import EnvConfig

        if self.env_id not in lbw_env.ENV_IDS or self.env_id not in gym.registry:
            ids = ", ".join(sorted(lbw_env.ENV_IDS))
            raise ConfigError(f"env_id: {self.env_id!r} is not an lbw_env id; expected one of {ids}")
        # What the registration passes (a ``config`` mapping and/or EnvConfig keys), merged as LBWEnv merges it.
        spec_kwargs = dict(gym.spec(self.env_id).kwargs)
        registered = deep_merge(dict(spec_kwargs.pop("config", None) or {}), spec_kwargs)
        data = deep_merge(registered, self.env_kwargs())
        if scenarios is not None:
            data["scenarios"] = list(scenarios)
        return from_dict(EnvConfig, data, "env")

    def _check_warm_start(self) -> None:
        w = self.warm_start
        if (w.episodes or w.counterfactual) and self.algo not in ("ppo", "a2c"):
            raise ConfigError(f"warm_start: needs an actor-critic policy (ppo or a2c), not {self.algo}")
        if w.counterfactual:
            self._check_counterfactual()
        if not w.episodes:
            return
        if self.residual.enabled and w.teacher:
            raise ConfigError(
                f"warm_start.teacher: a residual policy's teacher is its base ({self.residual.base}); leave it empty"
            )
        if self.residual.enabled and w.dagger_rounds:
            raise ConfigError(
                "warm_start.dagger_rounds: a residual policy's teacher answers the zero correction at every state; "
                "DAgger has nothing to label (leave it 0)"
            )
        if not self.residual.enabled and not w.teacher:
            raise ConfigError("warm_start.teacher: expected a rule governor spec to clone (e.g. lbw_guard)")

    def _check_counterfactual(self) -> None:
        r, o = self.residual, self.objective
        why = "warm_start.counterfactual: needs"
        if not (r.enabled and r.switch and r.switch_at >= 0):
            raise ConfigError(f"{why} a once-per-run switch (residual.switch and residual.switch_at >= 0)")
        if o.seeds <= 0:
            raise ConfigError(f"{why} a finite set of training contexts (objective.seeds > 0)")
        if o.relative_to != r.base:
            raise ConfigError(
                f"{why} objective.relative_to to be the switch's base ({r.base!r}), not {o.relative_to!r}: the base's "
                "run is the objective's"
            )

    def _check_scenarios(self, env_cfg: EnvConfig) -> None:
        """Scenario specs and trainer overrides resolve (no data is loaded)."""
        for where, specs in (("env.scenarios", env_cfg.scenarios), ("eval.scenarios", self.eval.scenarios)):
            try:
                for s in require_not_test(resolve(specs), "a learned governor's training or model selection"):
                    with_overrides(s, env_cfg.trainer_overrides)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None

    def eval_episodes(self) -> list[tuple[str, int]]:
        """The fixed evaluation episodes: every eval scenario with seeds ``seed_offset .. seed_offset+seeds-1``."""
        names = list(dict.fromkeys(s.name for s in resolve(self.eval.scenarios)))
        return [(name, self.eval.seed_offset + i) for i in range(self.eval.seeds) for name in names]

    def policy_name(self) -> str:
        """The SB3 policy class name (``policy``, or the algorithm's MLP policy)."""
        return self.policy or ("MlpLstmPolicy" if self.algo == "recurrent_ppo" else "MlpPolicy")


def load_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A validated :class:`TrainConfig` from a YAML file (or, without one, the run folder of ``resume=``)."""
    if path is None:
        resume = parse_overrides(overrides).get("resume")
        if not resume:
            raise ConfigError("--config: required (or resume=<checkpoint.zip>, which reads its run's config.yaml)")
        path = run_dir_of_checkpoint(Path(resume)) / "config.yaml"
        if not path.is_file():
            raise ConfigError(f"resume={resume}: no config.yaml in its run folder {path.parent}; pass --config")
        # Resuming with the saved config: its resume/run_dir are replaced by the ones given now.
    data = read_yaml(path)
    try:
        return load(TrainConfig, data, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def check_data(cfg: TrainConfig) -> None:
    """Load and check the data of every training and evaluation scenario, once per distinct data config (see
    :func:`lbw_env.plant.data.check_data`), before a run folder exists: a missing or empty file, a train split
    shorter than a batch of blocks, or an unwritable cache ends the start with one line naming the scenario and
    the file, instead of a traceback from an env worker after the run folder was made. The caches it fills are
    the ones the envs read."""
    for where, specs in (("env.scenarios", None), ("eval.scenarios", cfg.eval.scenarios)):
        env_cfg = cfg.env_config(specs)
        pairs = [(s.name, with_overrides(s, env_cfg.trainer_overrides).trainer) for s in resolve(env_cfg.scenarios)]
        check_scenario_data(pairs, where)


def config_help() -> str:
    """Every key of :class:`TrainConfig` with its type, default and documentation (``--help-config``)."""
    rows = describe(TrainConfig)
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"  {key:<{width}}  {tp} = {default}\n  {'':<{width}}  {doc}" for key, tp, default, doc in rows)
