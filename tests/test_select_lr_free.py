"""The stress suites' one LR-free arm is the one the committed validation records choose.

``configs/selection/select_lr_free.yaml`` runs the LR-free (and schedule-free) optimizers on validation scenarios
only; the choice is the lowest mean capped final validation log-perplexity (:func:`capped_loss`, the score of
every selection on val). This test recomputes it from the committed records and fails if they touch the test
split, are incomplete, or if a suite that runs one LR-free arm runs another.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from lbw_env.config import config_dir
from lbw_env.evaluation.arms import LR_FREE
from lbw_env.evaluation.stats import capped_loss
from lbw_env.evaluation.suite import load_suite
from lbw_env.scenarios import resolve

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "benchmarks" / "results" / "select_lr_free" / "records.jsonl"
SUITES_WITH_ONE = ("full_param", "lora_stress", "runtime_faults")
"""The suites that run "the best LR-free optimizer" (the tiny family and lr_stress run all of them)."""


def scores() -> dict[str, float]:
    """Mean capped final validation log-ppl per LR-free arm, over every scenario and seed of the selection."""
    suite = load_suite(str(config_dir() / "selection" / "select_lr_free.yaml"))
    records = [json.loads(line) for line in RECORDS.read_text().splitlines()]
    assert {r["split"] for r in records} <= {"train", "val"}  # chosen without the test split
    expected = {(s.name, seed) for s in resolve(suite.scenarios) for seed in range(suite.seeds)}
    by_arm: dict[str, list[float]] = defaultdict(list)
    seen: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for r in records:
        by_arm[r["arm"]].append(capped_loss(r))
        seen[r["arm"]].add((r["scenario"], int(r["seed"])))
    assert set(by_arm) == set(LR_FREE) == {a.label for a in suite.arms}
    for arm in by_arm:
        assert seen[arm] == expected, f"{arm}: incomplete selection records"
    return {arm: float(np.mean(v)) for arm, v in by_arm.items()}


def test_the_stress_suites_run_the_lr_free_optimizer_chosen_on_val() -> None:
    s = scores()
    best = min(s, key=s.__getitem__)
    print("select_lr_free:", ", ".join(f"{a} {v:.4f}" for a, v in sorted(s.items(), key=lambda kv: kv[1])))
    for name in SUITES_WITH_ONE:
        suite = load_suite(str(config_dir() / "suites" / f"{name}.yaml"))
        lr_free = [a.label for a in suite.arms if a.label in LR_FREE]
        assert lr_free == [best], f"{name}.yaml runs {lr_free}; the validation choice is {best} ({s})"
