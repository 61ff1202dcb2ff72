"""Train a learned governor with Stable-Baselines3: YAML -> vectorised LBW envs -> SB3 -> ``runs/<run>/``.

    python train_policy.py --config configs/train/ppo.yaml [key=value ...]
    python train_policy.py --config configs/train/ppo.yaml n_envs=1 vec_env=dummy total_timesteps=2000
    python train_policy.py --trust-pickle resume=runs/<run>/checkpoints/model_4096_steps.zip   # your own run
    python train_policy.py --config configs/train/ppo.yaml --measure 60           # env throughput only
    python train_policy.py --help-config                                           # every key, type, default

The run folder ``runs/<env>__<algo>__<seed>__<time>/`` (or ``run_dir=...``) holds:

* ``config.yaml`` — the resolved :class:`~lbw_env.learning.config.TrainConfig` (loadable again; ``resume=`` uses
  it), ``env.yaml`` — the resolved env config of training and the evaluation episodes;
* ``best_model/`` — the best model on the held-out evaluation episodes as a governor folder (no pickle), the
  one to evaluate: ``evaluate.py --governors ppo:<run>/best_model``; ``best_model.zip`` + ``vecnormalize.pkl``
  beside it are SB3's own files (pickle: only with ``--trust-pickle``);
* ``final/model.zip`` + ``final/vecnormalize.pkl`` — the model at the end of training;
* ``checkpoints/model_<N>_steps.zip`` (+ ``model_vecnormalize_<N>_steps.pkl``, and the replay buffer for SAC):
  SB3's pickles, so ``resume=`` them only with ``--trust-pickle`` (reading them runs any code they hold);
* ``monitor/<i>.monitor.csv`` (training episodes per env), ``monitor/eval.monitor.csv``;
* ``evaluations.npz`` + ``learning_curve.png``; ``tb/<ALGO>_1/`` TensorBoard; ``summary.json``.

Everything but the command line lives in :mod:`lbw_env.learning` (layout: :mod:`lbw_env.learning.artifacts`;
the loop: :mod:`lbw_env.learning.loop`). A trained model is a governor of ``policies`` as it is, and the rl-zoo3
route works too (``python -m rl_zoo3.train --algo ppo --env LBW/WikiText-Tiny-v0 --gym-packages lbw_env
--conf-file configs/rl_zoo3/ppo.yml``): the ids, not this script, are the interface.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from lbw_env import learning
from lbw_env.errors import BAD_INPUT, ConfigError, error_line
from policies import make_governor


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error (exit status 2 as argparse's)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def fail(message: object) -> int:
    """Print one line ``train_policy.py: error: ...`` to stderr; the exit status of bad input (2)."""
    print(error_line("train_policy.py", message), file=sys.stderr)
    return 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog="train_policy.py",
        description="Train a learned governor (SB3) on an lbw-env id.",
        epilog="Overrides: key=value with dotted keys, e.g. n_envs=1 hyperparams.n_steps=64 eval.seeds=1 "
        "'env.trainer_overrides=[optim.steps=96]'. --help-config lists every key.",
    )
    parser.add_argument("--config", help="YAML TrainConfig (configs/train/<algo>.yaml)")
    parser.add_argument("--help-config", action="store_true", help="list every config key with type, default, doc")
    parser.add_argument("--measure", type=float, metavar="SECONDS", help="only measure env decisions/s, no training")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow resume= of an SB3 checkpoint: DANGEROUS, SB3 reads it (and its .pkl files) with pickle, which "
        "runs any code they hold; only for checkpoints you made",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status (0 done, 2 bad input: one line naming it, nothing left behind,
    130 interrupted)."""
    args = parse_args(argv)
    if args.help_config:
        print(learning.config_help())
        return 0
    try:
        cfg = learning.load_config(args.config, args.overrides)
        # A checkpoint that does not exist is reported by the trainer, naming it; one that does is unpickled.
        if cfg.resume and Path(cfg.resume).is_file() and not args.trust_pickle:
            raise ConfigError(
                f"resume={cfg.resume}: an SB3 checkpoint is read with pickle, which runs any code the file holds; "
                "pass --trust-pickle if you made it (or trust whoever did)"
            )
        if args.measure is not None:
            print(json.dumps(learning.measure(cfg, args.measure), indent=2))
            return 0
        result = learning.train(cfg, make_governor=make_governor)  # builds a residual governor's base rule
    except BAD_INPUT as e:  # config, data, or an OS error: an unwritable run or cache folder, a full disk
        return fail(e)
    except KeyboardInterrupt:
        return 130
    print(json.dumps(result.summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
