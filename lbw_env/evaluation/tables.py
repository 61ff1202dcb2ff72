"""Tables from the cells of :mod:`lbw_env.evaluation.stats`: the report's Markdown tables, summary.csv, a
terminal table.

The headline table is the paper's (rows = scenarios, reference arm vs guard arm, paired Δ and time-to-target
speed-up); :func:`guard_findings` turns the paired verdicts into the report's plain statements of where the
guard does not help, so that such cases are listed rather than averaged away.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

from .stats import Cell, Estimate, fmt_num, verdict


def _ppl(e: Estimate) -> str:
    """A perplexity with its CI, one decimal."""
    return e.fmt("{:.1f}")


def _delta(e: Estimate | None) -> str:
    """A paired relative difference in percent, signed; a dash where there is none."""
    return "—" if e is None or e.n == 0 else e.fmt("{:+.1f}") + " %"


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


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
    """Reference scenarios first, then by learning rate, then in run order (the paper's row order)."""
    order = {name: i for i, name in enumerate(dict.fromkeys(c.scenario for c in cells))}
    by_name = {c.scenario: c for c in cells}
    refs = {c.reference_scenario for c in cells}

    def key(s: str) -> tuple[bool, float, int]:
        lr = by_name[s].lr
        return (s not in refs, lr if math.isfinite(lr) else math.inf, order[s])

    return sorted(by_name, key=key)


def headline_table(cells: Sequence[Cell], family: str, reference_arm: str, guard_arm: str) -> str | None:
    """The paper's table: rows = scenarios (the reference LR, then the stress LRs); AdamW vs guard."""
    fam = [c for c in cells if c.family == family]
    index = {(c.scenario, c.arm): c for c in fam}
    with_model = len({c.model for c in fam}) > 1
    rows = []
    for scenario in _ordered_scenarios(fam):
        ref, guard = index.get((scenario, reference_arm)), index.get((scenario, guard_arm))
        if ref is None or guard is None:
            continue
        time_ref = ref.ttt_text() if ref.target_ppl is not None else f"{ref.wall_seconds:.1f} s (whole run)"
        time_guard = guard.ttt_text() if guard.target_ppl is not None else f"{guard.wall_seconds:.1f} s (whole run)"
        rows.append(
            [
                _scenario_label(ref, with_model),
                fmt_num(ref.lr, "{:.2g}"),
                _ppl(ref.valid_ppl) + (f" ({ref.diverged}/{ref.n} div.)" if ref.diverged else ""),
                _ppl(guard.valid_ppl) + (f" ({guard.diverged}/{guard.n} div.)" if guard.diverged else ""),
                _delta(guard.delta_pct),
                time_ref,
                time_guard,
                _speedup(ref, guard),
            ]
        )
    if not rows:
        return None
    header = [
        "Scenario",
        "LR",
        f"{reference_arm} ppl [95% CI]",
        f"{guard_arm} ppl [95% CI]",
        "Δ ppl % [95% CI]",
        f"{reference_arm} time to target",
        f"{guard_arm} time to target",
        "speed-up",
    ]
    return _md_table(header, rows)


def arms_table(cells: Sequence[Cell], family: str) -> str | None:
    """Rows = scenarios, one column per arm: final validation perplexity [CI] (and divergences)."""
    fam = [c for c in cells if c.family == family]
    arms = list(dict.fromkeys(c.arm for c in fam))
    index = {(c.scenario, c.arm): c for c in fam}
    with_model = len({c.model for c in fam}) > 1
    rows = []
    for scenario in _ordered_scenarios(fam):
        any_cell = next(c for c in fam if c.scenario == scenario)
        row = [_scenario_label(any_cell, with_model), fmt_num(any_cell.lr, "{:.2g}")]
        for arm in arms:
            c = index.get((scenario, arm))
            row.append("—" if c is None else _ppl(c.valid_ppl) + (f" ({c.diverged}/{c.n} div.)" if c.diverged else ""))
        finite = [(index[(scenario, a)].valid_ppl.mean, a) for a in arms if (scenario, a) in index]
        finite = [(m, a) for m, a in finite if math.isfinite(m)]
        row.append(min(finite)[1] if finite else "—")
        rows.append(row)
    return _md_table(["Scenario", "LR", *[f"{a} ppl [95% CI]" for a in arms], "lowest mean"], rows) if rows else None


def full_table(cells: Sequence[Cell]) -> str:
    header = [
        "Scenario",
        "split",
        "Arm",
        "n",
        "valid ppl [95% CI]",
        "test ppl",
        "Δ vs ref % [95% CI]",
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
            _ppl(c.valid_ppl),
            c.test_ppl.fmt("{:.1f}", ci=False),
            _delta(c.delta_pct),
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


def guard_findings(cells: Sequence[Cell], reference_arm: str, guard_arm: str) -> tuple[list[str], list[str]]:
    """(summary lines, lines for "where the guard does not help"), from the paired comparisons."""
    index = {(c.scenario, c.arm): c for c in cells}
    counts: dict[str, int] = defaultdict(int)
    not_helping: list[str] = []
    for c in cells:
        if c.arm != guard_arm or (c.scenario, reference_arm) not in index:
            continue
        ref = index[(c.scenario, reference_arm)]
        v = verdict(c)
        counts[v] += 1
        reasons = []
        if v == "worse":
            reasons.append(f"higher perplexity than {reference_arm}: Δ {_delta(c.delta_pct)}")
        elif v == "no clear difference":
            reasons.append(f"no clear difference from {reference_arm}: Δ {_delta(c.delta_pct)} (CI includes 0)")
        elif v == "n/a":
            reasons.append(f"too few paired seeds for a CI (Δ {_delta(c.delta_pct)}, n = {c.n})")
        if c.diverged:
            reasons.append(f"diverged in {c.diverged}/{c.n} runs ({reference_arm}: {ref.diverged}/{ref.n})")
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
        if reasons:
            not_helping.append(f"- **{c.scenario}**: " + "; ".join(reasons) + ".")
    total = sum(counts.values())
    summary = []
    if total:
        summary.append(
            f"- {guard_arm} vs {reference_arm} (final validation perplexity, paired by seed, 95 % bootstrap CI): "
            f"better in {counts['better']} of {total} scenarios, worse in {counts['worse']}, "
            f"no clear difference in {counts['no clear difference']}"
            + (f", not testable (n < 2) in {counts['n/a']}" if counts["n/a"] else "")
            + "."
        )
    return summary, not_helping


# ----------------------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------------------

CSV_FIELDS = [
    "scenario",
    "family",
    "split",
    "arm",
    "governor",
    "model",
    "lr",
    "n",
    "valid_ppl_mean",
    "valid_ppl_ci_lo",
    "valid_ppl_ci_hi",
    "test_ppl_mean",
    "divergence_rate",
    "delta_pct_mean",
    "delta_pct_ci_lo",
    "delta_pct_ci_hi",
    "target_ppl",
    "ttt_reached",
    "ttt_steps_mean",
    "ttt_seconds_mean",
    "skipped_steps_mean",
    "rollbacks_mean",
    "wall_seconds_mean",
    "train_seconds_mean",
]


def summary_csv(cells: Sequence[Cell]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)

    def f(x: float | None) -> str:
        return "" if x is None else repr(float(x))

    for c in cells:
        d = c.delta_pct
        w.writerow(
            [
                c.scenario,
                c.family,
                c.split,
                c.arm,
                c.governor,
                c.model,
                f(c.lr),
                c.n,
                f(c.valid_ppl.mean),
                f(c.valid_ppl.lo),
                f(c.valid_ppl.hi),
                f(c.test_ppl.mean),
                f(c.divergence_rate),
                f(d.mean if d else None),
                f(d.lo if d else None),
                f(d.hi if d else None),
                f(c.target_ppl),
                c.reached if c.target_ppl is not None else "",
                f(c.ttt_steps),
                f(c.ttt_seconds),
                f(c.skipped_steps),
                f(c.rollbacks),
                f(c.wall_seconds),
                f(c.train_seconds),
            ]
        )
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------
# Terminal
# ----------------------------------------------------------------------------------------------------------


def short_table(cells: Sequence[Cell], max_rows: int = 40) -> str:
    """A plain-text table for the terminal."""
    lines = [f"{'scenario':<28} {'arm':<18} {'n':>2}  {'valid ppl [95% CI]':<28} {'Δ %':>8}  div"]
    for c in cells[:max_rows]:
        d = "" if c.delta_pct is None else fmt_num(c.delta_pct.mean, "{:+.1f}")
        lines.append(f"{c.scenario:<28} {c.arm:<18} {c.n:>2}  {_ppl(c.valid_ppl):<28} {d:>8}  {c.diverged}/{c.n}")
    if len(cells) > max_rows:
        lines.append(f"... {len(cells) - max_rows} more cells in report.md")
    return "\n".join(lines)
