"""Report statistics and files on synthetic records: paired differences on test perplexity, words earned by
intervals, start / tuned-AdamW yardsticks (a do-nothing governor scores 0), time-to-target, governor hashes."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lbw_env.evaluation import summarize, write_report
from lbw_env.evaluation.stats import aggregate, scenario_targets, time_to_target, tuned_references, verdict

REPO = Path(__file__).resolve().parents[1]


def make_record(
    scenario: str,
    arm: str,
    seed: int,
    final: float,
    *,
    valid: tuple[list[int], list[float], list[float]] | None = None,
    lr: float = 1e-3,
    diverged: bool = False,
    test: float | None = None,
    start: float = 1000.0,
    regime: str = "scratch",
    governor_hash: str = "",
) -> dict[str, Any]:
    """A record with the fields the report reads; ``valid`` = (steps, ppls, seconds) of the validation points.

    ``final`` is the final validation perplexity; the test perplexity is ``test`` (default ``final * 1.01``)."""
    steps, ppls, secs = valid or ([0, 100], [start, final], [0.0, 10.0])
    enc = [p if math.isfinite(p) else str(p) for p in ppls]
    test_ppl = final * 1.01 if test is None else test

    def num(x: float) -> float | str:
        return x if math.isfinite(x) else str(x)

    return {
        "suite": "synthetic",
        "scenario": scenario,
        "family": scenario.split("/")[0],
        "split": "test",
        "arm": arm,
        "governor": arm,
        "governor_hash": governor_hash,
        "seed": seed,
        "eval_every": 1,
        "trainer": {"optim": {"lr": lr}, "model": {"preset": "qwen2-tiny"}, "regime": regime,
                    "data": {"eval_blocks": 32, "seq_len": 64}},
        "final_valid_ppl": num(final),
        "final_valid_loss": num(math.log(final)),
        "initial_valid_ppl": start,
        "initial_test_ppl": start,
        "test_ppl": num(test_ppl),
        "test_loss": num(math.log(test_ppl)),
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


def test_paired_difference_is_on_test_log_perplexity_and_paired_by_seed() -> None:
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
            # Better on validation, worse on test: the verdict follows the test split.
            make_record("lr_stress/lr3e-2", "adamw", seed, p),
            make_record("lr_stress/lr3e-2", "lbw_guard", seed, p * 0.8, test=p * 1.01 * 1.1),
        ]
    records.reverse()  # order must not matter
    cells = {(c.scenario, c.arm): c for c in summarize(records)}
    better = cells[("lr_stress/lr1e-1", "lbw_guard")]
    assert better.delta is not None and better.delta.n == 3
    assert better.delta.pct.mean == pytest.approx(-10) and better.delta.pct.hi == pytest.approx(-10)
    assert verdict(better) == "better"
    worse = cells[("lr_stress/ref", "lbw_guard")]
    assert worse.delta is not None and worse.delta.pct.mean == pytest.approx(5) and verdict(worse) == "worse"
    mixed = cells[("lr_stress/lr1e-2", "lbw_guard")]
    assert verdict(mixed) == "no detectable difference" and mixed.delta is not None and mixed.delta.p > 0.05
    split = cells[("lr_stress/lr3e-2", "lbw_guard")]
    assert verdict(split) == "worse" and split.delta_valid is not None and split.delta_valid.pct.mean < 0
    assert cells[("lr_stress/ref", "adamw")].delta is None  # the reference arm itself
    # The geometric mean over seeds (the perplexity of the mean loss), not the arithmetic 160 * 1.01.
    assert cells[("lr_stress/ref", "adamw")].test_ppl.mean == pytest.approx((100 * 160 * 220) ** (1 / 3) * 1.01)
    assert cells[("lr_stress/ref", "adamw")].valid_ppl.mean == pytest.approx((100 * 160 * 220) ** (1 / 3))


def test_do_nothing_governor_scores_zero_gain_captured() -> None:
    """A governor that cuts the LR to ~0 "beats" a collapsing AdamW; against the start and tuned AdamW it
    captures no gain at all."""
    records = []
    for seed in range(4):
        records += [
            make_record("ft/ref", "adamw", seed, 200.0 + seed, test=200.0 + seed, start=250.0, regime="finetune"),
            make_record("ft/hot", "adamw", seed, 700.0 + seed, test=700.0 + seed, start=250.0, regime="finetune"),
            make_record("ft/hot", "do_nothing", seed, 250.0, test=250.0, start=250.0, regime="finetune"),
            make_record("ft/hot", "lbw_guard", seed, 210.0, test=210.0 + seed, start=250.0, regime="finetune"),
            make_record("s/ref", "adamw", seed, 400.0 + seed, start=2000.0),
            make_record("s/hot", "do_nothing", seed, 2000.0, test=2000.0, start=2000.0),
        ]
    cells = {(c.scenario, c.arm): c for c in summarize(records)}
    idle = cells[("ft/hot", "do_nothing")]
    assert verdict(idle) == "better"  # vs the collapsing AdamW on the same scenario: the misleading comparison
    assert idle.tuned is not None and idle.tuned.label == "adamw on ft/ref"
    assert idle.score_kind == "gain captured" and idle.score is not None
    assert idle.score.mean == pytest.approx(0.0, abs=1e-9)
    tuned_gain = (250.0 - 201.5) / (250.0 - 201.5)
    assert cells[("ft/ref", "adamw")].score.mean == pytest.approx(tuned_gain)  # type: ignore[union-attr]
    guard = cells[("ft/hot", "lbw_guard")].score
    assert guard is not None and 0.7 < guard.mean < 0.9  # (250 - 211.5) / (250 - 201.5)
    assert cells[("ft/hot", "adamw")].score.mean < -5  # type: ignore[union-attr]
    # From scratch: final / tuned; a do-nothing governor stays at the init, ~5x the tuned AdamW.
    scratch = cells[("s/hot", "do_nothing")]
    assert scratch.score_kind == "ratio to tuned" and scratch.score.mean == pytest.approx(2000 / (401.5 * 1.01))  # type: ignore[union-attr]
    agg = aggregate(records, tuned_references(records))
    assert agg["do_nothing"][0].mean > agg["lbw_guard"][0].mean


def test_tuned_arm_is_preferred_and_targets_are_its_worst_seed() -> None:
    records = []
    for seed, p in enumerate((200.0, 240.0)):
        records += [
            make_record("f/ref", "adamw", seed, 300.0 + seed),
            make_record("f/hot", "adamw", seed, 900.0),
            make_record("f/hot", "adamw_tuned", seed, p),
        ]
    tuned = tuned_references(records)
    assert tuned["f/hot"].label == "adamw_tuned" and tuned["f/hot"].target == 240.0
    assert tuned["f/ref"].label == "adamw on f/ref" and tuned["f/ref"].target == 301.0
    assert scenario_targets(records) == {"f/ref": ("adamw on f/ref", 301.0), "f/hot": ("adamw_tuned", 240.0)}
    cells = {(c.scenario, c.arm): c for c in summarize(records)}
    assert cells[("f/hot", "adamw_tuned")].reached == 2  # tuned AdamW reaches its worst seed's final by definition


def test_ranking_orders_every_arm_of_a_scenario_by_test_perplexity() -> None:
    from lbw_env.evaluation.tables import ranking_table

    records = []
    for seed in range(3):
        records += [
            make_record("f/ref", "adamw", seed, 300.0 + seed),
            make_record("f/hot", "adamw", seed, 900.0, diverged=seed == 0),
            make_record("f/hot", "adamw_tuned", seed, 240.0 + seed),
            make_record("f/hot", "lbw_guard", seed, 250.0 + seed),
        ]
    table = ranking_table(summarize(records), "f")
    assert table is not None
    rows = [[x.strip() for x in line.split("|")[1:-1]] for line in table.splitlines()[2:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("f/ref", "1", "adamw"),
        ("f/hot", "1", "adamw_tuned"),
        ("", "2", "lbw_guard"),
        ("", "3", "adamw"),
    ]
    assert rows[3][3].endswith("(1/3 div.)")
    assert rows[2][4].endswith("(ratio to tuned)") and rows[1][5] == "10.0 s"


def test_ratio_table_pairs_each_arm_with_tuned_adamw_by_seed() -> None:
    from lbw_env.evaluation.tables import ratio_table

    records = []
    for seed in range(4):
        noise = 1.0 + 0.1 * seed  # shared by the arms of one seed: pairing removes it
        records += [
            make_record("f/ref", "adamw", seed, 200.0 * noise, test=200.0 * noise, lr=1e-3),
            make_record("f/hot", "adamw", seed, 900.0 * noise, test=900.0 * noise * (1 - 1e-3 * seed), lr=1e-2),
            make_record("f/hot", "lbw_guard", seed, 200.0 * noise, test=206.0 * noise * (1 + 1e-3 * seed), lr=1e-2),
            make_record("f/hot", "slow", seed, 200.0 * noise, test=220.0 * noise * (1 + 1e-3 * seed), lr=1e-2),
        ]
    cells = {(c.scenario, c.arm): c for c in summarize(records)}
    assert cells[("f/ref", "adamw")].vs_tuned is None  # the yardstick's own runs
    guard = cells[("f/hot", "lbw_guard")].vs_tuned
    assert guard is not None and guard.n == 4
    assert guard.ratio.mean == pytest.approx(1.03 * (1 + 1.5e-3), rel=1e-3) and guard.ratio.hi < 1.05
    table = ratio_table(list(cells.values()), "f")
    assert table is not None
    rows = [[x.strip() for x in line.split("|")[1:-1]] for line in table.splitlines()]
    assert rows[0][-1] == "within 1.05x (whole interval)" and "adamw_tuned / tuned [95% t CI]" not in rows[0]
    ref, hot = rows[2], rows[3]
    assert ref[0] == "f/ref" and ref[2] == "1x" and ref[4] == "—"  # adamw on f/ref is the yardstick there
    assert hot[0] == "f/hot" and hot[2] == "10x" and hot[3] == "230.0 (adamw on f/ref)"
    assert hot[4].startswith("4.49 [") and hot[5].startswith("1.03 [")
    assert hot[-1] == "lbw_guard"  # slow (1.10x) is outside, adamw far outside


def test_the_lr_column_is_the_scenarios_not_that_of_an_arm_with_its_own_lr() -> None:
    """A suite may list tuned AdamW (or an LR-free optimizer at 1.0) first: the LR column must still show the LR the
    scenario configures, the one most arms ran at."""
    from lbw_env.evaluation.stats import scenario_lr
    from lbw_env.evaluation.tables import arms_table

    records = []
    for seed in range(2):
        records += [
            make_record("f/hot", "adamw_tuned", seed, 200.0, lr=2e-3),
            make_record("f/hot", "lbw_guard", seed, 210.0, lr=3e-2),
            make_record("f/hot", "prodigy", seed, 220.0, lr=1.0),
            make_record("f/hot", "adamw", seed, 900.0, lr=3e-2),
        ]
    cells = summarize(records)
    assert cells[0].arm == "adamw_tuned" and scenario_lr(cells, "f/hot") == 3e-2
    table = arms_table(cells, "f")
    assert table is not None and table.splitlines()[2].split("|")[2].strip() == "0.03"


def test_time_to_target() -> None:
    # adamw on the reference scenario ends at 200 and 300: the target is its worst seed, 300.
    ref0 = make_record("f/ref", "adamw", 0, 200.0, valid=([0, 10, 20, 30], [1000.0, 400.0, 240.0, 200.0], [0, 1, 2, 3]))
    ref1 = make_record("f/ref", "adamw", 1, 300.0, valid=([0, 10, 20, 30], [1000.0, 500.0, 320.0, 300.0], [0, 1, 2, 3]))
    fast = make_record(
        "f/hot", "lbw_guard", 0, 180.0, valid=([0, 10, 20, 30], [1000.0, 250.0, 200.0, 180.0], [0, 1.5, 3, 4.5])
    )
    slow = make_record("f/hot", "adamw", 0, 900.0, valid=([0, 10, 20, 30], [1000.0, 950.0, 920.0, 900.0], [0, 1, 2, 3]))
    records = [ref0, ref1, fast, slow]
    assert scenario_targets(records, "adamw") == {
        "f/ref": ("adamw on f/ref", 300.0),
        "f/hot": ("adamw on f/ref", 300.0),
    }
    assert time_to_target(ref0, 300.0) == (20, 2.0)
    assert time_to_target(ref1, 300.0) == (30, 3.0)
    assert time_to_target(fast, 300.0) == (10, 1.5)
    assert time_to_target(slow, 300.0) is None
    cells = {(c.scenario, c.arm): c for c in summarize(records)}
    ref = cells[("f/ref", "adamw")]
    assert (ref.reached, ref.ttt_steps, ref.ttt_seconds, ref.target_ppl) == (2, 25.0, 2.5, 300.0)
    assert cells[("f/hot", "lbw_guard")].ttt_steps == 10.0
    assert cells[("f/hot", "adamw")].reached == 0 and cells[("f/hot", "adamw")].ttt_text() == "not reached (0/1)"
    # An explicit reference (scenario entry over family entry); without finite reference runs, no target.
    other = make_record("g/x", "adamw", 0, 100.0)
    assert scenario_targets([*records, other], "adamw", {"g/x": "f/hot", "f": "f/ref"})["g/x"] == (
        "adamw on f/hot",
        900.0,
    )
    assert "g/x" not in scenario_targets([*records, other], "adamw")


def _report_records() -> list[dict[str, Any]]:
    records = []
    for seed in range(3):
        s = 10.0 * seed
        fast_curve = ([0, 50, 100], [1000.0, 260.0 + s, 230.0 + s], [0.0, 5.0, 10.0])
        slow_curve = ([0, 50, 100], [1000.0, 600.0 + s, 250.0 + s], [0.0, 5.0, 10.0])
        bad_curve = ([0, 50, 100], [1000.0, 900.0, 800.0 + s], [0.0, 5.0, 10.0])
        h = "ab12" * 16
        records += [
            make_record("lr_stress/ref", "adamw", seed, 250.0 + s, valid=slow_curve, lr=3e-3),
            make_record("lr_stress/ref", "lbw_guard", seed, 262.0 + s, valid=slow_curve, lr=3e-3, governor_hash=h),
            make_record("lr_stress/ref", "adamw_clip1.0", seed, 251.0 + s, valid=slow_curve, lr=3e-3),
            make_record("lr_stress/lr1e-1", "adamw", seed, 800.0 + s, valid=bad_curve, lr=1e-1),
            make_record("lr_stress/lr1e-1", "lbw_guard", seed, 230.0 + s, valid=fast_curve, lr=1e-1, governor_hash=h),
            make_record("lr_stress/lr1e-1", "adamw_clip1.0", seed, 700.0 + s, valid=bad_curve, lr=1e-1),
            # A case with no detectable difference: the guard is 1 % better in one seed, 1 % worse in another.
            make_record("lr_stress/lr1e-2", "adamw", seed, 300.0 + s, lr=1e-2),
            make_record("lr_stress/lr1e-2", "lbw_guard", seed, (300.0 + s) * (0.99, 1.01, 1.0)[seed], lr=1e-2,
                        governor_hash=h),
            make_record("lr_stress/lr1e-2", "adamw_clip1.0", seed, 301.0 + s, lr=1e-2),
            make_record(
                "runtime_faults/nan", "adamw", seed, math.inf if seed == 0 else 300.0,
                valid=([0, 100], [1000.0, math.inf if seed == 0 else 300.0], [0.0, 10.0]), diverged=seed == 0,
            ),
            make_record("runtime_faults/nan", "lbw_guard", seed, 250.0 + s, governor_hash=h),
        ]  # fmt: skip
    return records


def _sentences_with(md: str, words: tuple[str, ...]) -> list[str]:
    """Lines (table rows, list items) of ``md`` that use any of ``words`` (case-insensitive, whole words)."""
    pattern = re.compile(r"\b(" + "|".join(words) + r")\b", re.IGNORECASE)
    return [line for line in md.splitlines() if pattern.search(line)]


def test_words_only_where_the_interval_excludes_zero(tmp_path: Path) -> None:
    files = write_report(
        tmp_path, _report_records(), reference={"runtime_faults": "lr_stress/ref"}, plots=False, n_resamples=200
    )
    md = files.report_md.read_text()
    cells = {(c.scenario, c.arm): c for c in files.cells}
    excluded = {
        s for (s, a), c in cells.items() if a == "lbw_guard" and c.delta is not None and c.delta.diff.excludes()
    }
    assert excluded == {"lr_stress/ref", "lr_stress/lr1e-1"}
    # Every line that says better/worse/significant(ly) is about a scenario whose interval excludes 0 (or is the
    # summary count, or the method note that defines the words).
    for line in _sentences_with(md, ("better", "worse", "significant", "significantly")):
        if line.startswith("- lbw_guard vs adamw") or "appear only where" in line or "lower is better" in line:
            continue
        named = {
            s for s in ("lr_stress/ref", "lr_stress/lr1e-1", "lr_stress/lr1e-2", "runtime_faults/nan") if s in line
        }
        assert named and named <= excluded, line
    # The no-difference case says so, with n and the interval.
    flat = next(line for line in md.splitlines() if line.startswith("- **lr_stress/lr1e-2**"))
    assert "no detectable difference (n = 3, CI " in flat and "better" not in flat and "worse" not in flat
    row = next(line for line in md.splitlines() if line.startswith("| lr_stress/lr1e-2 |") and "no detectable" in line)
    assert "better" not in row and "worse" not in row
    # The better and the worse case use their word.
    assert re.search(r"\| lr_stress/lr1e-1 \|.*\| better \(n = 3\) \|", md)
    assert "worse: higher test perplexity than adamw" in md
    assert "better in 1 of 4 scenarios, worse in 1, no detectable difference in 1, not testable in 1" in md
    # The diverged AdamW seed makes the pair untestable, and the divergence is shown, not averaged away.
    assert "not testable: a run diverged in one arm only" in md and "1/3 div." in md and "∞" in md


def test_write_report_creates_tables_csv_and_plots(tmp_path: Path) -> None:
    files = write_report(tmp_path, _report_records(), reference={"runtime_faults": "lr_stress/ref"}, n_resamples=200)
    md = files.report_md.read_text()
    # The first table is the headline: the reference LR first, then the stress LRs; test perplexity.
    first_table = md[md.index("## LR stress") :].split("\n\n")[2]
    header, _, row_ref, *rows = first_table.splitlines()
    assert "adamw test ppl [95% t CI]" in header and "lbw_guard test ppl [95% t CI]" in header
    assert "start ppl" in header and "tuned AdamW test ppl" in header and "p (paired t)" in header
    assert row_ref.startswith("| lr_stress/ref |") and rows[-1].startswith("| lr_stress/lr1e-1 |")
    assert "only lbw_guard reached" in md  # the time-to-target table
    # It says plainly where the guard does not help: the reference LR, where it is 4-5 % worse.
    not_helping = md[md.index("## Where the guard does not help") : md.index("## LR stress")]
    assert "lr_stress/ref" in not_helping and "higher test perplexity" in not_helping
    assert "lr_stress/lr1e-1" not in not_helping
    assert md.index("## LR stress") < md.index("## runtime_faults") < md.index("## All cells")
    assert "adamw_clip1.0 test ppl [95% t CI]" in md  # three arms: the all-arms table follows
    assert "IQM of test ppl / tuned AdamW" in md and "gain captured" in md
    assert f"`{'ab12' * 16}`" in md  # the guard's config hash
    assert "Student-t" in md and "Wilcoxon" in md  # the method note names the interval and the test

    rows_csv = list(csv.DictReader(files.summary_csv.open()))
    assert len(rows_csv) == len(files.cells) == 11
    stress_guard = next(r for r in rows_csv if r["scenario"] == "lr_stress/lr1e-1" and r["arm"] == "lbw_guard")
    assert float(stress_guard["delta_test_pct_ci_hi"]) < 0 and stress_guard["ttt_reached"] == "3"
    assert stress_guard["verdict"] == "better" and stress_guard["governor_hash"] == "ab12" * 16
    assert float(stress_guard["target_ppl"]) == pytest.approx(270.0)  # adamw's worst seed on lr_stress/ref

    names = sorted(p.name for p in files.plots)
    assert "final_ppl__lr_stress.png" in names and "loss__lr_stress__ref.png" in names
    assert "control__runtime_faults__nan.png" in names and "performance_profile.png" in names
    for p in files.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.rglob("*.tmp")], "atomic writes leave no temporary files"


def test_perplexity_intervals_stay_positive_when_one_seed_blows_up() -> None:
    """Measured on runtime_faults/shock300_b1: AdamW's seeds from 3e6 to 3e11 gave the arithmetic t interval
    [-4e10, 1e11]. The cell's interval is on the log scale: positive, around the geometric mean."""
    blown = [3.4e6, 4.1e6, 1.7e7, 2.1e7, 2.3e7, 3.7e7, 2.3e8, 2.7e9, 1.7e10, 3.3e11]
    records = [make_record("x/shock", "adamw", seed, p) for seed, p in enumerate(blown)]
    cell = summarize(records)[0]
    assert 0 < cell.test_ppl.lo < cell.test_ppl.mean < cell.test_ppl.hi
    assert cell.test_ppl.mean == pytest.approx(float(np.exp(np.mean(np.log(blown)))) * 1.01, rel=1e-9)


def test_paired_arms_script_per_scenario_and_pooled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """scripts/paired_arms.py: arm-vs-arm paired differences, per scenario and pooled over one split."""
    spec = importlib.util.spec_from_file_location("paired_arms", REPO / "scripts" / "paired_arms.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    records = []
    for seed, p in enumerate((100.0, 160.0, 220.0)):
        records += [make_record("a/x", "guard", seed, p), make_record("a/x", "learned", seed, p * 0.98)]
        records += [make_record("a/y", "guard", seed, p), make_record("a/y", "learned", seed, p * 1.04)]
    for r in records:
        r["split"] = "train" if r["scenario"] == "a/y" else "test"
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert module.main([str(path), "learned", "guard", "--split", "test"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("a/x [test]: -2.00 [-2.00, -2.00] %") and out[1].startswith("a/y [train]: +4.00")
    assert out[2].startswith("pooled over test scenarios: -2.00") and "n = 3" in out[2]
    assert module.main([str(path), "learned", "guard", "--split", "test", "--detect", "1"]) == 0
    out = capsys.readouterr().out.splitlines()  # every pair differs alike: no spread, two seeds suffice
    assert out[0].endswith("; ±1 % needs ~2 seeds") and out[2].endswith("; ±1 % needs ~2 seeds"), out
    assert module.main([str(path), "learned", "nobody"]) == 1
    assert capsys.readouterr().err == "no paired runs of learned and nobody\n"
    with pytest.raises(SystemExit) as exit_:  # a missing file: one line naming it, status 2
        module.main([str(tmp_path / "nowhere"), "learned", "guard"])
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("paired_arms.py: error: records ")
    # --at-step: the validation curves at one step instead of the final test perplexity.
    for r in records:
        r["curves"] = {"valid": {"step": [0, 8], "ppl": [500.0, r["test_ppl"] * (1.5 if r["arm"] == "learned" else 1)]}}
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert module.main([str(path), "learned", "guard", "--split", "test", "--at-step", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("a/x [test]: +47.00 [+47.00, +47.00] %"), out  # 0.98 x 1.5
    assert out[2].startswith("pooled over test scenarios, validation at step 8: +47.00"), out
    assert module.main([str(path), "learned", "guard", "--at-step", "4"]) == 2
    assert "--at-step 4: not a validation step of the records (they have [0, 8])" in capsys.readouterr().err
    # Runs that start from another model (a base rebuilt elsewhere) are not pairs: said, and left out.
    for r in records:
        if r["arm"] == "learned" and r["scenario"] == "a/x":
            r["initial_test_ppl"] *= 1.004
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert module.main([str(path), "learned", "guard", "--split", "test"]) == 1  # a/x was its only test scenario
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "a/x [test]: not paired: the arms start from other models (0.40% apart)", out


def test_arms_from_another_start_are_not_paired_and_say_so() -> None:
    """A cell whose runs started from another model than the reference's and tuned AdamW's (0.43 % apart: a base
    checkpoint rebuilt on another machine) gets no paired difference, score or target; drift under the tolerance
    (2e-6, library versions on one CPU kind) does not change anything."""
    from lbw_env.evaluation.stats import START_TOLERANCE
    from lbw_env.evaluation.tables import arms_table, finding

    def records(start_of_clip: float) -> list[dict[str, Any]]:
        out = []
        for seed in range(3):
            out += [
                make_record("f/hot", "adamw", seed, 900.0 + seed, regime="finetune", start=1000.0),
                make_record("f/hot", "adamw_tuned", seed, 240.0 + seed, regime="finetune", start=1000.0),
                make_record("f/hot", "clip", seed, 250.0 + 3 * seed, regime="finetune", start=start_of_clip),
            ]
        return out

    near = {(c.scenario, c.arm): c for c in summarize(records(1000.002))}[("f/hot", "clip")]
    assert 0 < near.other_start < START_TOLERANCE and near.delta is not None and near.vs_tuned is not None
    assert near.score is not None and near.target_ppl is not None
    cells = summarize(records(1004.3))
    far = {(c.scenario, c.arm): c for c in cells}[("f/hot", "clip")]
    assert far.other_start == pytest.approx(0.0043)
    assert far.delta is None and far.delta_valid is None and far.vs_tuned is None
    assert far.score is None and far.target_ppl is None and far.tuned is not None
    assert finding(far, "adamw") == "not paired: started from another model than adamw (start ppl 0.43% apart)"
    table = arms_table(cells, "f")
    assert table is not None and "(another start, 0.43% apart: not paired)" in table


def test_summary_csv_check_tolerates_last_bit_differences_only() -> None:
    from lbw_env.evaluation.readme import _same_csv

    old = "a,b,c\nx,170.38825890212004,nan\n"
    assert _same_csv(old, "a,b,c\nx,170.38825890212001,nan\n")  # numpy's exp on AVX2 vs AVX512
    assert not _same_csv(old, "a,b,c\nx,170.3883,nan\n")
    assert not _same_csv(old, "a,b,c\ny,170.38825890212004,nan\n")
    assert not _same_csv(old, "a,b,c\nx,170.38825890212004,nan,1\n")
