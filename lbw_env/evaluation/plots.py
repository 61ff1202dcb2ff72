"""PNG plots of evaluation records: loss and validation curves, control timelines, final test-perplexity bars,
and performance profiles of the normalised scores (share of runs within tau x the tuned AdamW's perplexity).

Matplotlib is imported only when plots are written (Agg backend, so a headless machine works): reading
records and writing the tables never needs it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import atomic_path
from .intervals import Estimate, performance_profile
from .records import as_float, get_path
from .stats import Cell, Tuned


def _safe_name(name: str) -> str:
    """A file name from a scenario or family name (``tiny/ref`` -> ``tiny__ref``)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name.replace("/", "__"))


def mean_curve(records: Sequence[Mapping[str, Any]], curve: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds of ``curves[curve][key]`` by step (NaN/inf ignored; a diverged run's curve ends early)."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for r in records:
        c = get_path(r, "curves", curve, default={}) or {}
        for step, y in zip(c.get("step") or [], c.get(key) or []):
            by_step[int(step)].append(as_float(y))
    steps = np.array(sorted(by_step), dtype=np.float64)
    means = []
    for s in sorted(by_step):
        finite = [v for v in by_step[s] if math.isfinite(v)]
        means.append(float(np.mean(finite)) if finite else math.nan)
    return steps, np.array(means, dtype=np.float64)


def _cumulative_skips(records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds of the running count of skipped steps (records carry skips per curve bin)."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for r in records:
        c = get_path(r, "curves", "train", default={}) or {}
        total = 0.0
        for step, k in zip(c.get("step") or [], c.get("skipped") or []):
            total += as_float(k)
            by_step[int(step)].append(total)
    steps = sorted(by_step)
    return np.array(steps, dtype=np.float64), np.array([np.mean(by_step[s]) for s in steps], dtype=np.float64)


def _save(fig: Any, path: Path) -> None:
    """Save atomically: a report folder never holds half a PNG."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def write_plots(
    records: Sequence[Mapping[str, Any]],
    cells: Sequence[Cell],
    folder: Path,
    tuned: Mapping[str, Tuned],
    aggregates: Mapping[str, tuple[Estimate, Mapping[str, Sequence[float]]]] | None = None,
) -> list[Path]:
    """Loss/validation curves and control timelines per scenario, final test-perplexity bars per family, and
    the performance profile of ``aggregates`` (per arm, per scenario: final / tuned AdamW test perplexity)."""
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
        present = [a for a in arms if (scenario, a) in by_cell]
        n_seeds = max(len(by_cell[(scenario, a)]) for a in present)

        # Training loss and validation perplexity.
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for a in present:
            x, y = mean_curve(by_cell[(scenario, a)], "train", "loss")
            ax1.plot(x, y, label=a, color=colors[a], ls=styles[a])
            x, y = mean_curve(by_cell[(scenario, a)], "valid", "ppl")
            ax2.plot(x, y, marker="o", ms=3, label=a, color=colors[a], ls=styles[a])
        target = tuned[scenario].target if scenario in tuned else None
        if target is not None:
            ax2.axhline(target, color="grey", ls="--", lw=1, label=f"target ({tuned[scenario].label})")
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

    paths += _final_bars(plt, cells, folder, colors)
    if aggregates:
        paths.append(_profile(plt, aggregates, folder, colors, styles))
    return paths


def _final_bars(plt: Any, cells: Sequence[Cell], folder: Path, colors: Mapping[str, Any]) -> list[Path]:
    """Final test perplexity per family: one bar per (scenario, arm), 95 % t interval as error bars."""
    paths = []
    for family in dict.fromkeys(c.family for c in cells):
        fam = [c for c in cells if c.family == family]
        fam_scen = list(dict.fromkeys(c.scenario for c in fam))
        fam_arms = list(dict.fromkeys(c.arm for c in fam))
        index = {(c.scenario, c.arm): c for c in fam}
        width = 0.8 / max(1, len(fam_arms))
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(fam_scen) * max(1, len(fam_arms)) / 2 + 3), 4.5))
        finite_vals = [c.test_ppl.mean for c in fam if math.isfinite(c.test_ppl.mean) and c.test_ppl.mean > 0]
        top = max(finite_vals) if finite_vals else 1.0
        for j, a in enumerate(fam_arms):
            xs, ys, lo, hi, missing = [], [], [], [], []
            for i, s in enumerate(fam_scen):
                c = index.get((s, a))
                if c is None:
                    continue
                x = i + (j - (len(fam_arms) - 1) / 2) * width
                e = c.test_ppl
                if not math.isfinite(e.mean):
                    missing.append(x)
                    continue
                xs.append(x)
                ys.append(e.mean)
                lo.append(max(0.0, e.mean - max(e.lo, 0.0)) if math.isfinite(e.lo) else 0.0)
                hi.append(e.hi - e.mean if math.isfinite(e.hi) else 0.0)
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=a, color=colors[a])
            for x in missing:
                ax.text(x, top, "∞\n(div.)", ha="center", va="bottom", fontsize=7, color=colors[a])
        if finite_vals and max(finite_vals) / max(min(finite_vals), 1e-12) > 10:
            ax.set_yscale("log")
        ax.set_xticks(range(len(fam_scen)))
        ax.set_xticklabels(fam_scen, rotation=20, ha="right", fontsize=8)
        ax.set(ylabel="final test perplexity (mean, 95% t CI)", title=f"{family}: final test perplexity")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        path = folder / f"final_ppl__{_safe_name(family)}.png"
        _save(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths


def _profile(
    plt: Any,
    aggregates: Mapping[str, tuple[Estimate, Mapping[str, Sequence[float]]]],
    folder: Path,
    colors: Mapping[str, Any],
    styles: Mapping[str, str],
) -> Path:
    """rliable's performance profile: the share of an arm's runs with final / tuned AdamW test ppl <= tau."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    all_scores = [as_float(v) for _, by_s in aggregates.values() for vs in by_s.values() for v in vs]
    finite = [v for v in all_scores if math.isfinite(v) and v > 0]
    hi = max(2.0, min(max(finite, default=2.0) * 1.05, 20.0))
    taus = np.geomspace(min(0.5, min(finite, default=0.5)), hi, 200)
    for arm, (_, by_s) in aggregates.items():
        scores = [v for vs in by_s.values() for v in vs]
        ax.plot(taus, performance_profile(scores, taus), label=arm, color=colors.get(arm), ls=styles.get(arm, "-"))
    ax.axvline(1.0, color="grey", ls="--", lw=1)
    ax.set(
        xscale="log",
        xlabel="tau (final test ppl / tuned AdamW test ppl)",
        ylabel="fraction of runs with score <= tau",
        title="performance profile (all scenarios with a tuned AdamW)",
        ylim=(0, 1.02),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = folder / "performance_profile.png"
    _save(fig, path)
    plt.close(fig)
    return path
