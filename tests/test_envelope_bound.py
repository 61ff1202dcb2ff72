"""The envelope's bound on a high-LR fine-tune, recomputed from the committed records (README, tiny section).

``configs/suites/envelope_bound.yaml`` runs oracles that know the tuned fine-tune LR (``fixed_scale:<x>``, with and
without one rollback of the first interval) and the two guards against tuned AdamW on the tiny family's 33x (val)
and 100x (test) fine-tunes. The README's reading of them: knowing the right LR is not enough under the envelope
(the damage of the first interval, which the envelope cannot cut below 1/``max_cut`` of the configured LR, stays
unless rolled back), and with a rollback even the oracle ends above tuned AdamW. This test fails if the committed
records stop saying so (a rerun on another machine, an envelope change) or stop being complete and paired.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import pytest

from lbw_env.control.envelope import EnvelopeConfig
from lbw_env.evaluation.intervals import paired
from lbw_env.evaluation.stats import START_TOLERANCE
from lbw_env.evaluation.suite import load_suite
from lbw_env.evaluation.verify import read_records

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "benchmarks" / "results" / "envelope_bound"
ORACLE = {"tiny/ft_high_lr": "0.06", "tiny/ft_lr3e-1_b1": "0.02"}
"""The oracle's scale on each scenario: the tuned fine-tune LR (6e-3) over the configured one (1e-1, 3e-1)."""


def test_oracle_scales_are_the_tuned_lr_over_the_configured_one() -> None:
    from lbw_env.scenarios import get_scenario, tuned_lr

    for name, scale in ORACLE.items():
        trainer = get_scenario(name).trainer
        assert tuned_lr("tiny", "", trainer.regime) / trainer.optim.lr == pytest.approx(float(scale))
    assert EnvelopeConfig().max_cut == 8.0  # the README's "1/8 of the configured LR" for the first interval


def test_knowing_the_lr_is_not_enough_under_the_envelope() -> None:
    suite = load_suite(str(REPO / "configs" / "suites" / "envelope_bound.yaml"))
    runs: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for r in read_records(FOLDER / "records.jsonl"):
        runs[(r["scenario"], r["arm"])][int(r["seed"])] = r
    seeds = set(range(suite.seeds))
    for scenario in suite.scenarios:
        for arm in suite.arms:
            assert set(runs[(scenario, arm.label)]) == seeds, f"{scenario} {arm.label}: incomplete"

    def vs_tuned(scenario: str, arm: str) -> tuple[float, float]:
        """Paired % interval of the arm's final test perplexity over tuned AdamW's, same starts asserted."""
        diffs = []
        for seed, r in runs[(scenario, arm)].items():
            ref = runs[(scenario, "adamw_tuned")][seed]
            assert abs(r["initial_test_loss"] - ref["initial_test_loss"]) <= START_TOLERANCE, (scenario, arm, seed)
            diffs.append(math.log(r["test_ppl"]) - math.log(ref["test_ppl"]))
        d = paired(diffs).diff
        return 100 * math.expm1(d.lo), 100 * math.expm1(d.hi)

    for scenario, x in ORACLE.items():
        no_rollback, rollback = vs_tuned(scenario, f"fixed_scale:{x}"), vs_tuned(scenario, f"fixed_scale_rollback:{x}")
        print(scenario, "oracle", no_rollback, "oracle + rollback", rollback)
        assert no_rollback[0] > 10.0  # the first interval's damage stays at the right LR
        assert rollback[0] > 0.0 and rollback[1] < no_rollback[0]  # a rollback heals most of it, not all
        for guard in ("lbw_guard_probe", "lbw_guard_tuned"):
            assert vs_tuned(scenario, guard)[0] > 0.0  # no governor measured reaches tuned AdamW either
