"""The stress suites' one LR-free arm is the one the committed validation records choose.

``configs/selection/select_lr_free.yaml`` runs the LR-free (and schedule-free) optimizers on validation scenarios
only; the choice is the lowest mean capped final validation log-perplexity (:func:`capped_loss`, the score of
every selection on val). This test recomputes it from the committed records and fails if they touch the test
split, are incomplete, or if a suite that runs one LR-free arm runs another.
"""

from __future__ import annotations

from pathlib import Path

from lbw_env.config import config_dir
from lbw_env.evaluation.arms import LR_FREE
from lbw_env.evaluation.selection import val_scores
from lbw_env.evaluation.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "benchmarks" / "results" / "select_lr_free" / "records.jsonl"
SUITES_WITH_ONE = ("full_param", "lora_stress", "runtime_faults")
"""The suites that run "the best LR-free optimizer" (the tiny family and lr_stress run all of them)."""


def scores() -> dict[str, float]:
    """Mean capped final validation log-ppl per LR-free arm, over every scenario and seed of the selection."""
    s = val_scores(config_dir() / "selection" / "select_lr_free.yaml", RECORDS)
    assert set(s) == set(LR_FREE)
    return s


def test_the_stress_suites_run_the_lr_free_optimizer_chosen_on_val() -> None:
    s = scores()
    best = min(s, key=s.__getitem__)
    print("select_lr_free:", ", ".join(f"{a} {v:.4f}" for a, v in sorted(s.items(), key=lambda kv: kv[1])))
    for name in SUITES_WITH_ONE:
        suite = load_suite(str(config_dir() / "suites" / f"{name}.yaml"))
        lr_free = [a.label for a in suite.arms if a.label in LR_FREE]
        assert lr_free == [best], f"{name}.yaml runs {lr_free}; the validation choice is {best} ({s})"
