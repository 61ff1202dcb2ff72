"""What a training run leaves on disk, named in one place: run folders, governor files, checkpoints and
VecNormalize statistics.

Two kinds of model file. A *governor file* (:mod:`.policy_file`: JSON manifest, safetensors weights, JSON
statistics) is what to share and evaluate: loading it runs no code. SB3's own ``.zip`` + ``.pkl`` are what
SB3 needs to resume training; reading them runs pickle, so ``policies`` loads them only on an explicit opt-in.
A model is only usable with the observation statistics it was trained (or evaluated) with, so every SB3 model
has a companion ``.pkl``; :func:`vecnormalize_path` is the one rule that finds it, for the trainer (resume) and
for ``policies.sb3`` (a trusted governor from a ``.zip``). The layout::

    <run>/config.yaml, env.yaml             resolved TrainConfig (resume= reads it) and env config + eval episodes
    <run>/best_model/                       governor file of the best model on the held-out episodes
    <run>/best_model.zip, vecnormalize.pkl  the same model for SB3, with the statistics it was evaluated with
    <run>/final/model/                      governor file of the model at the end of training
    <run>/final/model.zip, vecnormalize.pkl the same for SB3
    <run>/checkpoints/model_<N>_steps.zip   + model_vecnormalize_<N>_steps.pkl (+ model_replay_buffer_<N>_steps.pkl)
    <run>/monitor/<i>.monitor.csv, eval.monitor.csv
    <run>/evaluations.npz, learning_curve.png, summary.json, tb/<ALGO>_1/

SB3 fixes some of these names itself (``EvalCallback`` writes ``best_model.zip`` and ``evaluations.npz``,
``CheckpointCallback`` the ``<prefix>_<N>_steps`` files); they are restated here so the rest of the code and
its readers have one place to look. A governor file sits beside its zip under the zip's name without ``.zip``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import re
import zipfile
from pathlib import Path
from typing import Any

from lbw_env.cache import atomic_path, atomic_write_text, atomic_write_yaml, json_safe
from lbw_env.config import ConfigError, is_int

VECNORM_FILE = "vecnormalize.pkl"
CHECKPOINT_PREFIX = "model"
CHECKPOINT_RE = re.compile(r"^(?P<prefix>.+)_(?P<steps>\d+)_steps\.zip$")
"""SB3 ``CheckpointCallback`` model names: ``<prefix>_<N>_steps.zip``."""


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder (nothing is created until something is saved)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def env(self) -> Path:
        return self.root / "env.yaml"

    @property
    def best_model(self) -> Path:
        return self.root / "best_model.zip"

    @property
    def best_vecnormalize(self) -> Path:
        return self.root / VECNORM_FILE

    @property
    def best_governor(self) -> Path:
        """The governor file of ``best_model.zip`` (``ppo:<run>/best_model``)."""
        return self.root / "best_model"

    @property
    def bc_governor(self) -> Path:
        """Governor file of the policy after the imitation warm start, before any RL (``warm_start``)."""
        return self.root / "bc_model"

    @property
    def final_model(self) -> Path:
        return self.root / "final" / "model.zip"

    @property
    def final_vecnormalize(self) -> Path:
        return self.root / "final" / VECNORM_FILE

    @property
    def final_governor(self) -> Path:
        """The governor file of ``final/model.zip`` (``ppo:<run>/final/model``)."""
        return self.root / "final" / "model"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def monitor(self) -> Path:
        return self.root / "monitor"

    @property
    def evaluations(self) -> Path:
        return self.root / "evaluations.npz"

    @property
    def learning_curve(self) -> Path:
        return self.root / "learning_curve.png"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    def holds_run(self) -> bool:
        """True when a run already trained here (a final model or a checkpoint): a new run must not overwrite it."""
        return self.final_model.exists() or any(self.checkpoints.glob("*.zip"))

    def write_config(self, config: dict[str, Any], env: dict[str, Any], episodes: list[tuple[str, int]]) -> None:
        """``config.yaml`` (loadable again by ``resume=``) and ``env.yaml`` (what training and evaluation ran)."""
        atomic_write_yaml(self.config, config, "# Resolved TrainConfig of this run (train_policy.py).\n")
        atomic_write_yaml(
            self.env,
            {"train": env, "eval_episodes": [list(e) for e in episodes]},
            "# Resolved EnvConfig of training, and the fixed held-out evaluation episodes.\n",
        )

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary, json.dumps(json_safe(summary), indent=2) + "\n")


def new_run_dir(runs_dir: str | Path, env_id: str, algo: str, seed: int) -> Path:
    """A fresh ``<runs_dir>/<env>__<algo>__<seed>__<time>`` (``/`` of the env id becomes ``-``)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(runs_dir) / f"{env_id.replace('/', '-')}__{algo}__{seed}__{stamp}"


def run_dir_of_checkpoint(checkpoint: Path) -> Path:
    """``<run>/checkpoints/model_N_steps.zip`` -> ``<run>``; a zip elsewhere -> its folder."""
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


# ----------------------------------------------------------------------------------------------------------
# Checkpoints and their companions
# ----------------------------------------------------------------------------------------------------------


def checkpoint_path(folder: Path, steps: int, prefix: str = CHECKPOINT_PREFIX) -> Path:
    return folder / f"{prefix}_{steps}_steps.zip"


def own_vecnormalize(model_path: str | Path) -> Path:
    """The statistics saved *with* a model: ``<prefix>_vecnormalize_<N>_steps.pkl`` for an SB3 checkpoint
    ``<prefix>_<N>_steps.zip``, ``vecnormalize.pkl`` beside any other model (whether or not it exists)."""
    p = Path(model_path)
    m = CHECKPOINT_RE.match(p.name)
    if m is None:
        return p.parent / VECNORM_FILE
    return p.parent / f"{m['prefix']}_vecnormalize_{m['steps']}_steps.pkl"


def replay_buffer_path(checkpoint: str | Path) -> Path | None:
    """``<prefix>_replay_buffer_<N>_steps.pkl`` of an SB3 checkpoint (None for a model that is no checkpoint)."""
    p = Path(checkpoint)
    m = CHECKPOINT_RE.match(p.name)
    return p.parent / f"{m['prefix']}_replay_buffer_{m['steps']}_steps.pkl" if m else None


def vecnormalize_path(model_path: str | Path) -> Path | None:
    """The VecNormalize statistics of a model, the first that exists of: its own (:func:`own_vecnormalize`),
    ``vecnormalize.pkl`` beside it, rl-zoo3's ``<stem>/vecnormalize.pkl``. None if there are none."""
    p = Path(model_path)
    candidates = [own_vecnormalize(p), p.parent / VECNORM_FILE, p.parent / p.stem / VECNORM_FILE]
    return next((c for c in candidates if c.is_file()), None)


def checkpoint_timesteps(checkpoint: Path) -> int:
    """``num_timesteps`` saved in an SB3 model zip, read from its ``data`` JSON as plain JSON: SB3's own reader
    would unpickle the ``:serialized:`` fields, running code from the file before the config is even checked."""
    try:
        with zipfile.ZipFile(checkpoint) as zf:
            data = json.loads(zf.read("data"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ConfigError(f"resume: {checkpoint} is not an SB3 model zip ({type(e).__name__}: {e})") from None
    steps = data.get("num_timesteps") if isinstance(data, dict) else None
    if not is_int(steps):
        raise ConfigError(f"resume: {checkpoint} has no saved num_timesteps")
    return steps


def save_vecnormalize(venv: Any, path: Path) -> None:
    """Save VecNormalize statistics atomically: never a half-written file beside a model."""
    with atomic_path(path) as tmp:
        venv.save(str(tmp))


def save_checkpoint(model: Any, folder: Path, prefix: str = CHECKPOINT_PREFIX, replay_buffer: bool = True) -> Path:
    """Save model (+ VecNormalize, + replay buffer) with SB3 ``CheckpointCallback``'s file names, every file
    atomically and the model last: a crash while saving leaves no checkpoint whose companions are missing or
    half-written (a resume picks the newest model file, and its statistics are then complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, model.num_timesteps, prefix)
    vn = model.get_vec_normalize_env()
    if vn is not None:
        save_vecnormalize(vn, own_vecnormalize(path))
    buffer = replay_buffer_path(path)
    if replay_buffer and getattr(model, "replay_buffer", None) is not None and buffer is not None:
        with atomic_path(buffer) as tmp:
            model.save_replay_buffer(str(tmp))
    with atomic_path(path) as tmp:
        model.save(str(tmp))
    return path
