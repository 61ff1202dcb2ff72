"""``train(cfg)``: one training run (or the next segment of a resumed one) of a learned governor, top to bottom.

Where things go is :mod:`.artifacts`; the envs are :mod:`.vec_env`; metrics, evaluation and the clock are
:mod:`.callbacks`. What this module adds is the order: resolve the run folder and the start step, record the
resolved config, build envs and model, learn under the callbacks, evaluate the final model, save, plot, summarise.

Each env process gets exactly ``threads`` torch threads (two processes x two threads on two cores thrash), and
evaluation runs fixed held-out episodes rather than many random ones, because every env step is a governor
decision over ``decision_interval`` real AdamW steps: the plant, not the policy update, is the cost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.utils import configure_logger
from stable_baselines3.common.vec_env import VecNormalize

from lbw_env.config import ConfigError, to_dict
from lbw_env.control.compat import GovernanceSettings
from lbw_env.control.protocol import GovernorFactory

from .algos import OFF_POLICY, algo_class, sb3_kwargs
from .artifacts import (
    CHECKPOINT_PREFIX,
    RunFolder,
    checkpoint_timesteps,
    new_run_dir,
    replay_buffer_path,
    run_dir_of_checkpoint,
    save_checkpoint,
    save_vecnormalize,
)
from .callbacks import HeldOutEvalCallback, SaveVecNormalizeCallback, TelemetryCallback, WallClockLimit
from .config import TrainConfig, check_data
from .counterfactual import run_counterfactual
from .distribution import write_family
from .objective import relative_base
from .plots import plot_learning_curve
from .policy_file import save_policy_file
from .residual import make_rules, start_at_base
from .vec_env import make_eval_env, make_training_env
from .warmstart import run_warm_start, teacher_of


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` produced."""

    run_dir: Path
    num_timesteps: int
    best_model: Path | None
    final_model: Path
    summary: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Segment:
    """Where this invocation starts: the run folder, and the checkpoint and step it continues from."""

    run: RunFolder
    resume: Path | None
    start_steps: int

    @property
    def resumed(self) -> bool:
        return self.resume is not None


def train(cfg: TrainConfig, make_governor: GovernorFactory | None = None) -> TrainResult:
    """Train (or resume) one governor as configured; everything lands in the run folder.

    ``make_governor`` (``policies.make_governor``; the learning layer does not import ``policies``) builds the
    base of a residual governor (``cfg.residual.base``), in this process and in every env worker."""
    started = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    # Env processes start from a clean interpreter; their OpenMP pool is sized before the trainer sets threads.
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))
    cls = algo_class(cfg.algo)
    segment = start_segment(cfg)
    run = segment.run
    check_data(cfg)  # every scenario's data, before the run folder exists: a bad file is one line, no folder
    if cfg.residual.enabled:  # the base builds and can be corrected, also before the run folder exists
        make_rules(cfg.residual, cfg.env_config().envelope, make_governor)
    if cfg.warm_start.episodes:  # ... and so does the teacher
        teacher_of(cfg, make_governor)
    if cfg.objective.relative_to:  # ... and the rule the return is measured against
        relative_base(cfg.objective, cfg.env_config().envelope, make_governor)
    created = not run.root.exists()
    run.root.mkdir(parents=True, exist_ok=True)
    try:
        cfg = with_distribution(cfg, run)
        episodes = cfg.eval_episodes()
        run.write_config(to_dict(cfg), to_dict(cfg.env_config()), episodes)
        # A resumed segment seeds its envs differently, so that it does not replay the first segment's episodes.
        seed = cfg.seed + segment.start_steps
        venv = make_training_env(cfg, seed, run.monitor, segment.resume, make_governor=make_governor)
    except BaseException:
        _remove_failed_start(run.root, created)
        raise
    learning = False  # until model.learn starts, a failure removes the run folder this call created
    eval_env: VecNormalize | None = None
    tb = _tensorboard_dir(run)
    progress_bar = _progress_bar(cfg)
    try:
        eval_env = make_eval_env(cfg, run.monitor, append_monitor=segment.resumed, make_governor=make_governor)
        model = build_model(cls, cfg, venv, tb, segment)
        warm = None
        if cfg.warm_start.episodes and not segment.resumed:  # a resumed run continues from its checkpoint
            warm = run_warm_start(model, venv, cfg, make_governor)
            save_governor(model, run.bc_governor, cfg)  # the starting point of RL, for comparison
        eval_cb = _eval_callback(cfg, eval_env, len(episodes), segment)
        if cfg.warm_start.counterfactual and not segment.resumed:
            fitted = _counterfactual(model, venv, cfg, make_governor, run, eval_cb)
            warm = {**(warm or {}), "counterfactual": fitted}
            save_governor(model, run.bc_governor, cfg)  # the fitted switch: RL's starting point
        clock = WallClockLimit(cfg.max_minutes, verbose=cfg.verbose) if cfg.max_minutes else None
        callbacks = [TelemetryCallback(), eval_cb, *_checkpoint_callbacks(cfg, run), *([clock] if clock else [])]
        learning = True
        seconds = _learn(model, cfg, callbacks, segment, tb, progress_bar, eval_cb)
        # The final model competes for best_model.zip too (and a run shorter than eval_freq gets one evaluation).
        eval_cb.evaluate_now()
        _save_final(model, venv, run, cfg)
        curve = plot_learning_curve(run.root)
        summary = _summary(cfg, model, segment, seconds, eval_cb, clock, episodes, curve)
        summary["warm_start"] = warm
        summary["wall_seconds"] = round(time.perf_counter() - started, 1)  # everything above, evaluations included
        run.write_summary(summary)
        best = run.best_model if run.best_model.is_file() else None
        return TrainResult(run.root, int(model.num_timesteps), best, run.final_model, summary)
    finally:
        # After Ctrl-C the env workers are gone too; closing their pipes then fails, which is fine here.
        with contextlib.suppress(OSError, EOFError):
            venv.close()
        if eval_env is not None:
            eval_env.close()
        if not learning:
            _remove_failed_start(run.root, created)


def with_distribution(cfg: TrainConfig, run: RunFolder) -> TrainConfig:
    """``cfg`` with its sampled training scenarios (written into the run folder) as the env's pool."""
    if not cfg.distribution.enabled:
        return cfg
    path = write_family(cfg.distribution, (run.root / "train_distribution.yaml").resolve())
    return dataclasses.replace(cfg, env={**cfg.env, "scenarios": [f"{path}:train"]})


def _remove_failed_start(root: Path, created: bool) -> None:
    """A start that failed before learning leaves no run folder behind (only the one this call created: a
    resumed run's folder, or a ``run_dir`` that existed, holds more than this start wrote)."""
    if created:
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# The steps of train()
# ----------------------------------------------------------------------------------------------------------


def start_segment(cfg: TrainConfig) -> Segment:
    """The run folder and start step: a checkpoint's own run (``resume``), or a new folder that holds no run."""
    if cfg.resume:
        resume = Path(cfg.resume)
        if not resume.is_file():
            raise ConfigError(f"resume: checkpoint {resume} not found")
        root = Path(cfg.run_dir) if cfg.run_dir else run_dir_of_checkpoint(resume)
        return Segment(RunFolder(root), resume, checkpoint_timesteps(resume))
    root = Path(cfg.run_dir) if cfg.run_dir else new_run_dir(cfg.runs_dir, cfg.env_id, cfg.algo, cfg.seed)
    run = RunFolder(root)
    if run.holds_run():
        raise ConfigError(f"run_dir: {root} already holds a run; resume=<checkpoint> or choose another folder")
    return Segment(run, None, 0)


def build_model(cls: type[BaseAlgorithm], cfg: TrainConfig, venv: Any, tb: str | None, seg: Segment) -> Any:
    """A new model from the hyperparameters, or the checkpoint's model (with its replay buffer) on resume."""
    if seg.resume is None:
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
        if cfg.residual.enabled:
            start_at_base(model.policy, cfg.residual)  # the deterministic answer is the base's: training starts there
        return model
    # Hyperparameters come from the checkpoint (SB3 restores them); the env, logging and seed are new.
    model = cls.load(str(seg.resume), env=venv, device=cfg.device, tensorboard_log=tb, verbose=cfg.verbose)
    model.set_random_seed(cfg.seed + seg.start_steps)
    buffer = replay_buffer_path(seg.resume)
    if isinstance(model, OffPolicyAlgorithm) and buffer is not None and buffer.is_file():  # the OFF_POLICY algos
        model.load_replay_buffer(str(buffer))
    return model


def _counterfactual(
    model: Any, venv: Any, cfg: TrainConfig, make_governor: GovernorFactory | None, run: RunFolder, eval_cb: Any
) -> dict[str, Any]:
    """Score the start (the base) on the held-out episodes, fit the switch to the training contexts' reward table
    (:mod:`.counterfactual`), and score the fitted switch as the next candidate at the same step."""
    model.set_logger(configure_logger(cfg.verbose, None, type(model).__name__, reset_num_timesteps=True))
    eval_cb.init_callback(model)
    if cfg.eval.at_start:
        eval_cb.evaluate_now()
    t0 = time.perf_counter()
    summary = run_counterfactual(model, venv, cfg, make_governor, run.root / "counterfactual.npz")
    summary["seconds"] = round(time.perf_counter() - t0, 1)  # labelling and fits, not the evaluations
    eval_cb.evaluate_now(again=True)  # a new candidate at the same step
    return summary


def _per_env(cfg: TrainConfig, timesteps: int) -> int:
    """Callback frequencies in calls: SB3 calls callbacks once per vectorised step, i.e. per ``n_envs`` timesteps."""
    return max(timesteps // cfg.n_envs, 1)


def _eval_callback(cfg: TrainConfig, eval_env: VecNormalize, n_episodes: int, seg: Segment) -> HeldOutEvalCallback:
    """Held-out evaluation that saves ``best_model.zip`` with its statistics (history continued on resume)."""
    run = seg.run
    # best_model.zip is SB3's (EvalCallback writes it); its statistics and governor file follow it.
    on_new_best = CallbackList([SaveVecNormalizeCallback(run.best_vecnormalize), SaveGovernorCallback(run, cfg)])
    eval_cb = HeldOutEvalCallback(
        eval_env,
        callback_on_new_best=on_new_best,
        n_eval_episodes=n_episodes,
        eval_freq=_per_env(cfg, cfg.eval.eval_freq) if cfg.eval.eval_freq else 0,
        log_path=str(run.root),  # SB3 writes <log_path>/evaluations.npz
        best_model_save_path=str(run.root),  # ... and <path>/best_model.zip
        deterministic=cfg.eval.deterministic,
        verbose=cfg.verbose,
        at_start=cfg.eval.at_start,
        select=cfg.eval.select,
    )
    if seg.resumed:
        eval_cb.load_history(run.evaluations, limit=seg.start_steps)
    return eval_cb


def _checkpoint_callbacks(cfg: TrainConfig, run: RunFolder) -> list[BaseCallback]:
    if not cfg.checkpoint_freq:
        return []
    checkpoints = AtomicCheckpointCallback(
        _per_env(cfg, cfg.checkpoint_freq),
        str(run.checkpoints),
        name_prefix=CHECKPOINT_PREFIX,
        save_replay_buffer=cfg.save_replay_buffer and cfg.algo in OFF_POLICY,
        save_vecnormalize=True,
    )
    return [checkpoints]


class AtomicCheckpointCallback(CheckpointCallback):
    """SB3's ``CheckpointCallback`` (same frequency, same file names) saving through :func:`save_checkpoint`:
    SB3 writes the model, then its statistics, each in place, so a crash in between (or mid-file) left a newest
    checkpoint whose ``vecnormalize.pkl`` was missing or truncated, and resuming from it failed."""

    def _on_step(self) -> bool:
        if self.n_calls % self.save_freq == 0:
            path = save_checkpoint(self.model, Path(self.save_path), self.name_prefix, self.save_replay_buffer)
            if self.verbose >= 2:
                print(f"Saving model checkpoint to {path}")
        return True


def _learn(
    model: Any,
    cfg: TrainConfig,
    callbacks: list[BaseCallback],
    seg: Segment,
    tb: str | None,
    progress_bar: bool,
    eval_cb: HeldOutEvalCallback,
) -> float:
    """``model.learn`` for the rest of ``total_timesteps``; the seconds it took. Ctrl-C saves a checkpoint."""
    name = type(model).__name__
    remaining = cfg.total_timesteps - seg.start_steps
    t0 = time.perf_counter()
    if remaining <= 0:
        if cfg.verbose:
            done = f"already at {seg.start_steps} >= total_timesteps={cfg.total_timesteps}"
            print(f"{seg.run.root}: {done}; evaluating only")
        model.set_logger(configure_logger(cfg.verbose, tb, name, reset_num_timesteps=False))
        eval_cb.init_callback(model)
        return time.perf_counter() - t0
    try:
        # reset_num_timesteps=False on resume: the step count, LR schedules and the TensorBoard run
        # (tb/<ALGO>_1) continue where the checkpoint left off.
        model.learn(
            total_timesteps=remaining,
            callback=CallbackList(callbacks),
            log_interval=cfg.log_interval,
            tb_log_name=name,
            reset_num_timesteps=not seg.resumed,
            progress_bar=progress_bar,
        )
    except KeyboardInterrupt:
        path = save_checkpoint(model, seg.run.checkpoints)
        print(f"\nInterrupted at {model.num_timesteps} timesteps; resume with: resume={path}", file=sys.stderr)
        raise
    return time.perf_counter() - t0


def _summary(
    cfg: TrainConfig,
    model: Any,
    seg: Segment,
    seconds: float,
    eval_cb: HeldOutEvalCallback,
    clock: WallClockLimit | None,
    episodes: list[tuple[str, int]],
    curve: Path | None,
) -> dict[str, Any]:
    """``summary.json``: where the models are, how far training got, how fast, and the evaluation rewards."""
    run = seg.run
    steps_done = int(model.num_timesteps) - seg.start_steps
    return {
        "run_dir": str(run.root),
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
        "best_model": str(run.best_model) if run.best_model.is_file() else None,
        "final_model": str(run.final_model),
        # Governor files: what to evaluate and share (evaluate.py --governors <algo>:<path>; no pickle).
        "best_governor": str(run.best_governor) if run.best_governor.is_dir() else None,
        "final_governor": str(run.final_governor),
        "learning_curve": str(curve) if curve else None,
    }


def _save_final(model: Any, venv: VecNormalize, run: RunFolder, cfg: TrainConfig) -> None:
    run.final_model.parent.mkdir(exist_ok=True)
    model.save(str(run.final_model))
    save_vecnormalize(venv, run.final_vecnormalize)
    save_governor(model, run.final_governor, cfg)


def save_governor(model: Any, path: Path, cfg: TrainConfig) -> Path:
    """The governor file of ``model`` (:mod:`.policy_file`): what to share and evaluate, since loading it runs
    no code, and it carries the env settings of training so that it is deployed with them."""
    info = {"env_id": cfg.env_id, "num_timesteps": int(model.num_timesteps), "seed": cfg.seed}
    settings = GovernanceSettings.of(cfg.env_config())
    residual = cfg.residual if cfg.residual.enabled else None
    vecnormalize = model.get_vec_normalize_env()
    return save_policy_file(
        model, path, settings, algorithm=cfg.algo, vecnormalize=vecnormalize, info=info, residual=residual
    )


class SaveGovernorCallback(BaseCallback):
    """Write the governor file of a new best model beside ``best_model.zip`` (as ``callback_on_new_best``)."""

    def __init__(self, run: RunFolder, cfg: TrainConfig) -> None:
        super().__init__()
        self.path = run.best_governor
        self.cfg = cfg

    def _on_step(self) -> bool:
        save_governor(self.model, self.path, self.cfg)
        return True


# ----------------------------------------------------------------------------------------------------------
# Optional extras
# ----------------------------------------------------------------------------------------------------------


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _tensorboard_dir(run: RunFolder) -> str | None:
    if _installed("tensorboard"):
        return str(run.tensorboard)
    print("train_policy.py: tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
    return None


def _progress_bar(cfg: TrainConfig) -> bool:
    shown = cfg.progress_bar and _installed("tqdm") and _installed("rich")
    if cfg.progress_bar and not shown:
        print("train_policy.py: the progress bar needs tqdm and rich (pip install tqdm rich); training without it")
    return shown


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
