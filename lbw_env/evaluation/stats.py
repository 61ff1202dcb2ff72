"""Statistics over evaluation records: one :class:`Cell` per (scenario, arm), and the yardsticks they are read by.

The headline number is the final TEST perplexity (the WikiText test split, which neither tuning nor selection
looks at); validation perplexity is kept beside it as the secondary number. Per cell, over seeds:

* test and validation perplexity: geometric mean over seeds (the perplexity of the mean loss) with the Student-t
  95 % interval of the log, mapped back (:mod:`.intervals` says why t, and why not raw perplexities);
* against the reference arm (plain AdamW by default), paired by scenario and seed: the difference of the log
  perplexities with its t interval, the paired t-test, and BCa from 10 seeds (:class:`~.intervals.Paired`);
* against the *start* and a *tuned AdamW* — the two numbers a do-nothing governor cannot win against: the
  untouched starting model's perplexity (the base model of a fine-tune, the initialisation of a scratch run;
  ``initial_*_ppl`` in the record), and AdamW at a sane LR. The tuned AdamW of a scenario is the
  :data:`TUNED_ARM` arm on that scenario when the suite has one, else the reference arm on the scenario's
  reference scenario (its sane-LR run, see :func:`reference_of`); never the reference arm on the stress
  scenario itself, whose collapse a governor that cuts the LR to ~0 would "beat" while learning nothing.
  Fine-tunes get *gain captured* ``(start − final) / (start − tuned)``: 0 for a do-nothing governor, ~1 for
  tuned AdamW. Scratch runs (whose start is a random init any training beats) get ``final / tuned``;
* pairing is by scenario and seed *from the same starting model*: runs whose untouched-start test perplexity
  differs from the other arm's by more than :data:`START_TOLERANCE` started from another model (a base
  checkpoint rebuilt on another machine: float32 sums differ across CPU kernels and library versions), so no
  paired difference, score or target is computed against those runs (:attr:`Cell.other_start` says how far);
* time-to-target: steps and seconds until the validation perplexity first reaches the target, which is the
  tuned AdamW's WORST seed's final validation perplexity (so tuned AdamW reaches it in every seed); read off
  the validation points the records carry (``eval_every``), so its resolution is one evaluation interval;
  runs that never get there are counted.

Only numbers here (no files, no prose beyond short labels): the tables, plots and the report build on these
cells, and :func:`reference_of` is also what the suite plan uses to warn about missing references.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .intervals import (
    N_RESAMPLES,
    Estimate,
    Paired,
    geometric_t_interval,
    paired,
    stratified_iqm,
    t_interval,
)
from .records import as_float, get_path

TUNED_ARM = "adamw_tuned"
"""Label of the arm that is AdamW at a tuned LR; where a suite has it, it is each scenario's tuned AdamW."""
HEADLINE = "test"
"""The split of the headline perplexity."""

Record = Mapping[str, Any]

START_TOLERANCE = 1e-4
"""Relative difference of two runs' untouched-start test perplexities above which they did not start from the
same model. The same base on the same machine gives the same bits; measured across machines: 2e-6 (qwen2-s) and
1.5e-5 (qwen2-tiny) between library versions on one CPU kind, where the starts are the same model to well under
any effect reported; 0.43 % (llama-tiny, another library version) and 0.57 % (llama-tiny, AVX2 instead of
AVX512), where they are other models and a "paired" difference would mix the base's effect into the arm's."""


def ppl(record: Record, split: str) -> float:
    """A record's final perplexity on ``split`` (``test`` or ``valid``)."""
    return as_float(record.get("test_ppl" if split == "test" else "final_valid_ppl"))


def log_ppl(record: Record, split: str) -> float:
    """A record's final loss on ``split`` (the log perplexity), from the loss field where the record has it."""
    loss = as_float(record.get("test_loss" if split == "test" else "final_valid_loss"))
    if not math.isnan(loss):
        return loss
    p = ppl(record, split)
    return math.log(p) if p > 0 else math.nan


def capped_loss(record: Record) -> float:
    """Final validation loss (log ppl), capped at the uniform predictor's ``log(vocab)``: a run that ends worse, or
    diverged, counts as no better than uniform (a finite penalty that a search or a selection can average). The
    score of every selection on val: the guard's calibration, the tuned-AdamW sweep, the LR-free choice."""
    vocab = get_path(record, "trainer", "data", "vocab_size", default=None)
    cap = math.log(vocab) if isinstance(vocab, int) and vocab > 1 else 20.0
    loss = log_ppl(record, "valid")
    return min(loss, cap) if math.isfinite(loss) else cap


def start_ppl(record: Record, split: str) -> float:
    """The untouched starting model's perplexity on ``split`` (NaN where an older record lacks it)."""
    return as_float(record.get(f"initial_{split}_ppl"))


def start_mismatch(rs: Sequence[Record], others: Mapping[int, Record]) -> float:
    """The largest relative difference between the untouched-start test perplexity of ``rs`` and that of the runs
    of ``others`` (by seed) with the same seeds; 0 where the records lack it."""
    worst = 0.0
    for r in rs:
        other = others.get(int(r["seed"]))
        a, b = start_ppl(r, HEADLINE), math.nan if other is None else start_ppl(other, HEADLINE)
        if math.isfinite(a) and math.isfinite(b) and b > 0:
            worst = max(worst, abs(a - b) / b)
    return worst


def time_to_target(record: Record, target: float) -> tuple[int, float] | None:
    """``(steps, seconds)`` at the first validation point with perplexity <= ``target``, or None (not reached).

    Seconds are the episode's wall clock without the evaluations themselves (``timing.valid_seconds``).
    """
    valid = (record.get("curves") or {}).get("valid") or {}
    steps = valid.get("step") or []
    ppls = valid.get("ppl") or []
    seconds = (record.get("timing") or {}).get("valid_seconds") or [math.nan] * len(steps)
    for step, p, sec in zip(steps, ppls, seconds):
        x = as_float(p)
        if math.isfinite(x) and x <= target:
            return int(step), as_float(sec)
    return None


def reference_of(scenario: str, reference: Mapping[str, str], names: Iterable[str]) -> str | None:
    """The reference scenario of ``scenario``: its own entry in ``reference``, else its family's, else
    ``<family>/ref`` if ``names`` has it, else None."""
    family = scenario.split("/", 1)[0]
    if scenario in reference:
        return reference[scenario]
    if family in reference:
        return reference[family]
    return f"{family}/ref" if f"{family}/ref" in set(names) else None


# ----------------------------------------------------------------------------------------------------------
# The tuned AdamW of each scenario
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tuned:
    """A scenario's tuned AdamW: which runs (``label``), their mean final perplexities and the target."""

    label: str
    """``adamw_tuned`` (the tuned arm on the same scenario) or ``adamw on <reference scenario>``."""
    scenario: str
    arm: str
    ppl: Mapping[str, float]
    """Mean final perplexity per split (``test``, ``valid``); NaN where a run diverged (no yardstick). Arithmetic,
    unlike the cells' geometric means: gain captured is linear in perplexity, so with this mean the tuned runs
    score exactly 1 on average (the tuned runs are sane, where the two means agree to ~1e-4)."""
    target: float | None
    """Worst seed's final validation perplexity (None: a tuned run diverged)."""
    n: int
    lr: float = math.nan
    """The learning rate of those runs (as configured; the first run's)."""


def tuned_references(
    records: Sequence[Record],
    reference_arm: str = "adamw",
    reference: Mapping[str, str] | None = None,
    tuned_arm: str = TUNED_ARM,
) -> dict[str, Tuned]:
    """Per scenario its :class:`Tuned` AdamW (see the module docstring); scenarios without one are left out."""
    reference = reference or {}
    names = list(dict.fromkeys(r["scenario"] for r in records))
    runs: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in records:
        runs[(r["scenario"], r["arm"])].append(r)
    out: dict[str, Tuned] = {}
    for scenario in names:
        if runs.get((scenario, tuned_arm)):
            src, arm, label = scenario, tuned_arm, tuned_arm
        else:
            ref = reference_of(scenario, reference, names)
            if ref is None or not runs.get((ref, reference_arm)):
                continue
            src, arm, label = ref, reference_arm, f"{reference_arm} on {ref}"
        rs = runs[(src, arm)]
        means = {}
        for split in ("test", "valid"):
            xs = [ppl(r, split) for r in rs]
            means[split] = float(np.mean(xs)) if all(math.isfinite(x) for x in xs) else math.nan
        finals = [ppl(r, "valid") for r in rs]
        target = max(finals) if all(math.isfinite(x) for x in finals) else None
        lr = as_float(get_path(rs[0], "trainer", "optim", "lr"))
        out[scenario] = Tuned(label, src, arm, means, target, len(rs), lr)
    return out


def scenario_targets(
    records: Sequence[Record],
    reference_arm: str = "adamw",
    reference: Mapping[str, str] | None = None,
    tuned_arm: str = TUNED_ARM,
) -> dict[str, tuple[str, float]]:
    """Per scenario: ``(tuned AdamW label, time-to-target threshold)``; scenarios without one are left out."""
    tuned = tuned_references(records, reference_arm, reference, tuned_arm)
    return {s: (t.label, t.target) for s, t in tuned.items() if t.target is not None}


def gain_split(records: Sequence[Record]) -> str:
    """The split gains are measured on: the headline split where every record knows its start there, else
    validation (records written before ``initial_test_ppl`` existed)."""
    return HEADLINE if all(not math.isnan(start_ppl(r, HEADLINE)) for r in records) else "valid"


def run_score(record: Record, tuned: Tuned, split: str) -> float:
    """One run against its tuned AdamW: gain captured for a fine-tune, ``final / tuned`` from scratch.

    Gain captured is NaN where the tuned AdamW did not improve on the start (no gain to capture)."""
    final, ref = ppl(record, split), tuned.ppl.get(split, math.nan)
    if not math.isfinite(ref):
        return math.nan
    if get_path(record, "trainer", "regime") != "finetune":
        return final / ref
    start = start_ppl(record, split)
    if not math.isfinite(start) or start - ref <= 0:
        return math.nan
    return (start - final) / (start - ref) if math.isfinite(final) else -math.inf


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
    governor_hash: str
    """sha256 of the governor's config or manifest ("" where it has none, e.g. plain AdamW)."""
    lr: float
    model: str
    regime: str
    n: int
    test_ppl: Estimate
    """The headline: final test perplexity, geometric mean over seeds with the t interval of its log."""
    valid_ppl: Estimate
    diverged: int
    """Runs that diverged (the episode terminated)."""
    wall_seconds: float
    train_seconds: float
    skipped_steps: float
    rollbacks: float
    delta: Paired | None = None
    """Paired difference of the final test log perplexity vs the reference arm; None for the reference arm
    itself or when it has no run of this scenario."""
    delta_valid: Paired | None = None
    """The same on validation (secondary)."""
    start_ppl: Estimate | None = None
    """The untouched starting model's perplexity on :attr:`score_split` (None: records lack it)."""
    tuned: Tuned | None = None
    score: Estimate | None = None
    """Gain captured (fine-tune: mean with t interval) or final / tuned (scratch: geometric mean with the t interval
    of the logs); None without a tuned AdamW."""
    score_kind: str = ""
    """``gain captured`` or ``ratio to tuned``."""
    score_split: str = HEADLINE
    target_ppl: float | None = None
    """The time-to-target threshold (None: no tuned AdamW, so no target)."""
    ttt_steps: float | None = None
    """Mean steps to the target over the seeds that reached it."""
    ttt_seconds: float | None = None
    """Mean seconds to the target over the seeds that reached it."""
    reached: int = 0
    """Seeds that reached the target."""
    vs_tuned: Paired | None = None
    """Paired difference of the final test log perplexity vs the tuned AdamW's runs of the same seeds (its
    :class:`Tuned` runs: the same base checkpoint and batches); None for those runs themselves or without them."""
    other_start: float = 0.0
    """Largest relative difference of this cell's untouched-start test perplexity from the reference arm's or the
    tuned AdamW's runs of the same seeds. Above :data:`START_TOLERANCE` the runs started from another model, and
    :attr:`delta`, :attr:`vs_tuned`, the score and the target are left out (None): they would not be paired."""
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


def scenario_lr(cells: Sequence[Cell], scenario: str) -> float:
    """The LR a scenario configures: the one most of its arms ran at. The arms that set their own (tuned AdamW, the
    LR-free optimizers at 1.0) are the exceptions; the first cell's LR would be tuned AdamW's in a suite that lists
    that arm first."""
    lrs = [c.lr for c in cells if c.scenario == scenario]
    return max(lrs, key=lrs.count)


def _paired(rs: Sequence[Record], ref: Mapping[int, Record], split: str, n_resamples: int, seed: int) -> Paired | None:
    """Per-seed log-perplexity differences to ``ref``'s runs (by seed); a seed where both diverged (∞ − ∞) drops out."""
    diffs = [log_ppl(r, split) - log_ppl(ref[int(r["seed"])], split) for r in rs if int(r["seed"]) in ref]
    diffs = [d for d in diffs if not math.isnan(d)]
    return paired(diffs, n_resamples=n_resamples, seed=seed) if diffs else None


def _new_cell(scenario: str, arm: str, rs: Sequence[Record]) -> Cell:
    first = rs[0]
    hashes = sorted({str(r.get("governor_hash") or "") for r in rs})
    return Cell(
        scenario=scenario,
        family=str(first.get("family", scenario.split("/")[0])),
        split=str(first.get("split", "")),
        arm=arm,
        governor=str(first.get("governor", arm)),
        governor_hash=hashes[0] if len(hashes) == 1 else "mixed: " + ", ".join(h[:12] for h in hashes),
        lr=as_float(get_path(first, "trainer", "optim", "lr")),
        model=str(get_path(first, "trainer", "model", "preset", default="")),
        regime=str(get_path(first, "trainer", "regime", default="scratch")),
        n=len(rs),
        test_ppl=geometric_t_interval(ppl(r, "test") for r in rs),
        valid_ppl=geometric_t_interval(ppl(r, "valid") for r in rs),
        diverged=sum(bool(r.get("diverged")) for r in rs),
        wall_seconds=float(np.mean([as_float(get_path(r, "timing", "wall_seconds")) for r in rs])),
        train_seconds=float(np.mean([as_float(get_path(r, "timing", "train_seconds")) for r in rs])),
        skipped_steps=float(np.mean([as_float(r.get("skipped_steps", 0)) for r in rs])),
        rollbacks=float(np.mean([as_float(r.get("rollbacks", 0)) for r in rs])),
        seeds=[int(r["seed"]) for r in rs],
    )


def _add_tuned(cell: Cell, rs: Sequence[Record], tuned: Tuned | None, split: str, scored: bool = True) -> None:
    """Start, tuned AdamW, score and time-to-target of one cell (``scored`` False: the runs start from another
    model than the tuned ones, so no score or target)."""
    starts = [start_ppl(r, split) for r in rs]
    cell.score_split = split
    cell.start_ppl = t_interval(starts) if not any(math.isnan(s) for s in starts) else None
    cell.tuned = tuned
    if tuned is None or not scored:
        return
    cell.score_kind = "gain captured" if cell.regime == "finetune" else "ratio to tuned"
    # A ratio of perplexities averages as they do (geometric mean, t interval of the logs): an arithmetic mean is
    # one blown-up seed's and its interval goes negative. Gain captured is a difference and can be negative.
    interval = t_interval if cell.regime == "finetune" else geometric_t_interval
    cell.score = interval(run_score(r, tuned, split) for r in rs)
    if tuned.target is not None:
        cell.target_ppl = tuned.target
        hits = [h for h in (time_to_target(r, tuned.target) for r in rs) if h is not None]
        cell.reached = len(hits)
        if hits:
            cell.ttt_steps = float(np.mean([h[0] for h in hits]))
            cell.ttt_seconds = float(np.mean([h[1] for h in hits]))


def summarize(
    records: Sequence[Record],
    reference_arm: str = "adamw",
    reference: Mapping[str, str] | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    tuned_arm: str = TUNED_ARM,
) -> list[Cell]:
    """One :class:`Cell` per (scenario, arm), by scenario then arm, in the order the records first name them.

    ``reference``: ``{scenario or family: reference scenario}`` (see :func:`reference_of`); ``n_resamples`` and
    ``seed``: the BCa bootstrap (10+ paired seeds only).
    """
    tuned = tuned_references(records, reference_arm, reference, tuned_arm)
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in records:
        groups[(r["scenario"], r["arm"])].append(r)
    ref_runs: dict[str, dict[int, Record]] = defaultdict(dict)
    for r in records:
        if r["arm"] == reference_arm:
            ref_runs[r["scenario"]][int(r["seed"])] = r
    by_scenario: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_scenario[r["scenario"]].append(r)
    # Cells by scenario, then arm, each in order of first appearance (executors may deliver out of order).
    scen_order = {s: i for i, s in enumerate(by_scenario)}
    arm_order = {a: i for i, a in enumerate(dict.fromkeys(r["arm"] for r in records))}
    cells = []
    for (scenario, arm), rs in sorted(groups.items(), key=lambda kv: (scen_order[kv[0][0]], arm_order[kv[0][1]])):
        rs = sorted(rs, key=lambda r: int(r["seed"]))
        cell = _new_cell(scenario, arm, rs)
        t = tuned.get(scenario)
        yardstick = {} if t is None else {int(r["seed"]): r for r in groups[(t.scenario, t.arm)]}
        cell.other_start = max(start_mismatch(rs, ref_runs.get(scenario, {})), start_mismatch(rs, yardstick))
        same_start = cell.other_start <= START_TOLERANCE  # else nothing here is paired (see the docstring)
        if same_start and arm != reference_arm and ref_runs.get(scenario):
            cell.delta = _paired(rs, ref_runs[scenario], HEADLINE, n_resamples, seed)
            cell.delta_valid = _paired(rs, ref_runs[scenario], "valid", n_resamples, seed)
        _add_tuned(cell, rs, t, gain_split(by_scenario[scenario]), scored=same_start)
        if same_start and t is not None and (scenario, arm) != (t.scenario, t.arm) and arm != tuned_arm:
            cell.vs_tuned = _paired(rs, yardstick, HEADLINE, n_resamples, seed)
        cells.append(cell)
    return cells


def verdict(cell: Cell) -> str:
    """``better`` / ``worse`` (the paired test-perplexity t interval excludes 0), ``no detectable difference``
    (it does not), ``n/a`` (no interval: one seed, no reference runs, or a run diverged in one arm only)."""
    d = cell.delta
    direction = "n/a" if d is None else d.direction()
    return {"lower": "better", "higher": "worse", "none": "no detectable difference"}.get(direction, "n/a")


def aggregate(
    records: Sequence[Record],
    tuned: Mapping[str, Tuned],
    split: str = HEADLINE,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, tuple[Estimate, dict[str, list[float]]]]:
    """Per arm: IQM of ``final / tuned AdamW`` perplexity over all its runs in scenarios with a tuned AdamW,
    with the stratified bootstrap CI, and the per-scenario scores (for performance profiles). One scale for
    fine-tunes and scratch runs alike; lower is better; tuned AdamW itself scores ~1."""
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        t = tuned.get(r["scenario"])
        ref = t.ppl.get(split, math.nan) if t is not None else math.nan
        if math.isfinite(ref):
            scores[r["arm"]][r["scenario"]].append(ppl(r, split) / ref)
    return {arm: (stratified_iqm(by_s, n_resamples=n_resamples, seed=seed), dict(by_s)) for arm, by_s in scores.items()}
