"""SB3's own files (``model.zip`` + ``vecnormalize.pkl``): loaded only on an explicit opt-in, because reading
them runs pickle.

``BaseAlgorithm.load`` deserialises the zip's ``:serialized:`` fields (spaces, schedules, policy kwargs) with
pickle, and VecNormalize statistics are a pickle file: either can run any code when read. Training writes
both (checkpoints must be resumable by SB3), and also a :mod:`governor file <.policy_file>` that is safe to
share. Everything that would read a pickle goes through :func:`load_sb3_zip`, which refuses unless the caller
says ``trust_pickle=True``; :mod:`.convert` uses it once to turn a trusted legacy model into a governor file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import yaml

from lbw_env.config import ConfigError, read_yaml
from lbw_env.control.compat import GovernanceSettings

from .algos import algo_class
from .artifacts import vecnormalize_path
from .policy_file import check_spaces
from .residual import ResidualConfig

ENV_YAML = "env.yaml"
CONFIG_YAML = "config.yaml"


def pickle_refusal(spec: str, path: str | Path) -> ConfigError:
    """The one-line error for a file that only pickle can read: why, and the three ways on."""
    p = Path(path)
    safe = p.with_suffix("")
    hint = f" (a safe copy exists: {spec.partition(':')[0]}:{safe})" if (safe / "manifest.json").is_file() else ""
    return ConfigError(
        f"governor {spec}: {p.name} is an SB3 zip (with its .pkl statistics) that only pickle can read, and pickle "
        "runs any code a file holds; load it only from a source you trust: --trust-pickle (evaluate.py, "
        "train_policy.py) or trust_pickle=True, or convert it once: python -m lbw_env.learning.convert "
        f"{p} --trust-pickle{hint}"
    )


def load_sb3_zip(algo: str, path: str | Path, *, trust_pickle: bool = False, spec: str = "") -> tuple[Any, Any]:
    """``(model, vecnormalize or None)`` of an SB3 model zip and the statistics that
    :func:`~.artifacts.vecnormalize_path` finds for it. Refused (a ConfigError) unless ``trust_pickle``."""
    p = Path(path)
    spec = spec or f"{algo}:{path}"
    if not p.is_file():
        raise ConfigError(f"governor {spec}: model file not found (expected an SB3 .zip or a governor folder)")
    if not trust_pickle:
        raise pickle_refusal(spec, p)
    try:
        model = algo_class(algo).load(str(p), device="cpu")
    except Exception as e:  # SB3 raises many kinds for a corrupt file
        raise ConfigError(f"governor {spec}: not a loadable {algo} model ({type(e).__name__}: {e})") from e
    stats = vecnormalize_path(p)
    vn = None
    if stats is not None:
        with open(stats, "rb") as f:
            vn = pickle.load(f)  # trusted by the caller, as the zip is
    return model, vn


def _run_folder(model_path: str | Path) -> Path | None:
    """The run folder of a model zip: the folder holding ``env.yaml`` (train_policy.py writes it beside
    ``best_model.zip``, one level above ``final/model.zip`` and ``checkpoints/``). None if there is none."""
    p = Path(model_path)
    return next((folder for folder in (p.parent, p.parent.parent) if (folder / ENV_YAML).is_file()), None)


def run_settings(
    model_path: str | Path, policy: Any = None, residual: ResidualConfig | None = None
) -> GovernanceSettings | None:
    """The settings a legacy model was trained with, from its run folder's ``env.yaml``. None if absent.

    With the model's ``policy``, settings that describe other spaces than the policy's are a ConfigError: a
    governor must not carry settings it cannot act under (with ``residual``, :func:`run_residual`'s answer, the
    policy's actions are corrections)."""
    folder = _run_folder(model_path)
    if folder is None:
        return None
    settings = settings_from_env_yaml(folder / ENV_YAML)
    if policy is not None:
        check_spaces(policy.observation_space, policy.action_space, settings, f"{folder / ENV_YAML}", residual)
    return settings


def run_residual(model_path: str | Path) -> ResidualConfig | None:
    """The residual base and bounds a model was trained with, from its run folder's ``config.yaml``
    (``residual:``); None for a policy that acts alone, or without a run folder."""
    folder = _run_folder(model_path)
    path = None if folder is None else folder / CONFIG_YAML
    if path is None or not path.is_file():
        return None
    residual = read_yaml(path).get("residual")
    if not isinstance(residual, dict) or not residual.get("base"):
        return None
    return ResidualConfig.from_json(residual, f"{path}: residual")


def settings_from_env_yaml(path: str | Path) -> GovernanceSettings:
    """The governance part of a run's ``env.yaml`` (its ``train:`` section) or of a plain EnvConfig YAML.

    A legacy model records no feature names; those of this ``lbw_env`` are assumed (the observation size is
    checked against them when the governor file is written)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("train"), dict):
        data = data["train"]
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of env settings")
    keys = ("decision_interval", "window", "envelope", "healthy_ratio")
    governance = {k: data[k] for k in keys if k in data}
    from_file = GovernanceSettings.from_dict({**governance, "features": []}, str(path))
    return GovernanceSettings(
        from_file.decision_interval, from_file.window, from_file.envelope, from_file.healthy_ratio
    )
