"""``python -m lbw_env.learning.convert <model.zip> --trust-pickle``: an SB3 zip (+ its vecnormalize.pkl) -> a
governor file that is safe to share and load (:mod:`.policy_file`).

Reading the legacy files runs pickle, so the conversion needs the explicit ``--trust-pickle``: do it once, on
files from a source you trust, and ship the result. The settings the model was trained with come from its run
folder's ``env.yaml`` (or ``--env-yaml``), a residual policy's base and correction bounds from its ``config.yaml``
(a checkpoint of a residual run converts to a residual governor). The converted governor is checked before the
command succeeds: on ``--check`` random observations of its space (and, for a recurrent policy, as one sequence
carrying the LSTM state) it must give exactly the legacy model's deterministic actions.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lbw_env.config import ConfigError
from lbw_env.control.compat import GovernanceSettings
from lbw_env.errors import BAD_INPUT, error_line

from .algos import ALGOS
from .legacy import load_sb3_zip, run_residual, run_settings, settings_from_env_yaml
from .policy_file import PolicyFile, load_policy_file, save_policy_file
from .policy_json import ObsNormalizer


def convert(
    model_zip: str | Path,
    out: str | Path | None = None,
    *,
    algo: str = "ppo",
    settings: GovernanceSettings | None = None,
    trust_pickle: bool = False,
    check: int = 64,
) -> Path:
    """Convert ``model_zip`` to a governor file at ``out`` (default: the zip's path without ``.zip``, e.g.
    ``best_model.zip`` -> ``best_model/``); returns its path. Refused without ``trust_pickle``."""
    src = Path(model_zip)
    model, vn = load_sb3_zip(algo, src, trust_pickle=trust_pickle, spec=f"{algo}:{src}")
    residual = run_residual(src)
    if settings is None:
        settings = run_settings(src, model.policy, residual)
    if settings is None:
        raise ConfigError(f"{src}: no env.yaml in its run folder; pass --env-yaml (the settings it trained with)")
    target = Path(out) if out is not None else src.with_suffix("")
    if target.resolve() == src.resolve():
        raise ConfigError(f"--out: {target} is the model zip itself")
    info = {"converted_from": src.name, "num_timesteps": int(getattr(model, "num_timesteps", 0))}
    save_policy_file(model, target, settings, algorithm=algo, vecnormalize=vn, info=info, residual=residual)
    if check:
        same_actions(model, ObsNormalizer.of_vecnormalize(vn), load_policy_file(target, algo), check)
    return target


def same_actions(model: Any, normalizer: ObsNormalizer | None, loaded: PolicyFile, n: int, seed: int = 0) -> None:
    """Raise unless ``loaded`` acts exactly as ``model`` (deterministic actions on ``n`` sampled observations,
    fed as one episode so that a recurrent policy's state is carried and compared too)."""
    space = loaded.observation_space
    space.seed(seed)
    state_a = state_b = None
    start = np.ones((1,), dtype=bool)
    for i in range(n):
        obs = np.asarray(space.sample(), dtype=np.float32)[None]
        a, state_a = model.predict(_norm(normalizer, obs), state=state_a, episode_start=start, deterministic=True)
        b, state_b = loaded.policy.predict(
            _norm(loaded.normalizer, obs), state=state_b, episode_start=start, deterministic=True
        )
        if not np.array_equal(a, b):
            raise ConfigError(f"{loaded.path}: converted governor acts differently on observation {i}: {a} vs {b}")
        start = np.zeros((1,), dtype=bool)


def _norm(normalizer: ObsNormalizer | None, obs: np.ndarray) -> np.ndarray:
    return obs if normalizer is None else normalizer.normalize(obs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lbw_env.learning.convert",
        description="Convert an SB3 model zip (+ vecnormalize.pkl) to a governor file that loading cannot execute.",
    )
    parser.add_argument("model", help="the SB3 .zip (its statistics are found as for ppo:<model.zip>)")
    parser.add_argument("--out", help="folder, or a .zip, to write (default: the model path without .zip)")
    parser.add_argument("--algo", default="ppo", choices=ALGOS, help="the algorithm it was trained with")
    parser.add_argument("--env-yaml", help="env settings it was trained with (default: its run folder's env.yaml)")
    parser.add_argument("--check", type=int, default=64, help="observations on which actions must agree (0: skip)")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="required: reading the zip and .pkl runs pickle, i.e. any code they hold; only for trusted files",
    )
    args = parser.parse_args(argv)
    try:
        settings = settings_from_env_yaml(args.env_yaml) if args.env_yaml else None
        out = convert(
            args.model, args.out, algo=args.algo, settings=settings, trust_pickle=args.trust_pickle, check=args.check
        )
    except BAD_INPUT as e:
        print(error_line(parser.prog, e), file=sys.stderr)
        return 2
    print(f"wrote {out} (load it as {args.algo}:{out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
