"""Train a learned governor with Stable-Baselines3: YAML -> vectorised LBW envs -> SB3 -> ``runs/<run>/``.

    python train_policy.py --config configs/train/ppo.yaml [key=value ...]
    python train_policy.py --config configs/train/ppo.yaml n_envs=1 vec_env=dummy total_timesteps=2000
    python train_policy.py resume=runs/<run>/checkpoints/model_4096_steps.zip       # config from the run folder
    python train_policy.py --config configs/train/ppo.yaml --measure 60           # env throughput only
    python train_policy.py --help-config                                           # every key, type, default

The run folder ``runs/<env>__<algo>__<seed>__<time>/`` (or ``run_dir=...``) holds:

* ``config.yaml`` — the resolved :class:`TrainConfig` (loadable again; ``resume=`` uses it), ``env.yaml`` — the
  resolved env config of training and the evaluation episodes;
* ``best_model.zip`` + ``vecnormalize.pkl`` — the best model on the held-out evaluation episodes and the
  observation statistics it was evaluated with: ``evaluate.py --governors ppo:<run>/best_model.zip``;
* ``final/model.zip`` + ``final/vecnormalize.pkl`` — the model at the end of training;
* ``checkpoints/model_<N>_steps.zip`` (+ ``model_vecnormalize_<N>_steps.pkl``, and the replay buffer for SAC);
* ``monitor/<i>.monitor.csv`` (training episodes per env), ``monitor/eval.monitor.csv``;
* ``evaluations.npz`` + ``learning_curve.png``; ``tb/<ALGO>_1/`` TensorBoard; ``summary.json``.

Why it looks the way it does: every env step is a governor decision over ``decision_interval`` real AdamW steps
of a small language model, so the plant, not the policy update, is the cost (see ``artifacts/README.md`` for
measurements). Each env process therefore gets exactly ``threads`` torch threads (two processes x two threads
on two cores thrash), and evaluation runs fixed held-out episodes rather than many random ones.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import importlib.util
import inspect
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from lbw_env.config import (
    ConfigError,
    check,
    deep_merge,
    describe,
    fix_yaml_floats,
    from_dict,
    load,
    parse_overrides,
    read_yaml,
    to_dict,
)
from policies.sb3 import algo_class as sb3_algo_class

OFF_POLICY = ("sac",)
RESERVED_HYPERPARAMS = ("policy", "env", "seed", "device", "tensorboard_log", "verbose", "_init_setup_model")
"""Constructor arguments that TrainConfig sets itself (``hyperparams`` may not)."""
ACTIVATIONS = {"tanh": "Tanh", "relu": "ReLU", "elu": "ELU", "leaky_relu": "LeakyReLU", "gelu": "GELU", "silu": "SiLU"}
CHECKPOINT_RE = re.compile(r"^(?P<prefix>.+)_(?P<steps>\d+)_steps\.zip$")


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------


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
        check(self.clip_obs > 0, "clip_obs", "a positive float", self.clip_obs)
        check(self.clip_reward > 0, "clip_reward", "a positive float", self.clip_reward)


@dataclasses.dataclass
class EvalConfig:
    """Evaluation during training on held-out scenarios (SB3 ``EvalCallback``), on fixed episodes."""

    scenarios: list[str] = dataclasses.field(default_factory=lambda: ["tiny:heldout"])
    """Scenario specs of the evaluation episodes (``family:heldout``, ``family/name`` ...)."""
    seeds: int = 2
    """Episodes per scenario per evaluation (``reset(seed=seed_offset + i)``, the same at every evaluation)."""
    seed_offset: int = 10_000
    """First evaluation seed. Far from the seeds 0..N that evaluation suites use, so that model selection
    never sees the suite's own initialisations and batch orders."""
    eval_freq: int = 2048
    """Timesteps (decisions summed over envs) between evaluations; 0: only once, at the end of training."""
    deterministic: bool = True
    """Evaluate the deterministic policy (mean action)."""

    def validate(self) -> None:
        check(self.seeds >= 1, "seeds", "an int >= 1", self.seeds)
        check(self.seed_offset >= 0, "seed_offset", "an int >= 0", self.seed_offset)
        check(self.eval_freq >= 0, "eval_freq", "an int >= 0 (0: only at the end)", self.eval_freq)
        check(bool(self.scenarios), "scenarios", "a non-empty list of scenario specs", self.scenarios)


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
        check(self.total_timesteps >= 1, "total_timesteps", "an int >= 1", self.total_timesteps)
        check(self.n_envs >= 1, "n_envs", "an int >= 1", self.n_envs)
        check(self.threads >= 1, "threads", "an int >= 1", self.threads)
        check(self.seed >= 0, "seed", "an int >= 0", self.seed)
        check(self.checkpoint_freq >= 0, "checkpoint_freq", "an int >= 0 (0: no checkpoints)", self.checkpoint_freq)
        check(self.log_interval >= 1, "log_interval", "an int >= 1", self.log_interval)
        check(self.max_minutes >= 0, "max_minutes", "a float >= 0 (0: no limit)", self.max_minutes)
        check(not self.resume or self.resume.endswith(".zip"), "resume", "a checkpoint .zip path", self.resume)
        env_cfg = self.env_config()
        if self.algo == "sac" and env_cfg.envelope.action_mode != "continuous":
            raise ConfigError(
                f"algo: sac needs continuous actions, but env.envelope.action_mode is "
                f"{env_cfg.envelope.action_mode!r}; use ppo/a2c/recurrent_ppo or action_mode: continuous"
            )
        self._check_scenarios(env_cfg)
        check_hyperparams(self.algo, self.hyperparams)

    # -- derived configuration --------------------------------------------------------------------------

    def env_kwargs(self) -> dict[str, Any]:
        """The env mapping actually passed to ``gymnasium.make``: ``env`` plus the ``runtime.threads`` override."""
        kwargs = fix_yaml_floats(dict(self.env))
        overrides = kwargs.get("trainer_overrides") or []
        if not isinstance(overrides, list):
            raise ConfigError(f"env.trainer_overrides: expected a list of key=value strings, got {overrides!r}")
        kwargs["trainer_overrides"] = [*overrides, f"runtime.threads={self.threads}"]
        return kwargs

    def env_config(self, scenarios: Sequence[str] | None = None) -> Any:
        """The resolved :class:`~lbw_env.env.EnvConfig` of training (or, with ``scenarios``, of evaluation)."""
        import gymnasium as gym

        import lbw_env
        from lbw_env.env import EnvConfig

        if self.env_id not in gym.registry:
            ids = ", ".join(sorted(lbw_env.ENV_IDS))
            raise ConfigError(f"env_id: {self.env_id!r} is not registered; expected one of {ids}")
        # What the registration passes (a ``config`` mapping and/or EnvConfig keys), merged as LBWEnv merges it.
        spec_kwargs = dict(gym.spec(self.env_id).kwargs)
        registered = deep_merge(dict(spec_kwargs.pop("config", None) or {}), spec_kwargs)
        data = deep_merge(registered, self.env_kwargs())
        if scenarios is not None:
            data["scenarios"] = list(scenarios)
        return from_dict(EnvConfig, data, "env")

    def _check_scenarios(self, env_cfg: Any) -> None:
        """Scenario specs and trainer overrides resolve (no data is loaded)."""
        from lbw_env.scenarios import resolve, with_overrides

        for where, specs in (("env.scenarios", env_cfg.scenarios), ("eval.scenarios", self.eval.scenarios)):
            try:
                for s in resolve(specs):
                    with_overrides(s, env_cfg.trainer_overrides)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None

    def eval_episodes(self) -> list[tuple[str, int]]:
        """The fixed evaluation episodes: every eval scenario with seeds ``seed_offset .. seed_offset+seeds-1``."""
        from lbw_env.scenarios import resolve

        names = list(dict.fromkeys(s.name for s in resolve(self.eval.scenarios)))
        return [(name, self.eval.seed_offset + i) for i in range(self.eval.seeds) for name in names]

    def policy_name(self) -> str:
        return self.policy or ("MlpLstmPolicy" if self.algo == "recurrent_ppo" else "MlpPolicy")


def algo_class(algo: str) -> Any:
    """The SB3 (or sb3-contrib) class of ``algo`` (one implementation, shared with ``policies.sb3``)."""
    try:
        return sb3_algo_class(algo)
    except ConfigError as e:
        raise ConfigError(f"algo: {e}") from None


def check_hyperparams(algo: str, hyperparams: dict[str, Any]) -> None:
    """Every key must be a constructor argument of the algorithm that TrainConfig does not set itself."""
    cls = algo_class(algo)
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    for key in hyperparams:
        if key in RESERVED_HYPERPARAMS:
            raise ConfigError(f"hyperparams.{key}: set by the training config itself (policy, seed, device ...)")
        if key not in params:
            allowed = ", ".join(sorted(params - set(RESERVED_HYPERPARAMS)))
            raise ConfigError(f"hyperparams.{key}: not an argument of {cls.__name__}; expected one of {allowed}")
    pk = hyperparams.get("policy_kwargs")
    if pk is not None and not isinstance(pk, dict):
        raise ConfigError(f"hyperparams.policy_kwargs: expected a mapping, got {pk!r}")
    act = (pk or {}).get("activation_fn")
    if act is not None and act not in ACTIVATIONS:
        allowed = sorted(ACTIVATIONS)
        raise ConfigError(f"hyperparams.policy_kwargs.activation_fn: expected one of {allowed}, got {act!r}")
    for key in ("learning_rate", "clip_range"):
        value = hyperparams.get(key)
        if isinstance(value, str) and not _is_linear(value):
            raise ConfigError(f"hyperparams.{key}: expected a float or lin_<float>, got {value!r}")


def _is_linear(value: str) -> bool:
    if not value.startswith("lin_"):
        return False
    try:
        float(value[4:])
    except ValueError:
        return False
    return True


def sb3_kwargs(hyperparams: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters as SB3 wants them: activation names -> torch classes, ``lin_<x>`` -> schedules."""
    import torch
    from stable_baselines3.common.utils import LinearSchedule

    out = dict(hyperparams)
    if "policy_kwargs" in out:
        pk = dict(out["policy_kwargs"])
        if "activation_fn" in pk:
            pk["activation_fn"] = getattr(torch.nn, ACTIVATIONS[pk["activation_fn"]])
        out["policy_kwargs"] = pk
    for key in ("learning_rate", "clip_range"):
        value = out.get(key)
        if isinstance(value, str):
            # SB3's own schedule class: saved models unpickle it anywhere SB3 is installed.
            out[key] = LinearSchedule(float(value[4:]), 0.0, 1.0)
    return out


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


def run_dir_of_checkpoint(checkpoint: Path) -> Path:
    """``<run>/checkpoints/model_N_steps.zip`` -> ``<run>``; a zip elsewhere -> its folder."""
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def checkpoint_files(checkpoint: Path) -> dict[str, Path]:
    """SB3 ``CheckpointCallback`` companions of a checkpoint zip: VecNormalize statistics and replay buffer."""
    m = CHECKPOINT_RE.match(checkpoint.name)
    if m is None:
        return {"vecnormalize": checkpoint.parent / "vecnormalize.pkl"}
    prefix, steps = m.group("prefix"), m.group("steps")
    return {
        "vecnormalize": checkpoint.parent / f"{prefix}_vecnormalize_{steps}_steps.pkl",
        "replay_buffer": checkpoint.parent / f"{prefix}_replay_buffer_{steps}_steps.pkl",
    }


def checkpoint_timesteps(checkpoint: Path) -> int:
    """``num_timesteps`` saved in an SB3 model zip (read without building the model)."""
    from stable_baselines3.common.save_util import load_from_zip_file

    try:
        data, _, _ = load_from_zip_file(str(checkpoint), device="cpu")
    except Exception as e:  # SB3 raises many kinds for a corrupt or foreign file
        raise ConfigError(f"resume: {checkpoint} is not an SB3 model zip ({type(e).__name__}: {e})") from e
    if not data or "num_timesteps" not in data:
        raise ConfigError(f"resume: {checkpoint} has no saved num_timesteps")
    return int(data["num_timesteps"])


def new_run_dir(cfg: TrainConfig) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    env = cfg.env_id.replace("/", "-")
    return Path(cfg.runs_dir) / f"{env}__{cfg.algo}__{cfg.seed}__{stamp}"


# ----------------------------------------------------------------------------------------------------------
# Building the pieces
# ----------------------------------------------------------------------------------------------------------


def make_vec_env(cfg: TrainConfig, seed: int, monitor_dir: Path | None, append_monitor: bool = False) -> Any:
    """The training VecEnv: ``n_envs`` monitored envs (subprocess or in-process), not yet normalised."""
    from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    from lbw_env.sb3_callbacks import make_env

    vec_cls = SubprocVecEnv if cfg.vec_env == "subproc" and cfg.n_envs > 1 else DummyVecEnv
    # forkserver workers start from a clean interpreter: make_env imports lbw_env there (which registers the ids).
    return sb3_make_vec_env(
        make_env,
        n_envs=cfg.n_envs,
        seed=seed,
        env_kwargs={"env_id": cfg.env_id, **cfg.env_kwargs()},
        monitor_dir=str(monitor_dir) if monitor_dir is not None else None,
        monitor_kwargs={"override_existing": not append_monitor},
        vec_env_cls=vec_cls,
    )


def make_eval_env(cfg: TrainConfig, monitor_dir: Path, append_monitor: bool = False) -> Any:
    """The evaluation VecEnv: one in-process env on the fixed held-out episodes, VecNormalize frozen.

    ``EvalCallback`` copies the training observation statistics into it before every evaluation; rewards are
    reported raw (``norm_reward=False``), so evaluation returns are in nats of loss.
    """
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from lbw_env.sb3_callbacks import make_env

    episodes = cfg.eval_episodes()
    kwargs = cfg.env_kwargs()
    kwargs["scenarios"] = list(dict.fromkeys(name for name, _ in episodes))
    monitor_dir.mkdir(parents=True, exist_ok=True)

    def factory() -> Any:
        env = make_env(cfg.env_id, episodes, **kwargs)
        return Monitor(env, str(monitor_dir / "eval"), override_existing=not append_monitor)

    venv = DummyVecEnv([factory])
    n = cfg.normalize
    return VecNormalize(
        venv, training=False, norm_obs=n.norm_obs, norm_reward=False, clip_obs=n.clip_obs, clip_reward=n.clip_reward
    )


def gamma_of(cfg: TrainConfig) -> float:
    """The discount that VecNormalize's return statistics must use: the algorithm's."""
    if "gamma" in cfg.hyperparams:
        return float(cfg.hyperparams["gamma"])
    return float(inspect.signature(algo_class(cfg.algo).__init__).parameters["gamma"].default)


def save_checkpoint(model: Any, folder: Path, prefix: str = "model") -> Path:
    """Save model (+ VecNormalize, + replay buffer) with SB3 ``CheckpointCallback``'s file names."""
    folder.mkdir(parents=True, exist_ok=True)
    steps = model.num_timesteps
    path = folder / f"{prefix}_{steps}_steps.zip"
    model.save(str(path))
    vn = model.get_vec_normalize_env()
    if vn is not None:
        vn.save(str(folder / f"{prefix}_vecnormalize_{steps}_steps.pkl"))
    if getattr(model, "replay_buffer", None) is not None:
        model.save_replay_buffer(str(folder / f"{prefix}_replay_buffer_{steps}_steps.pkl"))
    return path


def write_yaml(path: Path, data: Any, header: str = "") -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` produced."""

    run_dir: Path
    num_timesteps: int
    best_model: Path | None
    final_model: Path
    summary: dict[str, Any]


def train(cfg: TrainConfig) -> TrainResult:
    """Train (or resume) one governor as configured; everything lands in the run folder."""
    import torch
    from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback
    from stable_baselines3.common.utils import configure_logger
    from stable_baselines3.common.vec_env import VecNormalize

    from lbw_env.sb3_callbacks import (
        HeldOutEvalCallback,
        SaveVecNormalizeCallback,
        TelemetryCallback,
        WallClockLimit,
        plot_learning_curve,
    )

    torch.set_num_threads(cfg.threads)
    # Env processes start from a clean interpreter; their OpenMP pool is sized before the trainer sets threads.
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))
    cls = algo_class(cfg.algo)
    resume = Path(cfg.resume) if cfg.resume else None
    model: Any
    if resume is not None:
        if not resume.is_file():
            raise ConfigError(f"resume: checkpoint {resume} not found")
        run = Path(cfg.run_dir) if cfg.run_dir else run_dir_of_checkpoint(resume)
        start_steps = checkpoint_timesteps(resume)
    else:
        run = Path(cfg.run_dir) if cfg.run_dir else new_run_dir(cfg)
        if (run / "final" / "model.zip").exists() or any((run / "checkpoints").glob("*.zip")):
            raise ConfigError(f"run_dir: {run} already holds a run; resume=<checkpoint> or choose another folder")
        start_steps = 0
    run.mkdir(parents=True, exist_ok=True)
    write_yaml(run / "config.yaml", to_dict(cfg), "# Resolved TrainConfig of this run (train_policy.py).\n")
    episodes = cfg.eval_episodes()
    write_yaml(
        run / "env.yaml",
        {"train": to_dict(cfg.env_config()), "eval_episodes": [list(e) for e in episodes]},
        "# Resolved EnvConfig of training, and the fixed held-out evaluation episodes.\n",
    )

    # A resumed segment seeds its envs differently, so that it does not replay the first segment's episodes.
    venv = make_vec_env(cfg, cfg.seed + start_steps, run / "monitor", append_monitor=resume is not None)
    n = cfg.normalize
    if resume is not None:
        stats = checkpoint_files(resume)["vecnormalize"]
        if stats.is_file():
            venv = VecNormalize.load(str(stats), venv)
            venv.training = True
        elif n.norm_obs or n.norm_reward:
            venv.close()
            raise ConfigError(f"resume: {stats} not found beside the checkpoint (needed for normalize)")
    else:
        venv = VecNormalize(
            venv,
            norm_obs=n.norm_obs,
            norm_reward=n.norm_reward,
            clip_obs=n.clip_obs,
            clip_reward=n.clip_reward,
            gamma=gamma_of(cfg),
        )
    eval_env: Any = None
    tb = str(run / "tb") if _installed("tensorboard") else None
    if tb is None:
        print("train_policy.py: tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
    progress_bar = cfg.progress_bar and _installed("tqdm") and _installed("rich")
    if cfg.progress_bar and not progress_bar:
        print("train_policy.py: the progress bar needs tqdm and rich (pip install tqdm rich); training without it")
    try:
        eval_env = make_eval_env(cfg, run / "monitor", append_monitor=resume is not None)
        if resume is None:
            try:
                model = cls(
                    cfg.policy_name(),
                    venv,
                    seed=cfg.seed,
                    device=cfg.device,
                    tensorboard_log=tb,
                    verbose=cfg.verbose,
                    **sb3_kwargs(cfg.hyperparams),
                )
            except (TypeError, ValueError, AssertionError) as e:
                raise ConfigError(f"hyperparams: {cls.__name__} rejected them: {type(e).__name__}: {e}") from e
        else:
            # Hyperparameters come from the checkpoint (SB3 restores them); the env, logging and seed are new.
            model = cls.load(str(resume), env=venv, device=cfg.device, tensorboard_log=tb, verbose=cfg.verbose)
            model.set_random_seed(cfg.seed + start_steps)
            buffer = checkpoint_files(resume).get("replay_buffer")
            if cfg.algo in OFF_POLICY and buffer is not None and buffer.is_file():
                model.load_replay_buffer(str(buffer))

        per_env = lambda steps: max(steps // cfg.n_envs, 1)  # noqa: E731  (SB3 counts callback calls)
        eval_cb = HeldOutEvalCallback(
            eval_env,
            callback_on_new_best=SaveVecNormalizeCallback(run / "vecnormalize.pkl"),
            n_eval_episodes=len(episodes),
            eval_freq=per_env(cfg.eval.eval_freq) if cfg.eval.eval_freq else 0,
            log_path=str(run),
            best_model_save_path=str(run),
            deterministic=cfg.eval.deterministic,
            verbose=cfg.verbose,
        )
        if resume is not None:
            eval_cb.load_history(run / "evaluations.npz", limit=start_steps)
        callbacks: list[Any] = [TelemetryCallback(), eval_cb]
        if cfg.checkpoint_freq:
            callbacks.append(
                CheckpointCallback(
                    per_env(cfg.checkpoint_freq),
                    str(run / "checkpoints"),
                    name_prefix="model",
                    save_replay_buffer=cfg.save_replay_buffer and cfg.algo in OFF_POLICY,
                    save_vecnormalize=True,
                )
            )
        clock = WallClockLimit(cfg.max_minutes, verbose=cfg.verbose) if cfg.max_minutes else None
        if clock is not None:
            callbacks.append(clock)
        remaining = cfg.total_timesteps - start_steps
        t0 = time.perf_counter()
        if remaining > 0:
            try:
                # reset_num_timesteps=False on resume: the step count, LR schedules and the TensorBoard run
                # (tb/<ALGO>_1) continue where the checkpoint left off.
                model.learn(
                    total_timesteps=remaining,
                    callback=CallbackList(callbacks),
                    log_interval=cfg.log_interval,
                    tb_log_name=cls.__name__,
                    reset_num_timesteps=resume is None,
                    progress_bar=progress_bar,
                )
            except KeyboardInterrupt:
                path = save_checkpoint(model, run / "checkpoints")
                print(f"\nInterrupted at {model.num_timesteps} timesteps; resume with: resume={path}", file=sys.stderr)
                raise
        else:
            if cfg.verbose:
                print(f"{run}: already at {start_steps} >= total_timesteps={cfg.total_timesteps}; evaluating only")
            model.set_logger(configure_logger(cfg.verbose, tb, cls.__name__, reset_num_timesteps=False))
            eval_cb.init_callback(model)
        seconds = time.perf_counter() - t0
        # The final model competes for best_model.zip too (and a run shorter than eval_freq gets one evaluation).
        eval_cb.evaluate_now()

        final = run / "final"
        final.mkdir(exist_ok=True)
        model.save(str(final / "model.zip"))
        venv.save(str(final / "vecnormalize.pkl"))
        curve = plot_learning_curve(run)
        steps_done = int(model.num_timesteps) - start_steps
        best = run / "best_model.zip"
        summary = {
            "run_dir": str(run),
            "algo": cfg.algo,
            "env_id": cfg.env_id,
            "num_timesteps": int(model.num_timesteps),
            "resumed_from": cfg.resume or None,
            "segment_timesteps": steps_done,
            "segment_seconds": round(seconds, 2),
            "decisions_per_second": round(steps_done / seconds, 3) if seconds > 0 and steps_done > 0 else None,
            "stopped_by_wall_clock": bool(clock is not None and clock.stopped),
            "best_eval_mean_reward": _finite_or_none(eval_cb.best_mean_reward),
            "last_eval_mean_reward": _finite_or_none(eval_cb.last_mean_reward),
            "eval_episodes": [list(e) for e in episodes],
            "best_model": str(best) if best.is_file() else None,
            "final_model": str(final / "model.zip"),
            "learning_curve": str(curve) if curve else None,
        }
        (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        best_path = best if best.is_file() else None
        return TrainResult(run, int(model.num_timesteps), best_path, final / "model.zip", summary)
    finally:
        # After Ctrl-C the env workers are gone too; closing their pipes then fails, which is fine here.
        with contextlib.suppress(OSError, EOFError):
            venv.close()
        if eval_env is not None:
            eval_env.close()


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


# ----------------------------------------------------------------------------------------------------------
# Measuring env throughput (no learning)
# ----------------------------------------------------------------------------------------------------------


def measure(cfg: TrainConfig, seconds: float) -> dict[str, Any]:
    """Step the training VecEnv with random actions for ``seconds``; report decisions/s and where time goes."""
    import numpy as np
    import torch

    torch.set_num_threads(cfg.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))
    t_start = time.perf_counter()
    venv = make_vec_env(cfg, cfg.seed, None)
    pids = [os.getpid()] + [p.pid for p in getattr(venv, "processes", [])]
    try:
        venv.reset()
        startup = time.perf_counter() - t_start
        cpu0 = _cpu_seconds(pids)
        rng = np.random.default_rng(cfg.seed)
        space = venv.action_space
        decisions = episodes = opt_steps = 0
        plant_seconds = 0.0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            if hasattr(space, "nvec"):
                actions = np.stack([rng.integers(space.nvec) for _ in range(venv.num_envs)])
            else:
                actions = rng.uniform(-1, 1, (venv.num_envs, *space.shape)).astype(np.float32)
            _, _, dones, infos = venv.step(actions)
            decisions += venv.num_envs
            episodes += int(np.sum(dones))
            for info in infos:
                opt_steps += len(info["records"])
                plant_seconds += sum(r.seconds for r in info["records"])
        elapsed = time.perf_counter() - t0
        cpu = _cpu_seconds(pids) - cpu0
    finally:
        venv.close()
    return {
        "n_envs": cfg.n_envs,
        "vec_env": cfg.vec_env if cfg.n_envs > 1 else "dummy",
        "threads": cfg.threads,
        "startup_seconds": round(startup, 2),
        "seconds": round(elapsed, 2),
        "decisions": decisions,
        "episodes": episodes,
        "decisions_per_second": round(decisions / elapsed, 2),
        "optimizer_steps_per_second": round(opt_steps / elapsed, 1),
        "ms_per_optimizer_step_in_env": round(1000 * plant_seconds / max(opt_steps, 1), 2),
        "plant_fraction": round(plant_seconds / (elapsed * cfg.n_envs), 3),
        # CPU time of this process and the env processes: less sensitive than wall time to other jobs on
        # shared cores. decisions per CPU-second x usable cores ~ decisions/s on an otherwise idle machine.
        "cpu_seconds": round(cpu, 2) if cpu >= 0 else None,
        "decisions_per_cpu_second": round(decisions / cpu, 2) if cpu > 0 else None,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of processes (from /proc; -inf where that is not available)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return -math.inf
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14 and 15 of stat)
    return total


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def config_help() -> str:
    rows = describe(TrainConfig)
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"  {key:<{width}}  {tp} = {default}\n  {'':<{width}}  {doc}" for key, tp, default, doc in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Train a learned governor (SB3) on an lbw-env id.",
        epilog="Overrides: key=value with dotted keys, e.g. n_envs=1 hyperparams.n_steps=64 eval.seeds=1 "
        "'env.trainer_overrides=[optim.steps=96]'. --help-config lists every key.",
    )
    parser.add_argument("--config", help="YAML TrainConfig (configs/train/<algo>.yaml)")
    parser.add_argument("--help-config", action="store_true", help="list every config key with type, default, doc")
    parser.add_argument("--measure", type=float, metavar="SECONDS", help="only measure env decisions/s, no training")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    if args.help_config:
        print(config_help())
        return 0
    try:
        cfg = load_config(args.config, args.overrides)
        if args.measure is not None:
            print(json.dumps(measure(cfg, args.measure), indent=2))
            return 0
        result = train(cfg)
    except ConfigError as e:
        print(f"train_policy.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(json.dumps(result.summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
