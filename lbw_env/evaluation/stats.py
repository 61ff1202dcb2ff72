"""Statistics over evaluation records: bootstrap CIs, paired differences, time-to-target, one Cell per arm.

Per cell (scenario x arm) over seeds: the mean final validation perplexity with a 95 % percentile bootstrap CI
(10 000 resamples, seeded numpy Generator), test perplexity, divergence rate and times. Against the reference
arm (plain AdamW by default), paired by scenario and seed (arms share initialisation, batches and faults): the
mean relative perplexity difference with its bootstrap CI. Time-to-target: steps and seconds until the
validation perplexity first reaches the reference arm's mean final perplexity on the scenario's reference
scenario (the sane-LR run); it is read off the validation points the records carry (``eval_every``), so its
resolution is one evaluation interval, and a run that never gets there is reported as *not reached*.

Only numbers here (no files, no text beyond :meth:`Estimate.fmt`): the tables, plots and the report build on
these cells, and :func:`reference_of` is also what the suite plan uses to warn about missing references.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .records import as_float, get_path

N_RESAMPLES = 10_000
LEVEL = 0.95


# ----------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------


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
        text = fmt_num(self.mean, fmt)
        if ci and self.n > 1:
            text += f" [{fmt_num(self.lo, fmt)}, {fmt_num(self.hi, fmt)}]"
        return text


def fmt_num(x: float, fmt: str = "{:.1f}") -> str:
    """``fmt`` for finite numbers; ``nan``, ``∞`` and ``−∞`` spelled out (a diverged run is a fact to show)."""
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
            lr=as_float(get_path(first, "trainer", "optim", "lr")),
            model=str(get_path(first, "trainer", "model", "preset", default="")),
            n=len(rs),
            valid_ppl=bootstrap_mean(ppl, n_resamples, seed=seed),
            test_ppl=bootstrap_mean([as_float(r.get("test_ppl")) for r in rs], n_resamples, seed=seed),
            diverged=sum(bool(r.get("diverged")) for r in rs),
            wall_seconds=float(np.mean([as_float(get_path(r, "timing", "wall_seconds")) for r in rs])),
            train_seconds=float(np.mean([as_float(get_path(r, "timing", "train_seconds")) for r in rs])),
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
