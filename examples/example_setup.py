"""What both examples share: their command line, the WikiText data and qwen2-tiny model, and the final score.

Kept beside the examples (``python examples/<name>.py`` puts this folder on ``sys.path``), so each example
file shows only what differs: how the governor is put into *its* training loop.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lbw_env.config import load_yaml
from lbw_env.control.governance import GovernanceConfig
from lbw_env.control.protocol import GovernorFactory
from lbw_env.plant.config import TrainerConfig, load_trainer_config
from lbw_env.plant.data import Corpus, eval_blocks, load_corpus
from lbw_env.plant.models import build_model
from policies import make_governor, make_trusted_governor

EVAL_BLOCKS = 32
"""Validation blocks for the final perplexity."""


def parse_args(doc: str | None) -> argparse.Namespace:
    """The examples' common command line (``--governor``, ``--governance``, ``--steps``, ``--shock`` ...)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--governor", default="lbw_guard", help="lbw_guard | adamw | skip_step | ppo:runs/<run>/best_model ..."
    )
    ap.add_argument(
        "--trust-pickle",
        action="store_true",
        help="also load SB3 .zip/.pkl governors: DANGEROUS, pickle runs any code the file holds; only for files "
        "you made (or convert them once: python -m lbw_env.learning.convert)",
    )
    ap.add_argument(
        "--governance",
        default="",
        help="YAML with decision_interval / window / envelope (default: the governor's own, else the suites')",
    )
    ap.add_argument("--steps", type=int, default=160)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--shock", action="store_true", help="multiply the LR by 30 for 16 steps a third of the way in")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def governor_factory(args: argparse.Namespace) -> GovernorFactory:
    """What builds the ``--governor`` spec: ``policies.make_governor``, which loads governor files and rules only,
    or with ``--trust-pickle`` ``policies.make_trusted_governor``, which also unpickles SB3 zips."""
    return make_trusted_governor if args.trust_pickle else make_governor


def governance(args: argparse.Namespace) -> GovernanceConfig | None:
    """``--governance <yaml>`` (keys of :class:`GovernanceConfig`), or None: the governor's own training settings
    if it carries them (a learned governor from a policy file), else the defaults — the evaluation suites'."""
    return load_yaml(GovernanceConfig, args.governance) if args.governance else None


@dataclass
class Setup:
    """The training config, the tokenized WikiText and a fresh model."""

    cfg: TrainerConfig
    corpus: Corpus
    model: torch.nn.Module


def tiny_setup(seed: int) -> Setup:
    """WikiText-2 through the project's cached BPE (vocab 2048), and a fresh qwen2-tiny model."""
    cfg = load_trainer_config({"model": {"preset": "qwen2-tiny"}, "data": {"vocab_size": 2048, "seq_len": 64}})
    corpus = load_corpus(cfg.data)
    model = build_model(cfg.model, corpus.vocab_size, cfg.data.seq_len, seed=seed)
    return Setup(cfg, corpus, model)


def shock_range(args: argparse.Namespace) -> range:
    """``--shock``: the 16 steps starting a third of the way in (an empty range without it)."""
    start = args.steps // 3
    return range(start, start + 16) if args.shock else range(0)


def valid_ppl(setup: Setup) -> float:
    """Perplexity of the model on the fixed validation subset."""
    valid = eval_blocks(setup.corpus.valid, setup.cfg.data.seq_len, EVAL_BLOCKS)
    with torch.no_grad():
        setup.model.eval()
        logits = setup.model(input_ids=valid[:, :-1]).logits
        loss = float(F.cross_entropy(logits.flatten(0, 1).float(), valid[:, 1:].flatten()))
    return math.exp(min(loss, 700))
