"""Confidence intervals and tests that keep their nominal coverage at 2-10 seeds.

Why not the percentile bootstrap any more: with 2-3 seeds its "95 %" interval is just [min, max] of the
resampled means, and in simulation (2000 normal samples) it covered the true mean in 74 % of them at n = 3,
83 % at n = 5 and 90 % at n = 10 (BCa: 91 % at n = 10). Evaluations here run 2-5 seeds, so every interval
is a Student-t interval, whose coverage is exact for normal data at any n >= 2 (``tests/test_stats.py`` checks
93-97 % at n = 5 and n = 10 on 2000 samples):

* a single arm's mean over seeds: :func:`t_interval`;
* a paired comparison (same scenario and seed, so the same initialisation, batches and faults): the t interval
  of the per-seed differences and the paired t-test, :func:`paired` — this interval is the one the report's
  words rest on. Wilcoxon's signed-rank test is not used: at n <= 5 its smallest two-sided p-value is
  2 / 2^n >= 0.0625, so it can never reject at 5 %, and its verdict could disagree with the stated interval;
  the t-test's p < 0.05 holds exactly when the t interval excludes 0;
* where n >= 10, also the BCa bootstrap interval of the mean difference (``scipy.stats.bootstrap``), shown
  beside the t interval as a check on non-normal differences, never used for the words;
* across scenarios: the interquartile mean (IQM) of normalised scores with a stratified percentile bootstrap
  (runs resampled within each scenario), the aggregate of Agarwal et al. 2021 (``rliable``); implemented here
  on numpy and scipy because ``rliable`` needs ``arch<8``, which does not import under pandas 3
  (``TypeError: deprecate_kwarg()``). It is descriptive: no words rest on it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
from scipy import stats as sps

from .records import as_float

LEVEL = 0.95
N_RESAMPLES = 10_000
"""Bootstrap resamples (BCa intervals and the IQM aggregate)."""
BCA_MIN_N = 10
"""BCa intervals only from this many paired seeds on (below it the bootstrap has too few distinct resamples)."""


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A mean over seeds with a confidence interval (``lo``/``hi`` NaN where none can be computed)."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def has_ci(self) -> bool:
        return self.n > 1 and math.isfinite(self.lo) and math.isfinite(self.hi)

    def excludes(self, value: float = 0.0) -> bool:
        """True when the interval lies wholly above or below ``value`` (only then may the report use words)."""
        return self.has_ci and (self.hi < value or self.lo > value)

    def fmt(self, fmt: str = "{:.1f}", ci: bool = True) -> str:
        if self.n == 0:
            return "—"
        text = fmt_num(self.mean, fmt)
        if ci and self.has_ci:
            text += f" [{fmt_num(self.lo, fmt)}, {fmt_num(self.hi, fmt)}]"
        return text


def fmt_num(x: float, fmt: str = "{:.1f}") -> str:
    """``fmt`` for finite numbers; ``nan``, ``∞`` and ``−∞`` spelled out (a diverged run is a fact to show)."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return fmt.format(x)


def _clean(values: Iterable[float]) -> np.ndarray:
    """Record numbers as floats, NaNs dropped (a missing value is no observation)."""
    return np.asarray([v for v in (as_float(v) for v in values) if not math.isnan(v)], dtype=np.float64)


def t_interval(values: Iterable[float], level: float = LEVEL) -> Estimate:
    """Mean with the Student-t interval ``mean ± t_{n-1} · s / √n``.

    A non-finite value (a diverged run's infinite perplexity) makes the mean non-finite and leaves no interval:
    the honest answer, and the divergence is counted and shown elsewhere. One value: no interval.
    """
    x = _clean(values)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    with np.errstate(invalid="ignore", over="ignore"):
        mean = float(np.mean(x))
    if n == 1 or not np.isfinite(x).all():
        return Estimate(mean, math.nan, math.nan, n)
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * float(np.std(x, ddof=1)) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def runs_for_half_width(values: Iterable[float], half_width: float, level: float = LEVEL, most: int = 100_000) -> int:
    """How many values a Student-t interval needs for ``mean ± half_width`` at the spread (sample sd) of these:
    the least ``n`` with ``t_{n-1} · s / √n ≤ half_width`` (``most`` + 1 where even ``most`` is not enough). A
    planning figure, not a guarantee: the sd of a few values is itself uncertain. Needs two finite values."""
    x = _clean(values)
    if len(x) < 2 or not np.isfinite(x).all() or not half_width > 0:
        raise ValueError("runs_for_half_width: needs two or more finite values and a positive half-width")
    sd = float(np.std(x, ddof=1))
    z = float(sps.norm.ppf(0.5 + level / 2))
    n = max(2, min(most + 1, math.ceil((z * sd / half_width) ** 2)))  # the normal's n: a floor, t_{n-1} > z
    while n <= most and float(sps.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n) > half_width:
        n += 1
    return n


def geometric_t_interval(values: Iterable[float], level: float = LEVEL) -> Estimate:
    """Geometric mean with the Student-t interval of the logs, mapped back: for perplexities.

    A perplexity is ``exp(loss)``; the loss is what averages and paired differences are taken on. An arithmetic
    interval of raw perplexities is dominated by one blown-up seed and goes negative (measured: AdamW under a
    x300 LR shock, one seed at 1e11, gave [-4e10, 1e11]); this one is always positive and matches the paired
    log-perplexity differences the words rest on. Non-finite values behave as in :func:`t_interval`.
    """
    x = _clean(values)
    with np.errstate(divide="ignore", invalid="ignore"):
        e = t_interval(np.log(x), level)
    with np.errstate(over="ignore"):
        mean, lo, hi = (float(np.exp(v)) for v in (e.mean, e.lo, e.hi))
    return Estimate(mean, lo, hi, e.n)


def geometric_mean(values: Iterable[float]) -> float:
    """``exp(mean(log x))``: the perplexity of the mean loss (non-finite values give a non-finite result)."""
    return geometric_t_interval(values).mean


def t_test_p(values: Iterable[float]) -> float:
    """Two-sided one-sample t-test of mean 0 (on paired differences: the paired t-test); NaN if untestable.

    Zero spread: p = 1 for an all-zero sample (identical arms), 0 otherwise (a constant non-zero shift), which is
    what the t interval (then a single point) says too."""
    x = _clean(values)
    if len(x) < 2 or not np.isfinite(x).all():
        return math.nan
    if float(np.std(x, ddof=1)) == 0.0:
        return 1.0 if float(np.mean(x)) == 0.0 else 0.0
    return float(sps.ttest_1samp(x, 0.0).pvalue)


def bca_interval(
    values: Iterable[float], level: float = LEVEL, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> Estimate:
    """Mean with the BCa bootstrap interval (``scipy.stats.bootstrap``, seeded); NaN bounds where undefined
    (fewer than 2 values, non-finite values, or no spread)."""
    x = _clean(values)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(np.mean(x)) if np.isfinite(x).all() else math.nan
    if n < 2 or not np.isfinite(x).all() or float(np.ptp(x)) == 0.0:
        return Estimate(mean, math.nan, math.nan, n)
    res = sps.bootstrap(
        (x,),
        np.mean,
        confidence_level=level,
        n_resamples=n_resamples,
        method="BCa",
        rng=np.random.default_rng(seed),
    )
    return Estimate(mean, float(res.confidence_interval.low), float(res.confidence_interval.high), n)


@dataclasses.dataclass(frozen=True)
class Paired:
    """A paired comparison: per-seed differences ``arm − reference`` of a log perplexity (i.e. of the loss, in
    nats), their mean with the t interval (:attr:`diff`), the paired t-test's p-value, and BCa where n >= 10.

    Log perplexity, not perplexity: a ratio of perplexities is a difference of losses, roughly symmetric and
    normal across seeds; as a percentage it reads ``100 · (exp(Δ) − 1)`` (the geometric-mean ratio), and the
    interval excludes 0 exactly when the percentage interval does."""

    diff: Estimate
    p: float
    bca: Estimate | None = None

    @property
    def n(self) -> int:
        return self.diff.n

    @property
    def pct(self) -> Estimate:
        """The difference as a percentage of the reference's perplexity, interval back-transformed."""
        return _pct(self.diff)

    @property
    def bca_pct(self) -> Estimate | None:
        return None if self.bca is None else _pct(self.bca)

    @property
    def ratio(self) -> Estimate:
        """The difference as a ratio of perplexities, ``exp(Δ)`` (the geometric-mean ratio), bounds transformed."""
        return _transform(self.diff, math.exp)

    def direction(self) -> str:
        """``lower`` / ``higher`` where the t interval excludes 0, ``none`` where it does not, ``n/a`` without one."""
        if not self.diff.has_ci:
            return "n/a"
        if self.diff.hi < 0:
            return "lower"
        if self.diff.lo > 0:
            return "higher"
        return "none"


def _transform(e: Estimate, fn: Callable[[float], float]) -> Estimate:
    """``e`` with ``fn`` (increasing) applied to its mean and bounds; NaN stays NaN, overflow is ∞."""

    def f(x: float) -> float:
        if math.isnan(x):
            return math.nan
        try:
            return fn(x)
        except OverflowError:
            return math.inf

    return Estimate(f(e.mean), f(e.lo), f(e.hi), e.n)


def _pct(e: Estimate) -> Estimate:
    return _transform(e, lambda x: 100.0 * math.expm1(x))


def paired(diffs: Sequence[float], level: float = LEVEL, n_resamples: int = N_RESAMPLES, seed: int = 0) -> Paired:
    """The paired comparison of per-seed differences (see :class:`Paired`); BCa only from :data:`BCA_MIN_N`."""
    x = _clean(diffs)
    bca = bca_interval(x, level, n_resamples, seed) if len(x) >= BCA_MIN_N else None
    return Paired(t_interval(x, level), t_test_p(x), bca)


# ----------------------------------------------------------------------------------------------------------
# Aggregates across scenarios (rliable's method)
# ----------------------------------------------------------------------------------------------------------


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50 % (``scipy.stats.trim_mean(x, 0.25)``, as rliable)."""
    with np.errstate(invalid="ignore"):
        return sps.trim_mean(x, 0.25, axis=axis)


def stratified_iqm(
    scores: Mapping[str, Sequence[float]], level: float = LEVEL, n_resamples: int = 2000, seed: int = 0
) -> Estimate:
    """IQM over all runs of all scenarios (``{scenario: per-run scores}``) with a stratified percentile bootstrap
    CI: each resample draws every scenario's runs with replacement, within that scenario (rliable's
    ``get_interval_estimates`` with ``StratifiedBootstrap``). NaN scores are dropped; ``n`` counts runs."""
    tasks = [np.asarray([as_float(v) for v in vs if not math.isnan(as_float(v))]) for vs in scores.values()]
    tasks = [t for t in tasks if len(t)]
    if not tasks:
        return Estimate(math.nan, math.nan, math.nan, 0)
    flat = np.concatenate(tasks)
    point = float(iqm(flat))
    if len(flat) < 2:
        return Estimate(point, math.nan, math.nan, len(flat))
    rng = np.random.default_rng(seed)
    draws = np.concatenate([t[rng.integers(0, len(t), size=(n_resamples, len(t)))] for t in tasks], axis=1)
    boot = iqm(draws, axis=1)
    alpha = (1 - level) / 2
    method: Literal["linear", "nearest"] = "linear" if np.isfinite(boot).all() else "nearest"
    lo, hi = np.quantile(boot, [alpha, 1 - alpha], method=method)
    return Estimate(point, float(lo), float(hi), len(flat))


def performance_profile(scores: Sequence[float], taus: Sequence[float] | np.ndarray) -> np.ndarray:
    """Fraction of runs whose score is at or below each ``tau`` (for ratios to a reference, lower is better):
    rliable's performance profile, read as "in what share of runs did the arm stay within tau x the reference"."""
    x = np.asarray([as_float(v) for v in scores], dtype=np.float64)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return np.full(len(taus), math.nan)
    return np.asarray([(x <= t).mean() for t in taus], dtype=np.float64)
