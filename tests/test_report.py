"""Report statistics and files on synthetic records: bootstrap CIs, paired differences, time-to-target."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lbw_env.evaluation import summarize, write_report
from lbw_env.evaluation.stats import bootstrap_mean, relative_delta_pct, scenario_targets, time_to_target, verdict


def make_record(
    scenario: str,
    arm: str,
    seed: int,
    final: float,
    *,
    valid: tuple[list[int], list[float], list[float]] | None = None,
    lr: float = 1e-3,
    diverged: bool = False,
) -> dict[str, Any]:
    """A record with the fields the report reads; ``valid`` = (steps, ppls, seconds) of the validation points."""
    steps, ppls, secs = valid or ([0, 100], [1000.0, final], [0.0, 10.0])
    enc = [p if math.isfinite(p) else str(p) for p in ppls]
    return {
        "suite": "synthetic",
        "scenario": scenario,
        "family": scenario.split("/")[0],
        "split": "train",
        "arm": arm,
        "governor": arm,
        "seed": seed,
        "eval_every": 1,
        "trainer": {"optim": {"lr": lr}, "model": {"preset": "qwen2-tiny"}},
        "final_valid_ppl": final if math.isfinite(final) else str(final),
        "test_ppl": final * 1.01 if math.isfinite(final) else str(final),
        "diverged": diverged,
        "steps": steps[-1],
        "skipped_steps": 2,
        "rollbacks": 0,
        "curves": {
            "train": {"step": steps[1:], "loss": [math.log(p) if math.isfinite(p) else "nan" for p in ppls[1:]],
                      "lr_scale": [1.0] * (len(steps) - 1), "skipped": [1] * (len(steps) - 1)},
            "valid": {"step": steps, "ppl": enc},
        },
        "timing": {"wall_seconds": secs[-1], "train_seconds": secs[-1] * 0.9, "valid_seconds": secs},
        "versions": {"torch": "x"},
    }  # fmt: skip


def test_bootstrap_ci_contains_the_mean_and_is_seeded() -> None:
    rng = np.random.default_rng(1)
    for n in (2, 3, 5, 20):
        x = rng.lognormal(5, 0.3, n)
        est = bootstrap_mean(x)
        assert est.n == n and est.lo <= est.mean <= est.hi
        assert est.mean == pytest.approx(float(np.mean(x)))
        assert est == bootstrap_mean(x)  # seeded: identical on every call
    tight, wide = bootstrap_mean([100, 101, 99, 100]), bootstrap_mean([50, 150, 80, 120])
    assert tight.hi - tight.lo < wide.hi - wide.lo
    one = bootstrap_mean([42.0])
    assert (one.mean, one.lo, one.hi, one.n) == (42.0, 42.0, 42.0, 1)
    assert bootstrap_mean([]).n == 0
    # A diverged run (inf) makes the mean infinite; the bounds never become NaN.
    div = bootstrap_mean([100.0, 110.0, "inf"])
    assert div.mean == math.inf and not math.isnan(div.lo) and div.hi == math.inf


def test_relative_delta() -> None:
    assert relative_delta_pct(90, 100) == pytest.approx(-10)
    assert relative_delta_pct(math.inf, 100) == math.inf
    assert relative_delta_pct(100, math.inf) == -100
    assert math.isnan(relative_delta_pct(math.inf, math.inf))


def test_paired_difference_has_the_right_sign_and_is_paired_by_seed() -> None:
    base = {0: 100.0, 1: 160.0, 2: 220.0}  # seeds differ a lot; the pairing must cancel that
    records = []
    for seed, p in base.items():
        records += [
            make_record("lr_stress/ref", "adamw", seed, p),
            make_record("lr_stress/ref", "lbw_guard", seed, p * 1.05),  # worse by 5 %
            make_record("lr_stress/lr1e-1", "adamw", seed, p * 2),
            make_record("lr_stress/lr1e-1", "lbw_guard", seed, p * 2 * 0.9),  # better by 10 %
            make_record("lr_stress/lr1e-2", "adamw", seed, p),
            make_record("lr_stress/lr1e-2", "lbw_guard", seed, p * (1.02 if seed else 0.97)),  # mixed
        ]
    records.reverse()  # order must not matter
    cells = {(c.scenario, c.arm): c for c in summarize(records)}
    better = cells[("lr_stress/lr1e-1", "lbw_guard")]
    assert better.delta_pct is not None
    assert better.delta_pct.mean == pytest.approx(-10) and better.delta_pct.hi == pytest.approx(-10)
    assert verdict(better) == "better"
    worse = cells[("lr_stress/ref", "lbw_guard")]
    assert worse.delta_pct is not None and worse.delta_pct.mean == pytest.approx(5) and verdict(worse) == "worse"
    assert verdict(cells[("lr_stress/lr1e-2", "lbw_guard")]) == "no clear difference"
    assert cells[("lr_stress/ref", "adamw")].delta_pct is None  # the reference arm itself
    assert cells[("lr_stress/ref", "adamw")].valid_ppl.mean == pytest.approx(160)


def test_time_to_target() -> None:
    # adamw on the reference scenario ends at 200 and 300: the target is their mean, 250.
    ref0 = make_record("f/ref", "adamw", 0, 200.0, valid=([0, 10, 20, 30], [1000.0, 400.0, 240.0, 200.0], [0, 1, 2, 3]))
    ref1 = make_record("f/ref", "adamw", 1, 300.0, valid=([0, 10, 20, 30], [1000.0, 500.0, 320.0, 300.0], [0, 1, 2, 3]))
    fast = make_record(
        "f/hot", "lbw_guard", 0, 180.0, valid=([0, 10, 20, 30], [1000.0, 250.0, 200.0, 180.0], [0, 1.5, 3, 4.5])
    )
    slow = make_record("f/hot", "adamw", 0, 900.0, valid=([0, 10, 20, 30], [1000.0, 950.0, 920.0, 900.0], [0, 1, 2, 3]))
    records = [ref0, ref1, fast, slow]
    assert scenario_targets(records, "adamw") == {"f/ref": ("f/ref", 250.0), "f/hot": ("f/ref", 250.0)}
    assert time_to_target(ref0, 250.0) == (20, 2.0)
    assert time_to_target(ref1, 250.0) is None
    assert time_to_target(fast, 250.0) == (10, 1.5)  # <= target counts
    cells = {(c.scenario, c.arm): c for c in summarize(records)}
    ref = cells[("f/ref", "adamw")]
    assert (ref.reached, ref.ttt_steps, ref.ttt_seconds, ref.target_ppl) == (1, 20.0, 2.0, 250.0)
    assert "1/2 reached" in ref.ttt_text()
    assert cells[("f/hot", "lbw_guard")].ttt_steps == 10.0
    assert cells[("f/hot", "adamw")].reached == 0 and cells[("f/hot", "adamw")].ttt_text() == "not reached (0/1)"
    # An explicit reference (scenario entry over family entry); without finite reference runs, no target.
    other = make_record("g/x", "adamw", 0, 100.0)
    assert scenario_targets([*records, other], "adamw", {"g/x": "f/hot", "f": "f/ref"})["g/x"] == ("f/hot", 900.0)
    assert "g/x" not in scenario_targets([*records, other], "adamw")


def _report_records() -> list[dict[str, Any]]:
    records = []
    for seed in range(3):
        s = 10.0 * seed
        fast_curve = ([0, 50, 100], [1000.0, 260.0 + s, 230.0 + s], [0.0, 5.0, 10.0])
        slow_curve = ([0, 50, 100], [1000.0, 600.0 + s, 250.0 + s], [0.0, 5.0, 10.0])
        bad_curve = ([0, 50, 100], [1000.0, 900.0, 800.0 + s], [0.0, 5.0, 10.0])
        records += [
            make_record("lr_stress/ref", "adamw", seed, 250.0 + s, valid=slow_curve, lr=3e-3),
            make_record("lr_stress/ref", "lbw_guard", seed, 262.0 + s, valid=slow_curve, lr=3e-3),
            make_record("lr_stress/ref", "adamw_clip1.0", seed, 251.0 + s, valid=slow_curve, lr=3e-3),
            make_record("lr_stress/lr1e-1", "adamw", seed, 800.0 + s, valid=bad_curve, lr=1e-1),
            make_record("lr_stress/lr1e-1", "lbw_guard", seed, 230.0 + s, valid=fast_curve, lr=1e-1),
            make_record("lr_stress/lr1e-1", "adamw_clip1.0", seed, 700.0 + s, valid=bad_curve, lr=1e-1),
            make_record(
                "runtime_faults/nan", "adamw", seed, math.inf if seed == 0 else 300.0,
                valid=([0, 100], [1000.0, math.inf if seed == 0 else 300.0], [0.0, 10.0]), diverged=seed == 0,
            ),
            make_record("runtime_faults/nan", "lbw_guard", seed, 250.0 + s),
        ]  # fmt: skip
    return records


def test_write_report_creates_tables_csv_and_plots(tmp_path: Path) -> None:
    files = write_report(tmp_path, _report_records(), reference={"runtime_faults": "lr_stress/ref"}, n_resamples=2000)
    md = files.report_md.read_text()
    # The first table is the paper's: the reference LR first, then the stress LR; AdamW vs guard with times.
    first_table = md[md.index("## LR stress") :].split("\n\n")[2]
    header, _, row_ref, row_stress = first_table.splitlines()[:4]
    assert "adamw ppl [95% CI]" in header and "lbw_guard ppl [95% CI]" in header and "speed-up" in header
    assert row_ref.startswith("| lr_stress/ref |") and row_stress.startswith("| lr_stress/lr1e-1 |")
    assert "only lbw_guard reached" in row_stress
    # It says plainly where the guard does not help: the reference LR, where it is 4-5 % worse.
    not_helping = md[md.index("## Where the guard does not help") : md.index("## LR stress")]
    assert "lr_stress/ref" in not_helping and "higher perplexity" in not_helping
    assert "lr_stress/lr1e-1" not in not_helping
    assert "better in 2 of 3 scenarios, worse in 1" in md
    assert "∞" in md and "1/3 div." in md  # the diverged AdamW run is visible, not averaged away
    assert md.index("## LR stress") < md.index("## runtime_faults") < md.index("## All cells")
    # Three arms: the all-arms table follows the headline one.
    assert "adamw_clip1.0 ppl [95% CI]" in md

    rows = list(csv.DictReader(files.summary_csv.open()))
    assert len(rows) == len(files.cells) == 8
    stress_guard = next(r for r in rows if r["scenario"] == "lr_stress/lr1e-1" and r["arm"] == "lbw_guard")
    assert float(stress_guard["delta_pct_ci_hi"]) < 0 and stress_guard["ttt_reached"] == "3"
    assert float(stress_guard["target_ppl"]) == pytest.approx(260.0)

    names = sorted(p.name for p in files.plots)
    assert "final_ppl__lr_stress.png" in names and "loss__lr_stress__ref.png" in names
    assert "control__runtime_faults__nan.png" in names
    for p in files.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.rglob("*.tmp")], "atomic writes leave no temporary files"
