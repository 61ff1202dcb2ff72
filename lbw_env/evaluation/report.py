"""The report: records -> ``report.md``, ``summary.csv`` and ``plots/*.png`` in the evaluation's folder.

The Markdown is written to say plainly where the guard does not help: every scenario in which its paired
difference is not significantly negative, or in which it diverged or reached the target later, is listed.
This module only assembles; the numbers come from :mod:`.stats`, the tables from :mod:`.tables`, the
figures from :mod:`.plots`, and the records from :class:`~lbw_env.evaluation.records.RecordStore`.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..cache import atomic_write_text
from .plots import write_plots
from .records import RecordStore
from .stats import N_RESAMPLES, Cell, scenario_targets, summarize
from .tables import arms_table, full_table, guard_findings, headline_table, summary_csv

PRIORITY_FAMILIES = ("lr_stress", "clipping", "model_size")
"""Families that get their own section first, in this order (the paper's tables); others follow generically."""


@dataclasses.dataclass
class ReportFiles:
    """What :func:`write_report` wrote, and the cells it computed (the CLI prints them as a short table)."""

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
    """The whole ``report.md``: summary, where the guard does not help, per-family tables, all cells, method."""
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
    scenario}`` for time-to-target (see :func:`~lbw_env.evaluation.stats.reference_of`; default:
    ``<family>/ref`` where present).
    """
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
