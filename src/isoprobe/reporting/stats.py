"""Statistics over random seeds for comparing fine-tuning methods.

Following the IsoBN paper, a method's score is summarised by the median and std over seeds; a
method is compared with a baseline by pairing runs that share a seed (diff = method - baseline),
an exact two-sided sign-flip (paired permutation) test of mean diff == 0 and a percentile bootstrap
interval of the mean diff. The p-values of a family of comparisons (every task x method of a grid)
are adjusted for multiple comparisons by Holm's step-down method, and a method's rate of degenerate
runs (a test score no better than a constant prediction's) is counted. All scores are plain floats
in whatever unit the caller uses.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

MAX_EXACT_N = 20  # 2**20 sign patterns: about 8 MB of float64 sums


def _as_1d(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """[n] float64 copy of `values`; ValueError if empty, not 1-D, or not all finite."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty: need at least one value (one per seed)")
    bad = ~np.isfinite(x)
    if bad.any():
        idx = np.flatnonzero(bad).tolist()
        raise ValueError(f"{name} has non-finite values at positions {idx}: {x[bad].tolist()}")
    return x


def finite(x: object) -> bool:
    """A real number that is not NaN or infinite (None, NaN, text, bool: False)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and bool(np.isfinite(x))


def finite_median(values: Sequence[object]) -> float | None:
    """Median of the finite numbers among `values` (the others are left out); None when none is."""
    v = [x for x in values if finite(x)]
    return float(np.median(v)) if v else None


def describe(values: Sequence[float] | np.ndarray) -> dict:
    """Summary of per-seed scores [n]: n, median, std (sample, ddof=1; 0.0 when n == 1), mean,
    min, max, all in the unit of `values`."""
    x = _as_1d(values, "values")
    n = int(x.size)
    return {
        "n": n,
        "median": float(np.median(x)),
        "std": float(np.std(x, ddof=1)) if n > 1 else 0.0,
        "mean": float(np.mean(x)),
        "min": float(np.min(x)),
        "max": float(np.max(x)),
    }


def sign_flip_p_value(diffs: Sequence[float] | np.ndarray) -> float:
    """Exact two-sided sign-flip test of mean(diffs) == 0 for paired diffs [n], n <= 20.

    Enumerates all 2**n sign patterns; p is the fraction whose |mean| is >= the observed |mean|
    (up to a 1e-12 relative tolerance, so the observed pattern and its mirror always count)."""
    d = _as_1d(diffs, "diffs")
    n = d.size
    if n > MAX_EXACT_N:
        raise ValueError(f"exact sign-flip test enumerates 2**n patterns: n = {n} > {MAX_EXACT_N}")
    if not d.any():
        return 1.0
    sums = np.zeros(1)
    for v in d:  # sums over all sign patterns, built by doubling: [2**n]
        sums = np.concatenate([sums + v, sums - v])
    observed = abs(d.sum())
    tol = 1e-12 * float(np.abs(d).sum())
    return float(np.count_nonzero(np.abs(sums) >= observed - tol) / sums.size)


def holm_adjust(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values [m] of a family of m tests, in the order given.

    With the p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted p_(i) is
    max over j <= i of min(1, (m - j + 1) * p_(j)) (Holm 1979): rejecting where adjusted p <= alpha
    keeps the family-wise error rate at alpha. Tied p-values get the same adjusted value."""
    p = _as_1d(p_values, "p_values")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"p_values must lie in [0, 1], got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])  # (m - j + 1) p_(j), j from 1
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def degenerate_rate(flags: Sequence[bool]) -> float | None:
    """Share of degenerate runs among `flags` (one per run; None: undecidable, left out); None when
    no run could be decided."""
    known = [bool(f) for f in flags if f is not None]
    return sum(known) / len(known) if known else None


def min_attainable_p(n: int) -> float:
    """Smallest p the exact two-sided sign-flip test can give with n >= 1 pairs: 2 / 2**n."""
    if n < 1:
        raise ValueError(f"need n >= 1 pairs, got {n}")
    return 2.0 / 2.0**n


def bootstrap_ci(
    diffs: Sequence[float] | np.ndarray, level: float = 0.95, n_boot: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) of mean(diffs) for diffs [n], at confidence
    `level`, from `n_boot` resamples with replacement drawn by default_rng(seed). n == 1 -> (d, d)."""
    d = _as_1d(diffs, "diffs")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if d.size == 1:
        return float(d[0]), float(d[0])
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)  # [n_boot]
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_comparison(
    values: Sequence[float] | np.ndarray,
    baseline: Sequence[float] | np.ndarray,
    alpha: float = 0.05,
    seed: int = 0,
    n_boot: int = 10000,
) -> dict:
    """Compare per-seed scores `values` [n] with `baseline` [n], paired by seed (same order).

    Returns n, delta_mean, delta_median (of values - baseline), p_value (exact sign-flip),
    ci_low/ci_high (bootstrap interval of delta_mean at 1 - alpha from `n_boot` resamples drawn
    with `seed`), min_p (smallest attainable p),
    conclusive (min_p <= alpha), significant (conclusive and p_value <= alpha) and a one-line note."""
    v = _as_1d(values, "values")
    b = _as_1d(baseline, "baseline")
    if v.size != b.size:
        raise ValueError(
            f"values and baseline must pair by seed: len(values) = {v.size}, "
            f"len(baseline) = {b.size}"
        )
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    d = v - b
    n = int(d.size)
    p = sign_flip_p_value(d)
    low, high = bootstrap_ci(d, level=1.0 - alpha, n_boot=n_boot, seed=seed)
    min_p = min_attainable_p(n)
    conclusive = min_p <= alpha
    significant = conclusive and p <= alpha
    delta_mean = float(d.mean())
    return {
        "n": n,
        "delta_mean": delta_mean,
        "delta_median": float(np.median(d)),
        "p_value": p,
        "ci_low": low,
        "ci_high": high,
        "min_p": min_p,
        "conclusive": conclusive,
        "significant": significant,
        "note": _note(n, delta_mean, p, alpha),
    }


def _note(n: int, delta_mean: float, p: float, alpha: float) -> str:
    """One line on a comparison of `n` pairs: too few seeds for a claim at `alpha`, or whether
    the mean difference is significant."""
    min_p = min_attainable_p(n)
    if min_p > alpha:
        seeds = "1 seed" if n == 1 else f"{n} seeds"
        return (
            f"{seeds}: the exact sign-flip test cannot go below p = {min_p:.3g}, "
            f"too few seeds for a claim at alpha = {alpha:g}"
        )
    if p <= alpha:
        kind = "improvement" if delta_mean > 0 else "decline"
        return f"{kind} significant at alpha = {alpha:g} (p = {p:.3g})"
    return f"no significant difference (p = {p:.3g})"
