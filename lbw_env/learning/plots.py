"""The learning curve of a run folder as a PNG: held-out evaluation returns over training episode returns.

Read from what the run already wrote (``evaluations.npz``, ``monitor/*.monitor.csv``), so a curve can be drawn
again for any run folder, finished, interrupted or resumed, without the trainer.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .artifacts import RunFolder


def read_monitor(path: str | os.PathLike[str]) -> list[dict[str, float]]:
    """Rows ``{r, l, t}`` of an SB3 monitor CSV; appended segments (a resume) repeat the header, skipped here."""
    rows: list[dict[str, float]] = []
    with open(path, newline="") as f:
        lines = [line for line in f if not line.startswith("#")]
    for row in csv.DictReader(lines):
        try:
            rows.append({"r": float(row["r"]), "l": float(row["l"]), "t": float(row["t"])})
        except (KeyError, TypeError, ValueError):  # a repeated header line or a torn last line
            continue
    return rows


def training_returns(monitor_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps, return) of every training episode of all envs, sorted by timestep.

    x is the decision count summed over envs at which the episode ended (approximately the training timestep):
    each env's cumulative episode lengths times the number of envs.
    """
    per_env = [read_monitor(p) for p in sorted(monitor_dir.glob("[0-9]*.monitor.csv"))]
    xs: list[float] = []
    ys: list[float] = []
    for rows in per_env:
        xs.extend((np.cumsum([r["l"] for r in rows]) * len(per_env)).tolist())
        ys.extend(r["r"] for r in rows)
    order = np.argsort(xs)
    return np.asarray(xs)[order], np.asarray(ys)[order]


def plot_learning_curve(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path | None:
    """Plot held-out evaluation returns (``evaluations.npz``) and training episode returns (``monitor/*.csv``)
    against timesteps. Returns the PNG path, or None when matplotlib is missing or there is nothing to plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - optional
        return None
    run = RunFolder(Path(run_dir))
    out_path = Path(out) if out is not None else run.learning_curve
    fig, ax = plt.subplots(figsize=(7, 4))
    plotted = False
    x, y = training_returns(run.monitor)
    if len(y):
        ax.plot(x, y, ".", alpha=0.25, color="tab:gray", label="training episodes")
        k = max(5, len(y) // 20)  # a running mean over ~5 % of the episodes, at least 5
        if len(y) >= 2 * k:
            smooth = np.convolve(y, np.ones(k) / k, mode="valid")
            ax.plot(x[k - 1 :], smooth, color="tab:gray", label=f"training (mean of {k})")
        plotted = True
    if run.evaluations.is_file():
        data = np.load(run.evaluations)
        if len(data["timesteps"]):
            mean = data["results"].mean(axis=1)
            std = data["results"].std(axis=1)
            ax.plot(data["timesteps"], mean, "o-", color="tab:blue", label="held-out eval (mean)")
            ax.fill_between(data["timesteps"], mean - std, mean + std, color="tab:blue", alpha=0.2)
            plotted = True
    if not plotted:
        plt.close(fig)
        return None
    ax.set_xlabel("timesteps (governor decisions)")
    ax.set_ylabel("episode return (nats of loss decrease)")
    ax.set_title(run.root.name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
