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
from pathlib import Path

import pytest

from lbw_env.config import ConfigError, config_dir
from lbw_env.evaluation.selection import val_scores
from lbw_env.evaluation.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "benchmarks" / "results" / "select_ppo_residual_sde" / "records.jsonl"
BASE = "lbw_guard_tuned"


def test_the_suites_run_the_checkpoint_chosen_on_val() -> None:
    s = val_scores(config_dir() / "selection" / "select_ppo_residual_sde.yaml", RECORDS)
    best = min(s, key=s.__getitem__)
    print("select_ppo_residual_sde:", ", ".join(f"{a} {v:.4f}" for a, v in sorted(s.items(), key=lambda kv: kv[1])))
    chosen = BASE if best == BASE else f"ppo:artifacts/ppo_residual_sde/candidates/model_{best[5:]}_steps"
    for suite_file in sorted((config_dir() / "suites").glob("*.yaml")):
        suite = load_suite(str(suite_file))
        for arm in suite.arms:
            if arm.label == "ppo_residual_sde":
                assert arm.governor == chosen, f"{suite_file.name}: ppo_residual_sde is {arm.governor}, not {best}"


def test_val_scores_refuse_test_records_and_an_incomplete_plan(tmp_path: Path) -> None:
    suite = config_dir() / "selection" / "select_ppo_residual_sde.yaml"
    lines = RECORDS.read_text().splitlines()
    partial = tmp_path / "partial.jsonl"
    partial.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ConfigError, match=r"\(scenario, seed\) of the suite unrun"):
        val_scores(suite, partial)
    row = json.loads(lines[-1])
    leaked = tmp_path / "leaked.jsonl"
    leaked.write_text("\n".join([*lines[:-1], json.dumps({**row, "split": "test"})]) + "\n")
    with pytest.raises(ConfigError, match=r"touch the \['test'\] split"):
        val_scores(suite, leaked)
