"""Model selection on validation records: the score every choice on val uses, per arm of a selection suite.

A selection suite (``configs/selection/*.yaml``) runs candidates (optimizers, checkpoints, a base rule) on val
scenarios only; the choice is the arm with the lowest mean capped final validation log-perplexity
(:func:`~lbw_env.evaluation.stats.capped_loss`) over every scenario and seed of the suite. :func:`val_scores`
recomputes that from committed records and refuses records that touch the test split or leave a (scenario,
seed) of the suite unrun, so a choice cannot silently rest on test data or on part of the plan.
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np

from ..config import ConfigError
from ..scenarios import resolve
from .stats import capped_loss
from .suite import load_suite
from .verify import read_records


def val_scores(suite_file: str | os.PathLike[str], records: str | os.PathLike[str]) -> dict[str, float]:
    """Mean capped final validation log-perplexity per arm of ``suite_file``, from ``records`` (lower is better)."""
    suite = load_suite(str(suite_file))
    rows = read_records(records)
    splits = {r["split"] for r in rows}
    if not splits <= {"train", "val"}:
        raise ConfigError(f"{records}: selection records touch the {sorted(splits - {'train', 'val'})} split")
    expected = {(s.name, seed) for s in resolve(suite.scenarios) for seed in range(suite.seeds)}
    by_arm: dict[str, list[float]] = defaultdict(list)
    seen: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for r in rows:
        by_arm[r["arm"]].append(capped_loss(r))
        seen[r["arm"]].add((r["scenario"], int(r["seed"])))
    arms = {a.label for a in suite.arms}
    if set(by_arm) != arms:
        raise ConfigError(f"{records}: arms {sorted(by_arm)} are not the suite's {sorted(arms)}")
    for arm in arms:
        if seen[arm] != expected:
            raise ConfigError(f"{records}: {arm}: {len(expected - seen[arm])} (scenario, seed) of the suite unrun")
    return {arm: float(np.mean(v)) for arm, v in by_arm.items()}
