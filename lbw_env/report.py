"""Statistics, tables and plots from evaluation records: records.jsonl -> report.md, summary.csv, plots/.

Per cell (scenario x arm) over seeds: the mean final validation perplexity with a 95 % percentile bootstrap CI
(10 000 resamples, seeded numpy Generator), test perplexity, divergence rate and times. Against the reference
arm (plain AdamW by default), paired by scenario and seed (arms share initialisation, batches and faults): the
mean relative perplexity difference with its bootstrap CI. Time-to-target: steps and seconds until the
validation perplexity first reaches the reference arm's mean final perplexity on the scenario's reference
scenario (the sane-LR run); it is read off the validation points the records carry (``eval_every``), so its
resolution is one evaluation interval, and a run that never gets there is reported as *not reached*.

The report is written to say plainly where the guard does not help: every scenario in which its paired
difference is not significantly negative, or in which it diverged or reached the target later, is listed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .cache import atomic_path, atomic_write_text

N_RESAMPLES = 10_000
LEVEL = 0.95
PRIORITY_FAMILIES = ("lr_stress", "clipping", "model_size")
"""Families that get their own section first, in this order (the paper's tables); others follow generically."""


# ----------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------


def as_float(x: Any) -> float:
    """A record's number: floats, ints, and the strings ``"inf"``/``"nan"`` that encode non-finite values."""
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A mean over seeds with a percentile bootstrap confidence interval."""

    mean: float
    lo: float
    hi: float
    n: int

    def fmt(self, fmt: str = "{:.1f}", ci: bool = True) -> str:
        if self.n == 0:
            return "—"
        text = _num(self.mean, fmt)
        if ci and self.n > 1:
            text += f" [{_num(self.lo, fmt)}, {_num(self.hi, fmt)}]"
        return text


def _num(x: float, fmt: str = "{:.1f}") -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return fmt.format(x)


def bootstrap_mean(
    values: Iterable[float], n_resamples: int = N_RESAMPLES, level: float = LEVEL, seed: int = 0
) -> Estimate:
    """Mean of ``values`` with a percentile bootstrap CI (resampling the values with replacement).

    Non-finite values (a diverged run's infinite perplexity) are kept: they make the mean and the upper bound
    infinite, which is the honest answer; the order statistics are then taken without interpolation so that
    ``inf - inf`` never turns a bound into NaN. NaNs are dropped.
    """
    x = np.asarray([v for v in (as_float(v) for v in values) if not math.isnan(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    with np.errstate(invalid="ignore", over="ignore"):
        mean = float(np.mean(x))
        if n == 1:
            return Estimate(mean, mean, mean, 1)
        rng = np.random.default_rng(seed)
        means = x[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)
    alpha = (1 - level) / 2
    method = "linear" if np.isfinite(means).all() else "nearest"
    lo, hi = np.quantile(means, [alpha, 1 - alpha], method=method)
    return Estimate(mean, float(lo), float(hi), n)


def relative_delta_pct(value: float, reference: float) -> float:
    """``100 * (value / reference - 1)``; NaN when both are infinite (both diverged: no comparison)."""
    if math.isinf(value) and math.isinf(reference):
        return math.nan
    if math.isinf(reference):
        return -100.0
    if math.isinf(value):
        return math.inf
    return 100.0 * (value / reference - 1.0)


def time_to_target(record: Mapping[str, Any], target: float) -> tuple[int, float] | None:
    """``(steps, seconds)`` at the first validation point with perplexity <= ``target``, or None (not reached).

    Seconds are the episode's wall clock without the evaluations themselves (``timing.valid_seconds``).
    """
    valid = (record.get("curves") or {}).get("valid") or {}
    steps = valid.get("step") or []
    ppls = valid.get("ppl") or []
    seconds = (record.get("timing") or {}).get("valid_seconds") or [math.nan] * len(steps)
    for step, ppl, sec in zip(steps, ppls, seconds):
        p = as_float(ppl)
        if math.isfinite(p) and p <= target:
            return int(step), as_float(sec)
    return None


# ----------------------------------------------------------------------------------------------------------
# Cells
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Cell:
    """The statistics of one (scenario, arm) over its seeds."""

    scenario: str
    family: str
    split: str
    arm: str
    governor: str
    lr: float
    model: str
    n: int
    valid_ppl: Estimate
    test_ppl: Estimate
    diverged: int
    """Runs that diverged (the episode terminated)."""
    wall_seconds: float
    train_seconds: float
    skipped_steps: float
    rollbacks: float
    delta_pct: Estimate | None = None
    """Paired relative difference of the final validation perplexity vs the reference arm (%); None for the
    reference arm itself or when it has no run of this scenario."""
    reference_scenario: str | None = None
    """The scenario whose reference-arm runs set the target."""
    target_ppl: float | None = None
    """The time-to-target threshold (None: no reference run, so no target)."""
    ttt_steps: float | None = None
    """Mean steps to the target over the seeds that reached it."""
    ttt_seconds: float | None = None
    """Mean seconds to the target over the seeds that reached it."""
    reached: int = 0
    """Seeds that reached the target."""
    seeds: list[int] = dataclasses.field(default_factory=list)

    @property
    def divergence_rate(self) -> float:
        return self.diverged / self.n if self.n else math.nan

    def ttt_text(self) -> str:
        if self.target_ppl is None:
            return "no target"
        if self.reached == 0:
            return f"not reached (0/{self.n})"
        text = f"{self.ttt_seconds:.1f} s, {self.ttt_steps:.0f} steps"
        return text if self.reached == self.n else f"{text} ({self.reached}/{self.n} reached)"


def _get(record: Mapping[str, Any], *path: str, default: Any = None) -> Any:
    node: Any = record
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            return default
        node = node[p]
    return node


def reference_of(scenario: str, reference: Mapping[str, str], names: Iterable[str]) -> str | None:
    """The time-to-target reference of ``scenario``: its own entry in ``reference``, else its family's, else
    ``<family>/ref`` if ``names`` has it, else None."""
    family = scenario.split("/", 1)[0]
    if scenario in reference:
        return reference[scenario]
    if family in reference:
        return reference[family]
    return f"{family}/ref" if f"{family}/ref" in set(names) else None


def scenario_targets(
    records: Sequence[Mapping[str, Any]], reference_arm: str, reference: Mapping[str, str] | None = None
) -> dict[str, tuple[str, float]]:
    """Per scenario: ``(reference scenario, target)``, the target being the reference arm's mean final
    validation perplexity on the reference scenario. Scenarios whose reference has no finite runs of the
    reference arm get no target."""
    reference = reference or {}
    names = list(dict.fromkeys(r["scenario"] for r in records))
    ref_ppl: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r["arm"] == reference_arm:
            ref_ppl[r["scenario"]].append(as_float(r["final_valid_ppl"]))
    out: dict[str, tuple[str, float]] = {}
    for scenario in names:
        ref = reference_of(scenario, reference, names)
        ppls = ref_ppl.get(ref or "", [])
        if ref is not None and ppls and all(math.isfinite(p) for p in ppls):
            out[scenario] = (ref, float(np.mean(ppls)))
    return out


def summarize(
    records: Sequence[Mapping[str, Any]],
    reference_arm: str = "adamw",
    reference: Mapping[str, str] | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> list[Cell]:
    """One :class:`Cell` per (scenario, arm), by scenario then arm, in the order the records first name them.

    ``reference``: ``{scenario or family: reference scenario}`` for time-to-target (see :func:`reference_of`).
    """
    targets = scenario_targets(records, reference_arm, reference)
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["scenario"], r["arm"])].append(r)
    ref_ppl = {
        (r["scenario"], int(r["seed"])): as_float(r["final_valid_ppl"]) for r in records if r["arm"] == reference_arm
    }
    # Cells by scenario, then arm, each in order of first appearance (executors may deliver out of order).
    scen_order = {s: i for i, s in enumerate(dict.fromkeys(r["scenario"] for r in records))}
    arm_order = {a: i for i, a in enumerate(dict.fromkeys(r["arm"] for r in records))}
    cells = []
    for (scenario, arm), rs in sorted(groups.items(), key=lambda kv: (scen_order[kv[0][0]], arm_order[kv[0][1]])):
        rs = sorted(rs, key=lambda r: int(r["seed"]))
        first = rs[0]
        ppl = [as_float(r["final_valid_ppl"]) for r in rs]
        cell = Cell(
            scenario=scenario,
            family=str(first.get("family", scenario.split("/")[0])),
            split=str(first.get("split", "")),
            arm=arm,
            governor=str(first.get("governor", arm)),
            lr=as_float(_get(first, "trainer", "optim", "lr")),
            model=str(_get(first, "trainer", "model", "preset", default="")),
            n=len(rs),
            valid_ppl=bootstrap_mean(ppl, n_resamples, seed=seed),
            test_ppl=bootstrap_mean([as_float(r.get("test_ppl")) for r in rs], n_resamples, seed=seed),
            diverged=sum(bool(r.get("diverged")) for r in rs),
            wall_seconds=float(np.mean([as_float(_get(r, "timing", "wall_seconds")) for r in rs])),
            train_seconds=float(np.mean([as_float(_get(r, "timing", "train_seconds")) for r in rs])),
            skipped_steps=float(np.mean([as_float(r.get("skipped_steps", 0)) for r in rs])),
            rollbacks=float(np.mean([as_float(r.get("rollbacks", 0)) for r in rs])),
            seeds=[int(r["seed"]) for r in rs],
        )
        if arm != reference_arm:
            deltas = [
                relative_delta_pct(p, ref_ppl[(scenario, int(r["seed"]))])
                for r, p in zip(rs, ppl)
                if (scenario, int(r["seed"])) in ref_ppl
            ]
            if deltas:
                cell.delta_pct = bootstrap_mean(deltas, n_resamples, seed=seed)
        if scenario in targets:
            cell.reference_scenario, target = targets[scenario]
            cell.target_ppl = target
            hits = [h for h in (time_to_target(r, target) for r in rs) if h is not None]
            cell.reached = len(hits)
            if hits:
                cell.ttt_steps = float(np.mean([h[0] for h in hits]))
                cell.ttt_seconds = float(np.mean([h[1] for h in hits]))
        cells.append(cell)
    return cells


# ----------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------


def _ppl(e: Estimate) -> str:
    return e.fmt("{:.1f}")


def _delta(e: Estimate | None) -> str:
    return "—" if e is None or e.n == 0 else e.fmt("{:+.1f}") + " %"


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(cell: Cell) -> str:
    """``better`` / ``worse`` / ``no clear difference`` from the paired CI (``n/a`` without one)."""
    d = cell.delta_pct
    if d is None or d.n < 2 or math.isnan(d.lo):
        return "n/a"
    if d.hi < 0:
        return "better"
    if d.lo > 0:
        return "worse"
    return "no clear difference"


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
                _num(ref.lr, "{:.2g}"),
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
        row = [_scenario_label(any_cell, with_model), _num(any_cell.lr, "{:.2g}")]
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
# Plots
# ----------------------------------------------------------------------------------------------------------


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name.replace("/", "__"))


def mean_curve(records: Sequence[Mapping[str, Any]], curve: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds of ``curves[curve][key]`` by step (NaN/inf ignored; a diverged run's curve ends early)."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for r in records:
        c = _get(r, "curves", curve, default={}) or {}
        for step, y in zip(c.get("step") or [], c.get(key) or []):
            by_step[int(step)].append(as_float(y))
    steps = np.array(sorted(by_step), dtype=np.float64)
    means = []
    for s in sorted(by_step):
        finite = [v for v in by_step[s] if math.isfinite(v)]
        means.append(float(np.mean(finite)) if finite else math.nan)
    return steps, np.array(means, dtype=np.float64)


def _cumulative_skips(records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    by_step: dict[int, list[float]] = defaultdict(list)
    for r in records:
        c = _get(r, "curves", "train", default={}) or {}
        total = 0.0
        for step, k in zip(c.get("step") or [], c.get("skipped") or []):
            total += as_float(k)
            by_step[int(step)].append(total)
    steps = sorted(by_step)
    return np.array(steps, dtype=np.float64), np.array([np.mean(by_step[s]) for s in steps], dtype=np.float64)


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def write_plots(
    records: Sequence[Mapping[str, Any]],
    cells: Sequence[Cell],
    folder: Path,
    targets: Mapping[str, tuple[str, float]],
) -> list[Path]:
    """Loss/validation curves and control timelines per scenario, final-perplexity bars per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    by_cell: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        by_cell[(r["scenario"], r["arm"])].append(r)
    scenarios = list(dict.fromkeys(r["scenario"] for r in records))
    arms = list(dict.fromkeys(r["arm"] for r in records))
    colors = {a: plt.get_cmap("tab10")(i % 10) for i, a in enumerate(arms)}
    # Arms often coincide (clipping that never binds, a guard that holds still): vary the line style too.
    styles = {a: ("-", "--", ":", "-.")[i % 4] for i, a in enumerate(arms)}

    for scenario in scenarios:
        family = next(r["family"] for r in records if r["scenario"] == scenario)
        present = [a for a in arms if (scenario, a) in by_cell]
        n_seeds = max(len(by_cell[(scenario, a)]) for a in present)

        # Training loss and validation perplexity.
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for a in present:
            x, y = mean_curve(by_cell[(scenario, a)], "train", "loss")
            ax1.plot(x, y, label=a, color=colors[a], ls=styles[a])
            x, y = mean_curve(by_cell[(scenario, a)], "valid", "ppl")
            ax2.plot(x, y, marker="o", ms=3, label=a, color=colors[a], ls=styles[a])
        if scenario in targets:
            ref, target = targets[scenario]
            ax2.axhline(target, color="grey", ls="--", lw=1, label=f"target ({ref})")
        ax1.set(xlabel="optimizer step", ylabel="training loss (nats, per-interval mean)", title="training loss")
        ax2.set(xlabel="optimizer step", ylabel="validation perplexity", title="validation perplexity", yscale="log")
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{scenario}: mean over {n_seeds} seed(s)")
        path = folder / f"loss__{_safe_name(scenario)}.png"
        _save(fig, path)
        plt.close(fig)
        paths.append(path)

        # What the governors did: LR scale and skipped steps.
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for a in present:
            x, y = mean_curve(by_cell[(scenario, a)], "train", "lr_scale")
            ax1.plot(x, y, label=a, color=colors[a], ls=styles[a])
            x, y = _cumulative_skips(by_cell[(scenario, a)])
            ax2.plot(x, y, label=a, color=colors[a], ls=styles[a])
        ax1.set(xlabel="optimizer step", ylabel="LR scale (× scheduled LR)", title="LR scale", yscale="log")
        ax2.set(xlabel="optimizer step", ylabel="skipped steps (cumulative)", title="skipped steps")
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{scenario}: governor actions, mean over {n_seeds} seed(s)")
        path = folder / f"control__{_safe_name(scenario)}.png"
        _save(fig, path)
        plt.close(fig)
        paths.append(path)

    # Final perplexity with CIs, per family.
    for family in dict.fromkeys(c.family for c in cells):
        fam = [c for c in cells if c.family == family]
        fam_scen = list(dict.fromkeys(c.scenario for c in fam))
        fam_arms = list(dict.fromkeys(c.arm for c in fam))
        index = {(c.scenario, c.arm): c for c in fam}
        width = 0.8 / max(1, len(fam_arms))
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(fam_scen) * max(1, len(fam_arms)) / 2 + 3), 4.5))
        finite_vals = [c.valid_ppl.mean for c in fam if math.isfinite(c.valid_ppl.mean) and c.valid_ppl.mean > 0]
        top = max(finite_vals) if finite_vals else 1.0
        for j, a in enumerate(fam_arms):
            xs, ys, lo, hi, missing = [], [], [], [], []
            for i, s in enumerate(fam_scen):
                c = index.get((s, a))
                if c is None:
                    continue
                x = i + (j - (len(fam_arms) - 1) / 2) * width
                if not math.isfinite(c.valid_ppl.mean):
                    missing.append(x)
                    continue
                xs.append(x)
                ys.append(c.valid_ppl.mean)
                lo.append(max(0.0, c.valid_ppl.mean - c.valid_ppl.lo) if math.isfinite(c.valid_ppl.lo) else 0.0)
                hi.append(c.valid_ppl.hi - c.valid_ppl.mean if math.isfinite(c.valid_ppl.hi) else 0.0)
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=a, color=colors[a])
            for x in missing:
                ax.text(x, top, "∞\n(div.)", ha="center", va="bottom", fontsize=7, color=colors[a])
        if finite_vals and max(finite_vals) / max(min(finite_vals), 1e-12) > 10:
            ax.set_yscale("log")
        ax.set_xticks(range(len(fam_scen)))
        ax.set_xticklabels(fam_scen, rotation=20, ha="right", fontsize=8)
        ax.set(ylabel="final validation perplexity (mean, 95% CI)", title=f"{family}: final validation perplexity")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        path = folder / f"final_ppl__{_safe_name(family)}.png"
        _save(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ReportFiles:
    report_md: Path
    summary_csv: Path
    plots: list[Path]
    cells: list[Cell]


def render_markdown(
    records: Sequence[Mapping[str, Any]],
    cells: Sequence[Cell],
    *,
    title: str,
    description: str = "",
    reference_arm: str = "adamw",
    guard_arm: str = "lbw_guard",
    targets: Mapping[str, tuple[str, float]],
    plots: Sequence[Path] = (),
    folder: Path | None = None,
    notes: Sequence[str] = (),
) -> str:
    arms = list(dict.fromkeys(c.arm for c in cells))
    seeds = sorted({int(r["seed"]) for r in records})
    families = list(dict.fromkeys(c.family for c in cells))
    eval_every = sorted({int(r.get("eval_every", 0)) for r in records})
    out = [f"# Evaluation report: {title}", ""]
    if description:
        out += [description.strip(), ""]
    out += [
        f"{len(records)} runs: {len({c.scenario for c in cells})} scenarios × arms {', '.join(arms)} × "
        f"seeds {seeds[0]}..{seeds[-1]} ({len(seeds)})."
        if seeds
        else "No runs.",
        f"Reference arm: **{reference_arm}**; guard arm: **{guard_arm}**. Final validation perplexity is "
        "mean over seeds with a 95 % percentile bootstrap CI; Δ is the paired relative difference to the "
        "reference arm (same scenario and seed).",
        "",
    ]
    versions = records[0].get("versions") if records else None
    if versions:
        out += ["Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", ""]

    summary, not_helping = guard_findings(cells, reference_arm, guard_arm)
    out += ["## Summary", ""]
    out += summary or [f"- No scenario has both {reference_arm} and {guard_arm} runs: no paired comparison."]
    out += [""]
    out += ["## Where the guard does not help", ""]
    if not_helping:
        out += not_helping
    elif summary:
        out += [f"- In every scenario of this suite {guard_arm} had a significantly lower perplexity than "
                f"{reference_arm}, never diverged more often, and reached the target no later."]  # fmt: skip
    else:
        out += ["- Not assessable: no paired comparison."]
    out += [""]

    ordered = [f for f in PRIORITY_FAMILIES if f in families] + [f for f in families if f not in PRIORITY_FAMILIES]
    titles = {"lr_stress": "LR stress", "clipping": "Clipping baselines", "model_size": "Model size"}
    for family in ordered:
        out += [f"## {titles.get(family, family)} (`{family}`)", ""]
        fam_scenarios = list(dict.fromkeys(c.scenario for c in cells if c.family == family))
        by_ref: dict[str, list[str]] = defaultdict(list)
        for scenario in fam_scenarios:
            if scenario in targets:
                by_ref[targets[scenario][0]].append(scenario)
        for ref, users in by_ref.items():
            target = targets[users[0]][1]
            out.append(
                f"- Target {target:.1f} = mean final validation perplexity of {reference_arm} on `{ref}`; "
                f"for {', '.join(f'`{u}`' for u in users)}."
            )
        untargeted = [s for s in fam_scenarios if s not in targets]
        if untargeted:
            out.append(
                f"- No time-to-target for {', '.join(f'`{u}`' for u in untargeted)}: no reference scenario with "
                f"finite {reference_arm} runs; times are whole-run wall times."
            )
        out.append("")
        head = headline_table(cells, family, reference_arm, guard_arm)
        n_arms = len({c.arm for c in cells if c.family == family})
        # Clipping compares several baselines: all arms side by side first. Elsewhere the paper's two-arm
        # table leads, and the all-arms table follows when there are more arms than those two.
        table = arms_table(cells, family) if family == "clipping" or head is None or n_arms > 2 else None
        blocks = [table, head] if family == "clipping" else [head, table]
        out += [x for b in blocks if b for x in (b, "")]

    out += ["## All cells", "", full_table(cells), ""]
    if plots:
        out += ["## Plots", ""]
        for p in plots:
            rel = p.relative_to(folder) if folder is not None and p.is_relative_to(folder) else p
            out.append(f"- [{rel}]({rel})")
        out += [""]
    out += [
        "## Method",
        "",
        "- Every arm runs the same seeds; a seed fixes the model initialisation, the batch order and the "
        "injected faults, so the comparison is paired.",
        f"- CIs: percentile bootstrap over seeds, {N_RESAMPLES} resamples, seeded; with fewer than 2 seeds no CI. "
        "A diverged run has infinite perplexity, which makes a mean infinite rather than hiding it.",
        "- Time to target: first validation point at or below the target, in optimizer steps and in seconds of "
        "the run's wall clock without the evaluations; averaged over the seeds that reached it. Resolution: one "
        f"evaluation interval (eval_every = {', '.join(map(str, eval_every))} decisions; 0 means only the end).",
        "- wall s: the episode after reset (training, governor, envelope) without evaluations; train s: the "
        "optimizer steps alone.",
    ]
    if notes:
        out += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(out) + "\n"


def write_report(
    folder: str | Path,
    records: Sequence[Mapping[str, Any]] | None = None,
    *,
    title: str = "",
    description: str = "",
    reference_arm: str = "adamw",
    guard_arm: str = "lbw_guard",
    reference: Mapping[str, str] | None = None,
    plots: bool = True,
    notes: Sequence[str] = (),
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> ReportFiles:
    """Write ``report.md``, ``summary.csv`` and ``plots/*.png`` into ``folder`` (atomically, file by file).

    ``records`` default to ``folder/records.jsonl``. ``reference``: ``{scenario or family: reference
    scenario}`` for time-to-target (see :func:`reference_of`; default: ``<family>/ref`` where present).
    """
    from .evaluation import RecordStore

    folder = Path(folder)
    if records is None:
        store = RecordStore(folder)
        records = store.records
        notes = [*notes, *store.dropped]
    records = list(records)
    cells = summarize(records, reference_arm, reference, n_resamples=n_resamples, seed=seed)
    targets = scenario_targets(records, reference_arm, reference)
    plot_paths = write_plots(records, cells, folder / "plots", targets) if plots and records else []
    if not title:
        title = str(records[0].get("suite") or folder.name) if records else folder.name
    md = render_markdown(
        records,
        cells,
        title=title,
        description=description,
        reference_arm=reference_arm,
        guard_arm=guard_arm,
        targets=targets,
        plots=plot_paths,
        folder=folder,
        notes=notes,
    )
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "report.md", md)
    atomic_write_text(folder / "summary.csv", summary_csv(cells))
    return ReportFiles(folder / "report.md", folder / "summary.csv", plot_paths, cells)


def short_table(cells: Sequence[Cell], max_rows: int = 40) -> str:
    """A plain-text table for the terminal."""
    lines = [f"{'scenario':<28} {'arm':<18} {'n':>2}  {'valid ppl [95% CI]':<28} {'Δ %':>8}  div"]
    for c in cells[:max_rows]:
        d = "" if c.delta_pct is None else _num(c.delta_pct.mean, "{:+.1f}")
        lines.append(f"{c.scenario:<28} {c.arm:<18} {c.n:>2}  {_ppl(c.valid_ppl):<28} {d:>8}  {c.diverged}/{c.n}")
    if len(cells) > max_rows:
        lines.append(f"... {len(cells) - max_rows} more cells in report.md")
    return "\n".join(lines)
