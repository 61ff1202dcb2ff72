"""The shipped gSDE residual PPO is the checkpoint the committed validation records choose.

``configs/selection/select_ppo_residual_sde.yaml`` runs every checkpoint of ``configs/train/ppo_residual_sde.yaml``
(as governor files in ``artifacts/ppo_residual_sde/candidates/``) and their base, ``lbw_guard_tuned``, on val
scenarios only: a held-out sample of the training distribution and the tiny family's val split. The choice is
the lowest mean capped final validation log-perplexity (:func:`capped_loss`, the score of every selection on
val). This test recomputes it from the committed records and fails if they touch the test split, are
incomplete, or if a suite's ``ppo_residual_sde`` arm is another checkpoint than the chosen one.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from lbw_env.config import config_dir
from lbw_env.evaluation.stats import capped_loss
from lbw_env.evaluation.suite import load_suite
from lbw_env.scenarios import resolve

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "benchmarks" / "results" / "select_ppo_residual_sde" / "records.jsonl"
BASE = "lbw_guard_tuned"


def scores() -> dict[str, float]:
    """Mean capped final validation log-ppl per arm (the base and each checkpoint), over scenarios and seeds."""
    suite = load_suite(str(config_dir() / "selection" / "select_ppo_residual_sde.yaml"))
    records = [json.loads(line) for line in RECORDS.read_text().splitlines()]
    assert {r["split"] for r in records} <= {"train", "val"}  # chosen without the test split
    expected = {(s.name, seed) for s in resolve(suite.scenarios) for seed in range(suite.seeds)}
    by_arm: dict[str, list[float]] = defaultdict(list)
    seen: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for r in records:
        by_arm[r["arm"]].append(capped_loss(r))
        seen[r["arm"]].add((r["scenario"], int(r["seed"])))
    assert set(by_arm) == {a.label for a in suite.arms}
    for arm in by_arm:
        assert seen[arm] == expected, f"{arm}: incomplete selection records"
    return {arm: float(np.mean(v)) for arm, v in by_arm.items()}


def test_the_suites_run_the_checkpoint_chosen_on_val() -> None:
    s = scores()
    best = min(s, key=s.__getitem__)
    print("select_ppo_residual_sde:", ", ".join(f"{a} {v:.4f}" for a, v in sorted(s.items(), key=lambda kv: kv[1])))
    chosen = BASE if best == BASE else f"ppo:artifacts/ppo_residual_sde/candidates/model_{best[5:]}_steps"
    for suite_file in sorted((config_dir() / "suites").glob("*.yaml")):
        suite = load_suite(str(suite_file))
        for arm in suite.arms:
            if arm.label == "ppo_residual_sde":
                assert arm.governor == chosen, f"{suite_file.name}: ppo_residual_sde is {arm.governor}, not {best}"
