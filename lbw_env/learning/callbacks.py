"""Stable-Baselines3 callbacks of a training run: metrics, held-out evaluation, statistics beside the best model,
and a wall-clock budget.

* :class:`TelemetryCallback` — TensorBoard metrics grouped as in CleanRL: ``telemetry/`` (what the plant did),
  ``governor/`` (what the policy asked for and what the envelope corrected), ``reward/`` (every term of
  ``info["reward_terms"]`` summed per episode). SB3's own metrics stay under ``train/``, ``rollout/``, ``time/``.
* :class:`HeldOutEvalCallback` — SB3's ``EvalCallback`` on held-out scenarios with fixed episodes, the
  validation perplexity of each evaluation episode, an on-demand final evaluation, resumable history, and
  optionally a paired rule for replacing the best model (:func:`replaces_best`).
* :class:`SaveVecNormalizeCallback` — saves the VecNormalize statistics (as ``callback_on_new_best``, so that
  ``best_model.zip`` always lies beside the statistics it was evaluated with).
* :class:`WallClockLimit` — stops training after a wall-clock budget (the run still evaluates and saves).

Callbacks follow SB3's style: the public ``on_step()`` of :class:`~stable_baselines3.common.callbacks.BaseCallback`
wraps the protected ``_on_step()`` that each class implements.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.vec_env import VecEnv

from .artifacts import save_vecnormalize
from .config import SELECT_RULES

# ----------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------


def _finite(xs: Sequence[float]) -> list[float]:
    return [float(x) for x in xs if math.isfinite(x)]


class TelemetryCallback(BaseCallback):
    """Log what the plant, the governor and the reward did, from ``info`` of every env step.

    Per decision (averaged by SB3's logger until its next dump): ``telemetry/loss`` (mean finite training
    loss of the interval's steps), ``telemetry/lr_scale``, ``telemetry/skip_rate``, ``telemetry/nonfinite_rate``,
    ``governor/action_<i>`` (the action sent to the env), ``governor/gate_on`` (fraction of decisions with a
    finite skip gate) and ``governor/rollback_rate``. Per finished episode: ``reward/<term>`` for each term of
    ``info["reward_terms"]`` summed over the episode and ``reward/return``, ``telemetry/final_valid_loss``,
    ``telemetry/final_valid_ppl``, ``telemetry/diverged``, ``governor/rollbacks`` and
    ``governor/interventions/<kind>`` (the envelope's corrections in that episode).
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self._terms: list[dict[str, float]] = []

    def _init_callback(self) -> None:
        self._terms = [{} for _ in range(self.training_env.num_envs)]

    def _on_step(self) -> bool:
        infos: Sequence[Mapping[str, Any]] = self.locals.get("infos") or ()
        dones = np.asarray(self.locals.get("dones", np.zeros(len(infos), dtype=bool))).reshape(-1)
        actions = self.locals.get("clipped_actions", self.locals.get("actions"))
        if actions is not None and len(infos):
            a = np.asarray(actions, dtype=np.float64).reshape(len(infos), -1)
            for i in range(a.shape[1]):
                self.logger.record_mean(f"governor/action_{i}", float(a[:, i].mean()))
        for k, info in enumerate(infos):
            self._decision(info)
            acc = self._terms[k] if k < len(self._terms) else {}
            for name, value in (info.get("reward_terms") or {}).items():
                acc[name] = acc.get(name, 0.0) + float(value)
            if k < len(dones) and dones[k]:
                self._episode_end(info, acc)
                acc.clear()
        return True

    def _decision(self, info: Mapping[str, Any]) -> None:
        """What one env's last decision interval did: the plant's steps and the governor's control."""
        log = self.logger
        records = info.get("records")
        if records:
            losses = _finite([r.loss for r in records])
            if losses:
                log.record_mean("telemetry/loss", float(np.mean(losses)))
            log.record_mean("telemetry/lr_scale", float(np.mean([r.lr_scale for r in records])))
            log.record_mean("telemetry/skip_rate", sum(bool(r.skipped) for r in records) / len(records))
            log.record_mean("telemetry/nonfinite_rate", sum(bool(r.nonfinite) for r in records) / len(records))
        control = info.get("control")
        if control is not None:
            log.record_mean("governor/gate_on", float(math.isfinite(control["skip_gate"])))
        if "rollback" in info:
            log.record_mean("governor/rollback_rate", float(bool(info["rollback"])))

    def _episode_end(self, info: Mapping[str, Any], terms: Mapping[str, float]) -> None:
        log = self.logger
        for name, total in terms.items():
            log.record_mean(f"reward/{name}", total)
        if terms:
            log.record_mean("reward/return", float(sum(terms.values())))
        final = info.get("final")
        if final:
            if math.isfinite(final["valid_loss"]):
                log.record_mean("telemetry/final_valid_loss", float(final["valid_loss"]))
            if math.isfinite(final["valid_ppl"]):
                log.record_mean("telemetry/final_valid_ppl", float(final["valid_ppl"]))
            log.record_mean("telemetry/diverged", float(bool(final["diverged"])))
            log.record_mean("governor/rollbacks", float(final["rollbacks"]))
        for kind, count in (info.get("interventions") or {}).items():
            log.record_mean(f"governor/interventions/{kind}", float(count))


# ----------------------------------------------------------------------------------------------------------
# Evaluation on held-out scenarios
# ----------------------------------------------------------------------------------------------------------


class SaveVecNormalizeCallback(BaseCallback):
    """Save the training env's VecNormalize statistics to ``path`` (meant as ``callback_on_new_best``)."""

    def __init__(self, path: str | os.PathLike[str], verbose: int = 0) -> None:
        super().__init__(verbose)
        self.path = Path(path)

    def _on_step(self) -> bool:
        vn = self.model.get_vec_normalize_env() if self.model is not None else None
        if vn is not None:
            save_vecnormalize(vn, self.path)  # never a half-written file beside best_model.zip
            if self.verbose >= 1:
                print(f"Saved VecNormalize statistics to {self.path}")
        return True


def replaces_best(candidate: Sequence[float], best: Sequence[float] | None, rule: str, level: float = 0.95) -> bool:
    """Whether an evaluation's per-episode rewards make it the new best model.

    ``mean`` (SB3's rule): a higher mean reward. ``paired``: the paired t-interval (``level``, two-sided) of the
    per-episode differences candidate - best lies above 0. The episodes are the same at every evaluation (fixed
    scenarios and seeds), so the differences are pairs. Why: on the tiny family two governors that act almost alike
    scatter several percent per episode on from-scratch runs with faults, so a higher mean over ~14 episodes is
    mostly chance, and a ``best_model`` chosen by it is the luckiest checkpoint, not the best one; the paired rule
    keeps the current best (with ``at_start``: the starting policy) unless the evidence says otherwise. No best
    yet: any finite evaluation becomes it.
    """
    c = np.asarray(candidate, dtype=float)
    if best is None:
        return bool(np.isfinite(c).all())
    b = np.asarray(best, dtype=float)
    if rule == "mean":
        return bool(np.mean(c) > np.mean(b))
    d = c - b
    if len(d) < 2 or not np.isfinite(d).all() or not np.any(d != d[0]):
        return bool(len(d) and np.isfinite(d).all() and np.all(d > 0))  # no spread: every pair must be better
    lo, _ = stats.t.interval(level, len(d) - 1, loc=float(np.mean(d)), scale=float(stats.sem(d)))
    return bool(lo > 0)


class HeldOutEvalCallback(EvalCallback):
    """SB3's ``EvalCallback`` on a :class:`~lbw_env.learning.vec_env.FixedEpisodes` eval env (held-out
    scenarios x fixed seeds).

    Before every evaluation the episode list is rewound, so that all evaluations run the same episodes and
    ``best_model.zip`` is chosen by a paired comparison. Each evaluation also logs ``eval/final_valid_ppl``
    (mean over the episodes that stayed finite) and ``eval/diverged``. :meth:`evaluate_now` runs an evaluation
    outside the schedule (at the end of training, and with ``at_start`` before the first update);
    :meth:`load_history` continues ``evaluations.npz`` and the best reward of an earlier run segment after a
    resume. ``select="paired"`` replaces SB3's rule for a new best (a higher mean) by :func:`replaces_best`'s
    paired one; the saving and the ``callback_on_new_best`` stay SB3's.
    """

    def __init__(self, eval_env: VecEnv, at_start: bool = False, select: str = "mean", **kwargs: Any) -> None:
        super().__init__(eval_env, **kwargs)
        if select not in SELECT_RULES:
            raise ValueError(f"select: expected one of {SELECT_RULES}, got {select!r}")
        if self.log_path is None:  # SB3 keeps the per-episode rewards (evaluations_results) only with a log path
            raise ValueError("HeldOutEvalCallback needs log_path (its best-model rule reads the evaluations)")
        self.at_start = at_start
        """Evaluate the starting policy when training starts at step 0 (not on a resume)."""
        self.select = select
        """The rule for a new best model (:func:`replaces_best`)."""
        self.best_results: list[float] | None = None
        """Per-episode rewards of the current best model's evaluation (None: no best yet)."""
        self.last_eval_timesteps = -1
        """``num_timesteps`` of the last evaluation (-1: none yet in this process)."""

    def _on_training_start(self) -> None:
        super()._on_training_start()
        if self.at_start and self.model.num_timesteps == 0:
            self.evaluate_now()

    def _rewind(self) -> None:
        self.eval_env.env_method("rewind")

    def _on_step(self) -> bool:
        if self.eval_freq > 0 and self.n_calls % self.eval_freq == 0:
            self._rewind()
            self.last_eval_timesteps = self.num_timesteps
        evaluated = len(self.evaluations_results)
        best = self.best_mean_reward
        self.best_mean_reward = math.inf  # SB3 saves a new best only above this: never; the rule below decides
        try:
            continue_training = super()._on_step()
        finally:
            self.best_mean_reward = best
        if len(self.evaluations_results) > evaluated:  # an evaluation ran (its rewards are the last row)
            results = [float(x) for x in self.evaluations_results[-1]]
            if replaces_best(results, self.best_results, self.select):
                continue_training = self._new_best(results) and continue_training
        return continue_training

    def _new_best(self, results: list[float]) -> bool:
        """What SB3's ``EvalCallback`` does on a new best: save ``best_model``, then ``callback_on_new_best``."""
        if self.verbose >= 1:
            print("New best mean reward!")
        if self.best_model_save_path is not None:
            self.model.save(os.path.join(self.best_model_save_path, "best_model"))
        self.best_mean_reward, self.best_results = float(np.mean(results)), results
        return self.callback_on_new_best.on_step() if self.callback_on_new_best is not None else True

    def _log_success_callback(self, locals_: dict[str, Any], globals_: dict[str, Any]) -> None:
        super()._log_success_callback(locals_, globals_)
        final = locals_["info"].get("final") if locals_["done"] else None
        if final:
            if math.isfinite(final["valid_ppl"]):
                self.logger.record_mean("eval/final_valid_ppl", float(final["valid_ppl"]))
            self.logger.record_mean("eval/diverged", float(bool(final["diverged"])))

    def evaluate_now(self, again: bool = False) -> bool:
        """Evaluate the current model now, unless the last evaluation was at this very step (``again``: even then,
        for a model changed without a training step, such as one fitted before RL)."""
        if self.last_eval_timesteps == self.num_timesteps and not again:
            return True
        freq = self.eval_freq
        self.eval_freq = 1  # the parent evaluates when n_calls % eval_freq == 0; 1 means "now"
        try:
            return self._on_step()
        finally:
            self.eval_freq = freq

    def load_history(self, path: str | os.PathLike[str], limit: int) -> int:
        """Continue an earlier ``evaluations.npz``: its rows come first, its best (by the same rule) must be beaten.

        Rows after ``limit`` (the checkpoint's step: evaluations of a killed segment after its last checkpoint)
        are dropped from the curve, since training continues from the checkpoint; their rewards still count for
        the best, because the ``best_model.zip`` they saved is still on disk. Returns the number of rows kept.
        """
        p = Path(path)
        if not p.is_file():
            return 0
        data = np.load(p)
        kept = 0
        for t, results, lengths in zip(data["timesteps"], data["results"], data["ep_lengths"]):
            rewards = [float(x) for x in results]
            if replaces_best(rewards, self.best_results, self.select):  # the rule that chose the saved best
                self.best_mean_reward, self.best_results = float(np.mean(rewards)), rewards
            if int(t) > limit:
                continue
            self.evaluations_timesteps.append(int(t))
            self.evaluations_results.append([float(x) for x in results])
            self.evaluations_length.append([int(x) for x in lengths])
            kept += 1
        return kept


class WallClockLimit(BaseCallback):
    """Stop training once ``minutes`` of wall-clock time have passed since training started.

    On a shared 2-core machine the speed of the plant varies several-fold with other jobs' load, so a run that
    must finish in time is bounded by the clock rather than by a step count alone.
    """

    def __init__(self, minutes: float, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.seconds = 60.0 * minutes
        self._t0 = 0.0
        self.stopped = False
        """True when the limit ended training."""

    def _on_training_start(self) -> None:
        self._t0 = time.monotonic()

    def _on_step(self) -> bool:
        if time.monotonic() - self._t0 < self.seconds:
            return True
        self.stopped = True
        if self.verbose >= 1:
            print(f"Wall-clock limit of {self.seconds / 60:.1f} min reached at {self.num_timesteps} timesteps")
        return False
