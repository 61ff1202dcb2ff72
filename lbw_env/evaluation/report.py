"""The report: records -> ``report.md``, ``summary.csv`` and ``plots/*.png`` in the evaluation's folder.

The Markdown leads with final TEST perplexity, says "better" or "worse" only where the stated interval excludes
0 (else "no detectable difference", with n and the interval), sets every arm against the untouched starting
model and a tuned AdamW (which a do-nothing governor cannot beat), prints the hash of each governor's config,
and lists plainly where the guard does not help. This module only assembles; the numbers come from
:mod:`.stats` and :mod:`.intervals`, the tables from :mod:`.tables`, the figures from :mod:`.plots`, and the
records from :class:`~lbw_env.evaluation.records.RecordStore`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..cache import atomic_write_text
from .intervals import BCA_MIN_N, N_RESAMPLES, Estimate
from .plots import write_plots
from .records import RecordStore, get_path
from .stats import TUNED_ARM, Cell, Tuned, aggregate, summarize, tuned_references
from .tables import (
    aggregate_table,
    arms_table,
    full_table,
    governors_table,
    guard_findings,
    headline_table,
    ranking_table,
    summary_csv,
    yardstick_table,
)

PRIORITY_FAMILIES = ("lr_stress", "clipping", "model_size")
"""Families that get their own section first, in this order (the paper's tables); others follow generically."""

EVAL_NOISE = (
    "Evaluation noise (benchmarks/eval_noise.py, plain AdamW; the test subset is 32 evenly spread blocks of the "
    "split): the choice of blocks moves a model's test perplexity by 6.0 % (sd over 205 disjoint subsets; tiny, "
    "64-token blocks) and 4.9 % (89 subsets; lr_stress/ref, 128-token blocks), against a seed-to-seed sd of 5.5 % "
    "from scratch (tiny/ref, 5 seeds), 1.8 % (tiny/ft_ref, 5 seeds) and 0.9 % (lr_stress/ref, 3 seeds) for "
    "fine-tunes. Paired differences (both arms on the same blocks) keep less of it, but not little: an sd of the "
    "log ratio of 0.013 (tiny/ref), 0.017 (tiny/ft_ref) and 0.016 (lr_stress/ref), against seed-to-seed sds of "
    "the log perplexity of 0.055, 0.018 and 0.009. So absolute test perplexities carry a ~5 % common offset, "
    "and for fine-tunes the 32-block subset adds as much spread as the seeds (or more): their intervals are "
    "wider than the seeds alone would make them. About 1000 test blocks would bring it under a third of the "
    "seed spread."
)
"""The measured evaluation noise of the test subset (benchmarks/eval_noise.py), for the method note."""


@dataclasses.dataclass
class ReportFiles:
    """What :func:`write_report` wrote, and the cells it computed (the CLI prints them as a short table)."""

    report_md: Path
    summary_csv: Path
    plots: list[Path]
    cells: list[Cell]


def _test_blocks(record: Mapping[str, Any]) -> Any:
    """Blocks of the test subset (records made before ``data.test_blocks`` existed used ``eval_blocks``)."""
    return get_path(record, "trainer", "data", "test_blocks") or get_path(record, "trainer", "data", "eval_blocks")


def _intro(
    records: Sequence[Mapping[str, Any]], cells: Sequence[Cell], reference_arm: str, guard_arm: str
) -> list[str]:
    arms = list(dict.fromkeys(c.arm for c in cells))
    seeds = sorted({int(r["seed"]) for r in records})
    shapes = sorted(
        {(_test_blocks(r), get_path(r, "trainer", "data", "seq_len")) for r in records},
        key=str,
    )
    test_set = ", ".join(f"{b} blocks × {s} tokens" for b, s in shapes)
    return [
        f"{len(records)} runs: {len({c.scenario for c in cells})} scenarios × arms {', '.join(arms)} × "
        f"seeds {seeds[0]}..{seeds[-1]} ({len(seeds)})."
        if seeds
        else "No runs.",
        f"Reference arm: **{reference_arm}**; guard arm: **{guard_arm}**. Headline: final **test** perplexity "
        f"(the WikiText test split, {test_set}; no tuning or selection looks at it), mean over seeds with a 95 % "
        "Student-t interval; validation perplexity is secondary. Δ is the paired difference to the reference "
        "arm (same scenario and seed) as a percentage of its perplexity.",
        "",
    ]


def _tuned_lines(tuned: Mapping[str, Tuned], scenarios: Sequence[str], tuned_arm: str) -> list[str]:
    """Where each scenario's tuned AdamW and time-to-target come from."""
    by_label: dict[str, list[str]] = {}
    for s in scenarios:
        if s in tuned:
            by_label.setdefault(tuned[s].label, []).append(s)
    out = []
    for label, users in by_label.items():
        t = tuned[users[0]]
        target = "no target (a tuned run diverged)" if t.target is None else f"target {t.target:.1f}"
        out.append(
            f"- Tuned AdamW = {label} ({t.n} seeds; {target}, its worst seed's final validation perplexity); "
            f"for {', '.join(f'`{u}`' for u in users)}."
        )
    missing = [s for s in scenarios if s not in tuned]
    if missing:
        out.append(
            f"- No tuned AdamW for {', '.join(f'`{u}`' for u in missing)}: no `{tuned_arm}` arm and no reference "
            "scenario with reference-arm runs; no score, no time-to-target."
        )
    return out


def _family_section(
    cells: Sequence[Cell], family: str, tuned: Mapping[str, Tuned], reference_arm: str, guard_arm: str, tuned_arm: str
) -> list[str]:
    titles = {"lr_stress": "LR stress", "clipping": "Clipping baselines", "model_size": "Model size"}
    out = [f"## {titles.get(family, family)} (`{family}`)", ""]
    out += _tuned_lines(tuned, list(dict.fromkeys(c.scenario for c in cells if c.family == family)), tuned_arm)
    out.append("")
    head = headline_table(cells, family, reference_arm, guard_arm)
    n_arms = len({c.arm for c in cells if c.family == family})
    # Clipping compares several baselines: all arms side by side first. Elsewhere the headline two-arm table
    # leads, and the all-arms table follows when there are more arms than those two.
    table = arms_table(cells, family) if family == "clipping" or head is None or n_arms > 2 else None
    blocks = [table, head] if family == "clipping" else [head, table]
    blocks.append(yardstick_table(cells, family, reference_arm, guard_arm))
    if n_arms > 2:  # every arm ranked per scenario, with its score and cost
        blocks.append(ranking_table(cells, family))
    return out + [x for b in blocks if b for x in (b, "")]


def _method(records: Sequence[Mapping[str, Any]], tuned_arm: str, reference_arm: str) -> list[str]:
    eval_every = sorted({int(r.get("eval_every", 0)) for r in records})
    return [
        "## Method",
        "",
        "- Every arm runs the same seeds; a seed fixes the model initialisation, the batch order and the "
        "injected faults, so the comparison is paired.",
        "- Intervals: Student-t, 95 % (mean ± t_{n−1} · s / √n), for every mean over seeds and for the paired "
        "differences. THE interval behind the words is the paired t interval of the per-seed difference of the "
        'final test log perplexity (test loss, nats); Δ % = 100 · (exp(Δ) − 1). "better"/"worse" appear '
        "only where it excludes 0, which is exactly where the paired t-test gives p < 0.05; otherwise the report "
        'says "no detectable difference" with n and the interval. Not Wilcoxon\'s signed-rank test: at n ≤ 5 '
        "its smallest two-sided p-value is 2/2^n ≥ 0.0625, so it can never reject at 5 %.",
        f"- Coverage (simulated, normal data): the t interval holds 95 % at any n; the percentile bootstrap this "
        "report used before covered 74 % at n = 3, 83 % at n = 5 and 90 % at n = 10 (2000 samples each). From "
        f"n = {BCA_MIN_N} paired seeds a BCa bootstrap interval ({N_RESAMPLES} resamples, seeded) is listed beside "
        "t as a check on skewed differences; it is not used for words (it covered 91 % at n = 10 on normal data). "
        "With 2-3 seeds the t interval is "
        "wide (t_1 = 12.7, t_2 = 4.3): few differences are detectable, which is what such n can say.",
        "- A diverged run has infinite perplexity: the mean is infinite and no interval is given; divergences are "
        "counted in their own column, and a pair where only one arm diverged is not testable by t.",
        f"- Start: the untouched starting model's perplexity (fine-tune: the base model; scratch: the "
        f"initialisation). Tuned AdamW: the `{tuned_arm}` arm on the same scenario where the suite has one, else "
        f"`{reference_arm}` on the scenario's reference scenario (its sane-LR run) — never `{reference_arm}` on "
        "the stress scenario itself, whose collapse a governor that cuts the LR to ~0 would beat while learning "
        "nothing. Score: gain captured = (start − final) / (start − tuned AdamW) for fine-tunes (0 = did "
        "nothing, 1 = as much as tuned AdamW); final / tuned AdamW for scratch runs (lower is better).",
        "- Aggregate: interquartile mean over all runs of final test ppl / tuned AdamW test ppl, with a 95 % "
        "stratified percentile bootstrap (runs resampled within each scenario, 2000 resamples; rliable's method, "
        "computed with numpy/scipy because rliable's dependency arch < 8 does not import under pandas 3). "
        "Descriptive: no words rest on it.",
        "- Time to target: first validation point at or below the target (the tuned AdamW's worst seed's final "
        "validation perplexity, so tuned AdamW reaches it in every seed), in optimizer steps and in seconds of "
        "the run's wall clock without the evaluations; averaged over the seeds that reached it, and the seeds "
        "that never did are counted. Resolution: one evaluation interval "
        f"(eval_every = {', '.join(map(str, eval_every))} decisions; 0 means only the end).",
        f"- {EVAL_NOISE}",
        "- wall s: the episode after reset (training, governor, envelope) without evaluations; train s: the "
        "optimizer steps alone.",
    ]


def render_markdown(
    records: Sequence[Mapping[str, Any]],
    cells: Sequence[Cell],
    *,
    title: str,
    description: str = "",
    reference_arm: str = "adamw",
    guard_arm: str = "lbw_guard",
    tuned: Mapping[str, Tuned],
    aggregates: Mapping[str, tuple[Estimate, Mapping[str, Sequence[float]]]] | None = None,
    plots: Sequence[Path] = (),
    folder: Path | None = None,
    notes: Sequence[str] = (),
    tuned_arm: str = TUNED_ARM,
) -> str:
    """The whole ``report.md``: summary, where the guard does not help, per-family tables, all cells, method."""
    families = list(dict.fromkeys(c.family for c in cells))
    out = [f"# Evaluation report: {title}", ""]
    if description:
        out += [description.strip(), ""]
    out += _intro(records, cells, reference_arm, guard_arm)
    versions = records[0].get("versions") if records else None
    if versions:
        out += ["Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", ""]
    out += ["Governors evaluated:", "", governors_table(cells), ""]

    summary, not_helping = guard_findings(cells, reference_arm, guard_arm)
    out += ["## Summary", ""]
    out += summary or [f"- No scenario has both {reference_arm} and {guard_arm} runs: no paired comparison."]
    agg_table = aggregate_table(aggregates or {})
    if agg_table:
        out += ["", "Across scenarios (IQM of final test perplexity / tuned AdamW; lower is better):", "", agg_table]
    out += ["", "## Where the guard does not help", ""]
    if not_helping:
        out += not_helping
    elif summary:
        out += [
            f"- In every scenario of this suite {guard_arm} had a lower test perplexity than {reference_arm} "
            "(paired 95 % t interval below 0), never diverged more often, and reached the target no later."
        ]
    else:
        out += ["- Not assessable: no paired comparison."]
    out += [""]

    ordered = [f for f in PRIORITY_FAMILIES if f in families] + [f for f in families if f not in PRIORITY_FAMILIES]
    for family in ordered:
        out += _family_section(cells, family, tuned, reference_arm, guard_arm, tuned_arm)

    out += ["## All cells", "", full_table(cells), ""]
    if plots:
        out += ["## Plots", ""]
        for p in plots:
            rel = p.relative_to(folder) if folder is not None and p.is_relative_to(folder) else p
            out.append(f"- [{rel}]({rel})")
        out += [""]
    out += _method(records, tuned_arm, reference_arm)
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
    tuned_arm: str = TUNED_ARM,
) -> ReportFiles:
    """Write ``report.md``, ``summary.csv`` and ``plots/*.png`` into ``folder`` (atomically, file by file).

    ``records`` default to ``folder/records.jsonl``. ``reference``: ``{scenario or family: reference
    scenario}`` for time-to-target (see :func:`~lbw_env.evaluation.stats.reference_of`; default:
    ``<family>/ref`` where present); it also picks each scenario's tuned AdamW where the suite has no
    ``tuned_arm`` arm (see :mod:`.stats`).
    """
    folder = Path(folder)
    if records is None:
        store = RecordStore(folder)
        records = store.records
        notes = [*notes, *store.dropped]
    records = list(records)
    cells = summarize(records, reference_arm, reference, n_resamples=n_resamples, seed=seed, tuned_arm=tuned_arm)
    tuned = tuned_references(records, reference_arm, reference, tuned_arm)
    aggregates = aggregate(records, tuned, seed=seed)
    plot_paths = write_plots(records, cells, folder / "plots", tuned, aggregates) if plots and records else []
    if not title:
        title = str(records[0].get("suite") or folder.name) if records else folder.name
    md = render_markdown(
        records,
        cells,
        title=title,
        description=description,
        reference_arm=reference_arm,
        guard_arm=guard_arm,
        tuned=tuned,
        aggregates=aggregates,
        plots=plot_paths,
        folder=folder,
        notes=notes,
        tuned_arm=tuned_arm,
    )
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "report.md", md)
    atomic_write_text(folder / "summary.csv", summary_csv(cells))
    return ReportFiles(folder / "report.md", folder / "summary.csv", plot_paths, cells)
