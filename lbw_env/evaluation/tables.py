"""Tables from the cells of :mod:`lbw_env.evaluation.stats`: the report's Markdown tables, summary.csv, a
terminal table.

Words are earned: :func:`finding` says ``better`` or ``worse`` only where the stated interval (the paired t
interval of the test-perplexity difference) excludes 0, and ``no detectable difference (n = .., CI ..)``
otherwise; no other table text uses those words. :func:`guard_findings` turns the paired comparisons into the
report's plain statements of where the guard does not help, so that such cases are listed rather than averaged.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from .intervals import Estimate, Paired, fmt_num
from .stats import HEADLINE, START_TOLERANCE, Cell, scenario_lr, verdict


def _ppl(e: Estimate | None) -> str:
    """A perplexity with its CI, one decimal."""
    return "—" if e is None else e.fmt("{:.1f}")


def _score(e: Estimate | None) -> str:
    """A gain captured or a ratio to tuned AdamW with its CI, two decimals."""
    return "—" if e is None else e.fmt("{:.2f}")


def _pct(p: Paired | None, bca: bool = False) -> str:
    """A paired difference as a signed percentage of the reference perplexity, with its interval."""
    e = None if p is None else (p.bca_pct if bca else p.pct)
    return "—" if e is None or e.n == 0 else e.fmt("{:+.1f}") + " %"


def _p(p: Paired | None) -> str:
    return "—" if p is None or math.isnan(p.p) else (f"{p.p:.3f}" if p.p >= 0.001 else "<0.001")


def _div(c: Cell) -> str:
    """Divergences, and a start from another model than the arms it is compared with (nothing paired)."""
    other = f" (another start, {c.other_start:.2%} apart: not paired)" if c.other_start > START_TOLERANCE else ""
    return (f" ({c.diverged}/{c.n} div.)" if c.diverged else "") + other


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def finding(cell: Cell, reference_arm: str) -> str:
    """The paired comparison in words, earned by the interval (see the module docstring)."""
    d = cell.delta
    v = verdict(cell)
    if d is None and cell.other_start > START_TOLERANCE:
        return f"not paired: started from another model than {reference_arm} (start ppl {cell.other_start:.2%} apart)"
    if d is None:
        return f"no paired {reference_arm} runs"
    ci = f"Δ {_pct(d)}, paired t-test p = {_p(d)}, n = {d.n}"
    if v == "better":
        return f"better: lower test perplexity than {reference_arm} ({ci})"
    if v == "worse":
        return f"worse: higher test perplexity than {reference_arm} ({ci})"
    if v == "no detectable difference":
        return f"no detectable difference (n = {d.n}, CI {_pct(d)})"
    if d.n < 2:
        return f"not testable: n = {d.n} paired seed(s), no interval"
    return f"not testable: a run diverged in one arm only (Δ {_pct(d)}, n = {d.n})"


def _speedup(ref: Cell, guard: Cell) -> str:
    """Reference time-to-target / guard time-to-target (means over the seeds that reached it)."""
    if ref.target_ppl is None:
        return "—"
    if ref.reached == 0 and guard.reached == 0:
        return "neither reached"
    if ref.reached == 0:
        return f"only {guard.arm} reached"
    if guard.reached == 0:
        return f"only {ref.arm} reached"
    if not ref.ttt_seconds or not guard.ttt_seconds:
        return "—"
    text = f"×{ref.ttt_seconds / guard.ttt_seconds:.2f}"
    if ref.reached < ref.n or guard.reached < guard.n:
        text += f" (reached {ref.reached}/{ref.n} vs {guard.reached}/{guard.n})"
    return text


def _scenario_label(cell: Cell, with_model: bool) -> str:
    return f"{cell.scenario} ({cell.model})" if with_model and cell.model else cell.scenario


def _ordered_scenarios(cells: Sequence[Cell]) -> list[str]:
    """Scenarios that are some scenario's tuned yardstick first, then by learning rate, then in run order."""
    order = {name: i for i, name in enumerate(dict.fromkeys(c.scenario for c in cells))}
    by_name: dict[str, Cell] = {}
    for c in cells:  # the first arm's cell, as the tables' LR column: later arms may set their own LR (prodigy: 1.0)
        by_name.setdefault(c.scenario, c)
    refs = {c.tuned.scenario for c in cells if c.tuned is not None}

    def key(s: str) -> tuple[bool, float, int]:
        lr = by_name[s].lr
        return (s not in refs, lr if math.isfinite(lr) else math.inf, order[s])

    return sorted(by_name, key=key)


def _family(cells: Sequence[Cell], family: str) -> tuple[list[Cell], dict[tuple[str, str], Cell], bool, list[str]]:
    fam = [c for c in cells if c.family == family]
    index = {(c.scenario, c.arm): c for c in fam}
    return fam, index, len({c.model for c in fam}) > 1, list(dict.fromkeys(c.arm for c in fam))


def _tuned_text(c: Cell) -> str:
    """The tuned AdamW's mean final test perplexity, and which runs it is."""
    t = c.tuned
    return "—" if t is None else f"{fmt_num(t.ppl.get(HEADLINE, math.nan))} ({t.label})"


def _start_text(c: Cell) -> str:
    """The untouched start's mean perplexity (test; validation for records that predate ``initial_test_ppl``)."""
    if c.start_ppl is None:
        return "—"
    return fmt_num(c.start_ppl.mean) + ("" if c.score_split == HEADLINE else " (valid)")


def short_finding(cell: Cell) -> str:
    """:func:`finding` for a table cell whose neighbours show Δ, its interval and p."""
    v = verdict(cell)
    n = 0 if cell.delta is None else cell.delta.n
    if cell.delta is None:
        return "not paired (another start)" if cell.other_start > START_TOLERANCE else "—"
    return f"{'not testable' if v == 'n/a' else v} (n = {n})"


def headline_table(cells: Sequence[Cell], family: str, reference_arm: str, guard_arm: str) -> str | None:
    """The headline: final TEST perplexity, reference arm vs guard, with start and tuned AdamW beside them."""
    fam, index, with_model, _ = _family(cells, family)
    rows = []
    for scenario in _ordered_scenarios(fam):
        ref, guard = index.get((scenario, reference_arm)), index.get((scenario, guard_arm))
        if ref is None or guard is None:
            continue
        rows.append(
            [
                _scenario_label(ref, with_model),
                fmt_num(ref.lr, "{:.2g}"),
                _start_text(ref),
                _tuned_text(ref),
                _ppl(ref.test_ppl) + _div(ref),
                _ppl(guard.test_ppl) + _div(guard),
                _pct(guard.delta),
                _p(guard.delta),
                short_finding(guard),
            ]
        )
    if not rows:
        return None
    header = [
        "Scenario",
        "LR",
        "start ppl",
        "tuned AdamW test ppl",
        f"{reference_arm} test ppl [95% t CI]",
        f"{guard_arm} test ppl [95% t CI]",
        "Δ test ppl % [95% t CI]",
        "p (paired t)",
        "finding",
    ]
    return _md_table(header, rows)


def yardstick_table(cells: Sequence[Cell], family: str, reference_arm: str, guard_arm: str) -> str | None:
    """Per scenario: what a do-nothing governor cannot win — gain captured (fine-tune) or final / tuned AdamW
    (scratch) per arm — and time to the tuned AdamW's worst-seed target, per arm."""
    fam, index, with_model, arms = _family(cells, family)
    rows = []
    for scenario in _ordered_scenarios(fam):
        any_cell = next(c for c in fam if c.scenario == scenario)
        if any_cell.tuned is None:
            continue
        row = [_scenario_label(any_cell, with_model), any_cell.score_kind + f" ({any_cell.score_split})"]
        row += [_score(index[(scenario, a)].score) if (scenario, a) in index else "—" for a in arms]
        target = any_cell.target_ppl
        row.append("—" if target is None else f"{target:.1f}")
        row += [index[(scenario, a)].ttt_text() if (scenario, a) in index else "—" for a in arms]
        ref, guard = index.get((scenario, reference_arm)), index.get((scenario, guard_arm))
        row.append(_speedup(ref, guard) if ref is not None and guard is not None else "—")
        rows.append(row)
    if not rows:
        return None
    header = [
        "Scenario",
        "score",
        *[f"{a} score [95% t CI]" for a in arms],
        "target (valid ppl)",
        *[f"{a} time to target" for a in arms],
        "speed-up",
    ]
    return _md_table(header, rows)


def arms_table(cells: Sequence[Cell], family: str) -> str | None:
    """Rows = scenarios, one column per arm: final test perplexity [CI] (and divergences)."""
    fam, index, with_model, arms = _family(cells, family)
    rows = []
    for scenario in _ordered_scenarios(fam):
        any_cell = next(c for c in fam if c.scenario == scenario)
        row = [_scenario_label(any_cell, with_model), fmt_num(scenario_lr(fam, scenario), "{:.2g}")]
        for arm in arms:
            c = index.get((scenario, arm))
            row.append("—" if c is None else _ppl(c.test_ppl) + _div(c))
        finite = [(index[(scenario, a)].test_ppl.mean, a) for a in arms if (scenario, a) in index]
        finite = [(m, a) for m, a in finite if math.isfinite(m)]
        row.append(min(finite)[1] if finite else "—")
        rows.append(row)
    header = ["Scenario", "LR", *[f"{a} test ppl [95% t CI]" for a in arms], "lowest mean"]
    return _md_table(header, rows) if rows else None


def ranking_table(cells: Sequence[Cell], family: str) -> str | None:
    """Per scenario, every arm ranked by its geometric-mean final test perplexity (best first; a diverged run
    counts in its arm's mean), with its yardstick score and its mean wall time per run. A rank is an ordering of
    means, not a finding: the arms' intervals, in the same row, say which differences are real."""
    fam, index, with_model, arms = _family(cells, family)
    rows = []
    for scenario in _ordered_scenarios(fam):
        ranked = sorted(
            (index[(scenario, a)] for a in arms if (scenario, a) in index),
            key=lambda c: (not math.isfinite(c.test_ppl.mean), c.test_ppl.mean),
        )
        for rank, c in enumerate(ranked, 1):
            label = _scenario_label(c, with_model) if rank == 1 else ""
            score = "—" if c.score is None else f"{_score(c.score)} ({c.score_kind})"
            rows.append([label, str(rank), c.arm, _ppl(c.test_ppl) + _div(c), score, f"{c.wall_seconds:.1f} s"])
    header = ["Scenario", "rank", "arm", "test ppl [95% t CI]", "score [95% t CI]", "wall time / run"]
    return _md_table(header, rows) if rows else None


def ratio_table(cells: Sequence[Cell], family: str, limit: float = 1.05) -> str | None:
    """Rows = scenarios, one column per arm: its final test perplexity over tuned AdamW's, paired by seed (the
    geometric-mean ratio with the t interval of the per-seed log ratios), and the LR as a multiple of the tuned
    runs' LR. The last column lists the arms whose whole interval is at or below ``limit`` (the goal "within
    1.05x of tuned AdamW whatever the configured LR"), so a mean under the line with an interval over it is
    not counted."""
    fam, index, with_model, arms = _family(cells, family)
    arms = [a for a in arms if any(index[k].vs_tuned is not None for k in index if k[1] == a)]
    rows = []
    for scenario in _ordered_scenarios(fam):
        any_cell = next(c for c in fam if c.scenario == scenario)
        t = any_cell.tuned
        if t is None:
            continue
        lr = scenario_lr(fam, scenario)
        row = [
            _scenario_label(any_cell, with_model),
            fmt_num(lr, "{:.2g}"),
            fmt_num(lr / t.lr, "{:.3g}") + "x",
            _tuned_text(any_cell),
        ]
        within = []
        for arm in arms:
            c = index.get((scenario, arm))
            p = None if c is None else c.vs_tuned
            row.append("—" if p is None else p.ratio.fmt("{:.2f}"))
            if p is not None and p.ratio.has_ci and p.ratio.hi <= limit:
                within.append(arm)
        row.append(", ".join(within) or "none")
        rows.append(row)
    header = ["Scenario", "LR", "x tuned LR", "tuned AdamW test ppl", *[f"{a} / tuned [95% t CI]" for a in arms]]
    return _md_table([*header, f"within {limit:g}x (whole interval)"], rows) if rows else None


def aggregate_table(agg: Mapping[str, tuple[Estimate, Mapping[str, Sequence[float]]]]) -> str | None:
    """Per arm: IQM of final test ppl / tuned AdamW over all runs, stratified bootstrap CI."""
    rows = [[arm, est.fmt("{:.3f}"), str(est.n), str(len(by_s))] for arm, (est, by_s) in agg.items() if est.n]
    header = ["Arm", "IQM of test ppl / tuned AdamW [95% stratified bootstrap CI]", "runs", "scenarios"]
    return _md_table(header, rows) if rows else None


def governors_table(cells: Sequence[Cell]) -> str:
    """Which governor each arm ran, and the hash of its config or manifest (what exactly was evaluated)."""
    seen: dict[str, Cell] = {}
    for c in cells:
        seen.setdefault(c.arm, c)
    rows = [[c.arm, f"`{c.governor}`", f"`{c.governor_hash}`" if c.governor_hash else "—"] for c in seen.values()]
    return _md_table(["Arm", "governor", "config/manifest sha256"], rows)


def full_table(cells: Sequence[Cell]) -> str:
    header = [
        "Scenario",
        "split",
        "Arm",
        "n",
        "test ppl [95% t CI]",
        "valid ppl [95% t CI]",
        "Δ test % [95% t CI]",
        "p",
        "Δ test % [BCa, n≥10]",
        "Δ valid % [95% t CI]",
        "score [95% t CI]",
        "diverged",
        "skipped steps",
        "rollbacks",
        "wall s",
        "train s",
        "time to target",
    ]
    rows = [
        [
            c.scenario,
            c.split,
            c.arm,
            str(c.n),
            _ppl(c.test_ppl),
            _ppl(c.valid_ppl),
            _pct(c.delta),
            _p(c.delta),
            _pct(c.delta, bca=True),
            _pct(c.delta_valid),
            "—" if c.score is None else f"{_score(c.score)} ({c.score_kind})",
            f"{c.diverged}/{c.n}",
            f"{c.skipped_steps:.1f}",
            f"{c.rollbacks:.1f}",
            f"{c.wall_seconds:.1f}",
            f"{c.train_seconds:.1f}",
            c.ttt_text(),
        ]
        for c in cells
    ]
    return _md_table(header, rows)


def _not_helping_reasons(c: Cell, ref: Cell, reference_arm: str) -> list[str]:
    v = verdict(c)
    reasons = [] if v == "better" else [finding(c, reference_arm)]
    if c.diverged:
        reasons.append(f"diverged in {c.diverged}/{c.n} runs ({reference_arm}: {ref.diverged}/{ref.n})")
    if c.score is not None and c.score_kind == "gain captured" and c.score.has_ci and c.score.hi < 0.5:
        reasons.append(f"gain captured {_score(c.score)}: under half of what tuned AdamW gains")
    if c.target_ppl is not None and c.reached < ref.reached:
        reasons.append(f"reached the target in fewer runs ({c.reached}/{c.n} vs {ref.reached}/{ref.n})")
    elif (
        c.target_ppl is not None
        and c.reached == c.n == ref.reached
        and c.ttt_seconds is not None
        and ref.ttt_seconds is not None
        and c.ttt_seconds > ref.ttt_seconds
    ):
        reasons.append(f"reached the target later ({c.ttt_seconds:.1f} s vs {ref.ttt_seconds:.1f} s)")
    return reasons


def guard_findings(cells: Sequence[Cell], reference_arm: str, guard_arm: str) -> tuple[list[str], list[str]]:
    """(summary lines, lines for "where the guard does not help"), from the paired comparisons."""
    index = {(c.scenario, c.arm): c for c in cells}
    counts: dict[str, int] = defaultdict(int)
    not_helping: list[str] = []
    for c in cells:
        if c.arm != guard_arm or (c.scenario, reference_arm) not in index:
            continue
        counts[verdict(c)] += 1
        reasons = _not_helping_reasons(c, index[(c.scenario, reference_arm)], reference_arm)
        if reasons:
            not_helping.append(f"- **{c.scenario}**: " + "; ".join(reasons) + ".")
    total = sum(counts.values())
    summary = []
    if total:
        summary.append(
            f"- {guard_arm} vs {reference_arm} (final test perplexity, paired by seed, 95 % t interval of the "
            f"log-perplexity difference): better in {counts['better']} of {total} scenarios, worse in "
            f"{counts['worse']}, no detectable difference in {counts['no detectable difference']}"
            + (f", not testable in {counts['n/a']}" if counts["n/a"] else "")
            + "."
        )
    return summary, not_helping


# ----------------------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------------------

CSV_FIELDS = [
    "scenario", "family", "split", "arm", "governor", "governor_hash", "model", "regime", "lr", "n",
    "test_ppl_mean", "test_ppl_ci_lo", "test_ppl_ci_hi", "valid_ppl_mean", "valid_ppl_ci_lo", "valid_ppl_ci_hi",
    "divergence_rate",
    "delta_test_pct_mean", "delta_test_pct_ci_lo", "delta_test_pct_ci_hi", "delta_test_p",
    "delta_test_pct_bca_lo", "delta_test_pct_bca_hi", "verdict",
    "delta_valid_pct_mean", "delta_valid_pct_ci_lo", "delta_valid_pct_ci_hi", "delta_valid_p",
    "start_ppl_mean", "tuned_label", "tuned_ppl", "score_kind", "score_split", "score_mean", "score_ci_lo",
    "score_ci_hi",
    "target_ppl", "ttt_reached", "ttt_steps_mean", "ttt_seconds_mean",
    "skipped_steps_mean", "rollbacks_mean", "wall_seconds_mean", "train_seconds_mean",
]  # fmt: skip


def _f(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def _est(e: Estimate | None) -> list[str]:
    return ["", "", ""] if e is None else [_f(e.mean), _f(e.lo), _f(e.hi)]


def _csv_row(c: Cell) -> list[object]:
    d, dv, bca = c.delta, c.delta_valid, (c.delta.bca_pct if c.delta else None)
    return [
        c.scenario, c.family, c.split, c.arm, c.governor, c.governor_hash, c.model, c.regime, _f(c.lr), c.n,
        *_est(c.test_ppl), *_est(c.valid_ppl), _f(c.divergence_rate),
        *_est(d.pct if d else None), _f(d.p if d else None), *(_est(bca)[1:]), verdict(c),
        *_est(dv.pct if dv else None), _f(dv.p if dv else None),
        _f(c.start_ppl.mean if c.start_ppl else None), c.tuned.label if c.tuned else "",
        _f(c.tuned.ppl.get(c.score_split) if c.tuned else None), c.score_kind, c.score_split, *_est(c.score),
        _f(c.target_ppl), c.reached if c.target_ppl is not None else "", _f(c.ttt_steps), _f(c.ttt_seconds),
        _f(c.skipped_steps), _f(c.rollbacks), _f(c.wall_seconds), _f(c.train_seconds),
    ]  # fmt: skip


def summary_csv(cells: Sequence[Cell]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for c in cells:
        w.writerow(_csv_row(c))
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------
# Terminal
# ----------------------------------------------------------------------------------------------------------


def short_table(cells: Sequence[Cell], max_rows: int = 40) -> str:
    """A plain-text table for the terminal: test perplexity, paired Δ and its verdict."""
    lines = [f"{'scenario':<28} {'arm':<18} {'n':>2}  {'test ppl [95% t CI]':<28} {'Δ %':>8}  {'div':<5} verdict"]
    for c in cells[:max_rows]:
        d = "" if c.delta is None else fmt_num(c.delta.pct.mean, "{:+.1f}")
        v = "" if c.delta is None else verdict(c)
        lines.append(
            f"{c.scenario:<28} {c.arm:<18} {c.n:>2}  {_ppl(c.test_ppl):<28} {d:>8}  {f'{c.diverged}/{c.n}':<5} {v}"
        )
    if len(cells) > max_rows:
        lines.append(f"... {len(cells) - max_rows} more cells in report.md")
    return "\n".join(lines)
