"""The envelope's bound on a high-LR fine-tune, recomputed from the committed records (README, tiny section).

``configs/suites/envelope_bound.yaml`` runs oracles that know the tuned fine-tune LR (``fixed_scale:<x>``, with and
without one rollback of the first interval) and the two guards against tuned AdamW on the tiny family's 33x (val)
and 100x (test) fine-tunes. The README's reading of them: knowing the right LR is not enough under the envelope
(the damage of the first interval, which the envelope cannot cut below 1/``max_cut`` of the configured LR, stays
unless rolled back), and with a rollback even the oracle ends above tuned AdamW. This test fails if the committed
records stop saying so (a rerun on another machine, an envelope change) or stop being complete and paired.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lbw_env.control.envelope import EnvelopeConfig
from lbw_env.evaluation.readme import load_results
from lbw_env.evaluation.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
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
    cells = {(c.scenario, c.arm): c for c in load_results(REPO / "benchmarks" / "results", "envelope_bound").stats[0]}
    for scenario in suite.scenarios:
        for arm in suite.arms:
            assert cells[(scenario, arm.label)].n == suite.seeds, f"{scenario} {arm.label}: incomplete"

    def vs_tuned(scenario: str, arm: str) -> tuple[float, float]:
        """The report's paired % interval of the arm's final test perplexity over tuned AdamW's (same starts)."""
        paired = cells[(scenario, arm)].vs_tuned
        assert paired is not None and paired.n == suite.seeds, f"{scenario} {arm}: not paired with tuned AdamW"
        return paired.pct.lo, paired.pct.hi

    for scenario, x in ORACLE.items():
        no_rollback, rollback = vs_tuned(scenario, f"fixed_scale:{x}"), vs_tuned(scenario, f"fixed_scale_rollback:{x}")
        print(scenario, "oracle", no_rollback, "oracle + rollback", rollback)
        assert no_rollback[0] > 10.0  # the first interval's damage stays at the right LR
        assert rollback[0] > 0.0 and rollback[1] < no_rollback[0]  # a rollback heals most of it, not all
        for guard in ("lbw_guard_probe", "lbw_guard_tuned"):
            assert vs_tuned(scenario, guard)[0] > 0.0  # no governor measured reaches tuned AdamW either
