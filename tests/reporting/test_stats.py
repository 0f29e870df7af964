"""Seed statistics: describe, the exact sign-flip test, the bootstrap interval, paired comparison,
Holm's adjustment and the degenerate-run rate."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from isoprobe.reporting.stats import (
    bootstrap_ci,
    degenerate_rate,
    describe,
    holm_adjust,
    min_attainable_p,
    paired_comparison,
    sign_flip_p_value,
)

# describe ---------------------------------------------------------------------------------------


def test_describe_hand_computed():
    # mean 4; deviations -3, -2, -1, 6 -> squares 9 + 4 + 1 + 36 = 50; var (ddof=1) = 50 / 3
    # std = sqrt(16.666...) = 4.08248290463863
    s = describe([1, 2, 3, 10])
    assert s["n"] == 4
    assert s["median"] == 2.5
    assert s["std"] == pytest.approx(4.08248290463863, rel=1e-12)
    assert s["mean"] == 4.0
    assert s["min"] == 1.0
    assert s["max"] == 10.0
    assert all(type(s[k]) is float for k in ("median", "std", "mean", "min", "max"))
    assert type(s["n"]) is int


def test_describe_odd_count_median_and_single_seed():
    # [5, 1, 3]: sorted 1, 3, 5 -> median 3; mean 3; var = (4 + 0 + 4) / 2 = 4 -> std 2
    s = describe(np.array([5.0, 1.0, 3.0]))
    assert (s["median"], s["mean"], s["std"]) == (3.0, 3.0, 2.0)
    one = describe([0.7])
    assert one == {"n": 1, "median": 0.7, "std": 0.0, "mean": 0.7, "min": 0.7, "max": 0.7}


def test_describe_errors():
    with pytest.raises(ValueError, match="empty"):
        describe([])
    with pytest.raises(ValueError, match=r"non-finite.*\[1\].*nan"):
        describe([1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match=r"non-finite.*\[0, 2\]"):
        describe([float("inf"), 1.0, float("-inf")])
    with pytest.raises(ValueError, match="1-D"):
        describe([[1.0, 2.0], [3.0, 4.0]])


# sign-flip test -----------------------------------------------------------------------------------


def brute_force_p(diffs) -> float:
    """Independent reference: loop over every sign pattern with itertools.product."""
    d = [float(x) for x in diffs]
    observed = abs(sum(d)) / len(d)
    hits = total = 0
    for signs in itertools.product((1, -1), repeat=len(d)):
        m = abs(sum(s * x for s, x in zip(signs, d, strict=True))) / len(d)
        hits += m >= observed - 1e-9
        total += 1
    return hits / total


def test_sign_flip_three_positive_diffs():
    # diffs [1, 2, 3]: 8 patterns; signed sums 6, 4, 2, 0, 0, -2, -4, -6 (by how much is flipped);
    # |sum| >= 6 only for all-plus and all-minus -> p = 2 / 8 = 0.25
    assert sign_flip_p_value([1, 2, 3]) == 0.25


def test_sign_flip_mixed_signs():
    # diffs [1, -1, 2, 3]: observed sum 5; magnitudes {1, 1, 2, 3} total 7. Flipping a subset with
    # magnitude sum s gives 7 - 2s, and |7 - 2s| >= 5 iff s <= 1 or s >= 6. Subsets (16): s = 0 (1),
    # s = 1 (2: either 1), s = 6 (2: {1, 2, 3} with either 1), s = 7 (1) -> 6 / 16 = 0.375
    assert sign_flip_p_value([1, -1, 2, 3]) == 0.375


def test_sign_flip_ties_and_float_tolerance():
    # [1, 1]: sums 2, 0, 0, -2; |sum| >= 2 for 2 of 4 -> 0.5
    assert sign_flip_p_value([1, 1]) == 0.5
    # [0.1, 0.2, -0.3]: mean is 0 in exact arithmetic, so every pattern counts -> 1.0, even though
    # the float sums are off by ~1e-17 in different directions
    assert sign_flip_p_value([0.1, 0.2, -0.3]) == 1.0
    # [0.1, 0.2, 0.3, -0.6, 0.05]: observed sum 0.05; the first four signed take only even multiples
    # of 0.1 (1.2 - 2 * subset sum), so every pattern has |sum| >= 0.05 -> p = 1.0 exactly; the
    # patterns that tie at 0.05 sum in another order, and without the tolerance one pair is lost
    assert sign_flip_p_value([0.1, 0.2, 0.3, -0.6, 0.05]) == 1.0
    # the observed pattern always counts, whatever the rounding
    for x in ([0.1, 0.2, 0.3], [1e-8, 3e-8, 7e-9], [1e6, 0.1, 0.2]):
        assert sign_flip_p_value(x) >= min_attainable_p(len(x))


def test_sign_flip_degenerate():
    assert sign_flip_p_value([0.0, 0.0, 0.0]) == 1.0
    assert sign_flip_p_value([2.5]) == 1.0  # one pair: both patterns have |mean| 2.5


def test_sign_flip_matches_brute_force_random_n8():
    rng = np.random.default_rng(1234)
    for shift in (0.0, 0.5, 1.5):
        d = rng.normal(shift, 1.0, size=8)
        assert sign_flip_p_value(d) == pytest.approx(brute_force_p(d), abs=1e-15)
    # integer diffs: many exact ties between patterns
    d = rng.integers(-3, 4, size=8)
    assert sign_flip_p_value(d) == pytest.approx(brute_force_p(d), abs=1e-15)


def test_sign_flip_is_symmetric_in_sign():
    d = [0.3, -0.1, 0.7, 0.2, -0.4]
    assert sign_flip_p_value(d) == sign_flip_p_value([-x for x in d])


def test_sign_flip_errors():
    with pytest.raises(ValueError, match="empty"):
        sign_flip_p_value([])
    with pytest.raises(ValueError, match="n = 21 > 20"):
        sign_flip_p_value(np.ones(21))
    with pytest.raises(ValueError, match="non-finite"):
        sign_flip_p_value([1.0, float("nan")])
    assert sign_flip_p_value(np.ones(20)) == min_attainable_p(20)  # 20 is still allowed


def test_min_attainable_p():
    assert min_attainable_p(1) == 1.0
    assert min_attainable_p(2) == 0.5
    assert min_attainable_p(5) == 1 / 16
    assert min_attainable_p(6) == 1 / 32
    with pytest.raises(ValueError, match="n >= 1"):
        min_attainable_p(0)


# bootstrap --------------------------------------------------------------------------------------


def test_bootstrap_contains_mean_and_is_deterministic():
    d = [0.2, 1.1, -0.4, 0.9, 0.5, 1.7, 0.3]
    low, high = bootstrap_ci(d, seed=7)
    assert low < np.mean(d) < high
    assert min(d) <= low and high <= max(d)
    assert bootstrap_ci(d, seed=7) == (low, high)
    assert bootstrap_ci(d, seed=8) != (low, high)
    assert isinstance(low, float) and isinstance(high, float)


def test_bootstrap_level_widens_interval():
    d = [0.2, 1.1, -0.4, 0.9, 0.5, 1.7, 0.3]
    low90, high90 = bootstrap_ci(d, level=0.90)
    low99, high99 = bootstrap_ci(d, level=0.99)
    assert low99 <= low90 and high90 <= high99


def test_bootstrap_symmetric_data_gives_symmetric_percentiles():
    # [-3, -1, 0, 1, 3]: the bootstrap mean is symmetric about 0 with sd sqrt(4 / 5) = 0.894,
    # so the 95% interval is about +-1.96 * 0.894 = +-1.75 (not clipped at the 95th percentile)
    low, high = bootstrap_ci([-3, -1, 0, 1, 3])
    assert low == pytest.approx(-high, abs=0.05)
    assert 1.6 < high < 1.95


def test_bootstrap_shrinks_as_data_concentrate():
    d = np.array([0.2, 1.1, -0.4, 0.9, 0.5, 1.7, 0.3])
    m = d.mean()
    low, high = bootstrap_ci(d)
    # the same resample indices for the same seed: squeezing the data 10x squeezes the interval 10x
    low_c, high_c = bootstrap_ci(m + 0.1 * (d - m))
    assert high_c - low_c == pytest.approx(0.1 * (high - low), rel=1e-9)
    assert low < low_c < m < high_c < high


def test_bootstrap_point_cases():
    low, high = bootstrap_ci([0.3, 0.3, 0.3, 0.3])
    assert low == high == pytest.approx(0.3)
    assert bootstrap_ci([1.25]) == (1.25, 1.25)


def test_bootstrap_errors():
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], level=1.0)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci([1.0, 2.0], n_boot=0)


# paired comparison --------------------------------------------------------------------------------

BASE6 = [0.80, 0.82, 0.79, 0.81, 0.83, 0.80]


def test_paired_six_seeds_clear_improvement():
    # all 6 diffs positive -> only all-plus and all-minus reach |mean| -> p = 2 / 64 = 0.03125
    gains = [0.01, 0.02, 0.015, 0.03, 0.01, 0.025]
    values = [b + g for b, g in zip(BASE6, gains, strict=True)]
    r = paired_comparison(values, BASE6)
    assert r["n"] == 6
    assert r["p_value"] == 0.03125
    assert r["min_p"] == 0.03125
    assert r["conclusive"] is True and r["significant"] is True
    assert r["delta_mean"] == pytest.approx(0.11 / 6)
    assert r["delta_median"] == pytest.approx(0.0175)  # sorted gains: ..., 0.015, 0.02, ...
    assert 0 < r["ci_low"] < r["delta_mean"] < r["ci_high"]
    assert r["note"] == "improvement significant at alpha = 0.05 (p = 0.0312)"
    assert set(r) == {
        "n",
        "delta_mean",
        "delta_median",
        "p_value",
        "ci_low",
        "ci_high",
        "min_p",
        "conclusive",
        "significant",
        "note",
    }


def test_paired_six_seeds_clear_decline():
    values = [b - 0.02 for b in BASE6]
    r = paired_comparison(values, BASE6)
    assert r["significant"] is True and r["delta_mean"] < 0
    assert r["note"].startswith("decline significant at alpha = 0.05")


def test_paired_two_seeds_too_few():
    r = paired_comparison([0.90, 0.91], [0.80, 0.81])
    assert r["min_p"] == 0.5 and r["p_value"] == 0.5
    assert r["conclusive"] is False and r["significant"] is False
    assert r["note"] == (
        "2 seeds: the exact sign-flip test cannot go below p = 0.5, "
        "too few seeds for a claim at alpha = 0.05"
    )
    assert paired_comparison([0.9], [0.8])["note"].startswith("1 seed: ")


def test_paired_five_seeds_all_positive_is_not_enough_at_005():
    # min p with 5 seeds is 1/16 = 0.0625 > 0.05, however big the gain
    r = paired_comparison([1.0] * 5, [0.0] * 5)
    assert r["p_value"] == 0.0625
    assert r["conclusive"] is False and r["significant"] is False
    assert "cannot go below p = 0.0625" in r["note"]
    # alpha exactly at the smallest attainable p is conclusive (min_p <= alpha)
    assert paired_comparison([1.0] * 5, [0.0] * 5, alpha=0.0625)["significant"] is True
    # ... and so is alpha = 0.1
    r10 = paired_comparison([1.0] * 5, [0.0] * 5, alpha=0.1)
    assert r10["significant"] is True
    assert r10["note"] == "improvement significant at alpha = 0.1 (p = 0.0625)"


def test_paired_no_significant_difference():
    diffs = [0.01, -0.01, 0.02, -0.02, 0.005, -0.003]
    values = [b + g for b, g in zip(BASE6, diffs, strict=True)]
    r = paired_comparison(values, BASE6)
    assert r["conclusive"] is True and r["significant"] is False
    assert r["p_value"] == pytest.approx(brute_force_p(np.subtract(values, BASE6)))
    assert r["p_value"] > 0.5
    assert r["note"] == f"no significant difference (p = {r['p_value']:.3g})"
    assert r["ci_low"] < 0 < r["ci_high"]


def test_paired_is_deterministic_for_seed():
    values = [b + 0.01 * i for i, b in enumerate(BASE6)]
    assert paired_comparison(values, BASE6, seed=3) == paired_comparison(values, BASE6, seed=3)


def test_paired_errors():
    with pytest.raises(ValueError, match=r"len\(values\) = 3.*len\(baseline\) = 2"):
        paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="baseline has non-finite"):
        paired_comparison([1.0, 2.0], [1.0, math.inf])
    with pytest.raises(ValueError, match="values is empty"):
        paired_comparison([], [])
    with pytest.raises(ValueError, match="alpha"):
        paired_comparison([1.0, 2.0], [0.0, 0.0], alpha=0.0)


# Holm-Bonferroni --------------------------------------------------------------------------------


def test_holm_hand_computed():
    # sorted: .005 .01 .03 .04 -> 4 x .005 = .02, 3 x .01 = .03, 2 x .03 = .06, max(.06, .04) = .06
    adjusted = holm_adjust([0.01, 0.04, 0.03, 0.005])
    assert adjusted.tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_ties_cap_and_single():
    assert holm_adjust([0.02, 0.02, 0.5]).tolist() == pytest.approx([0.06, 0.06, 0.5])
    assert holm_adjust([0.4, 0.6]).tolist() == pytest.approx([0.8, 0.8])
    assert holm_adjust([0.6, 0.7]).tolist() == [1.0, 1.0]
    assert holm_adjust([0.03]).tolist() == [0.03]
    # the sign-flip test's smallest p with 10 seeds, over 20 comparisons: 20 x 2/1024
    assert holm_adjust([2 / 1024] * 20).tolist() == pytest.approx([40 / 1024] * 20)


def _holm_rejections(p: np.ndarray, alpha: float) -> set[int]:
    """Holm's step-down procedure as stated: walk the sorted p-values, reject while
    p_(k) <= alpha / (m - k + 1) (k from 1), stop at the first that is not."""
    m, out = len(p), set()
    for k, i in enumerate(sorted(range(m), key=lambda j: p[j]), start=1):
        if p[i] > alpha / (m - k + 1):
            break
        out.add(i)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_holm_adjusted_p_rejects_what_the_step_down_procedure_rejects(seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 0.1, size=12) ** rng.uniform(0.5, 2)
    adjusted = holm_adjust(p)
    assert (adjusted >= p).all() and (adjusted <= 1).all()
    for alpha in (0.01, 0.05, 0.1, 0.2):
        assert {i for i in range(12) if adjusted[i] <= alpha} == _holm_rejections(p, alpha)


def test_holm_errors():
    with pytest.raises(ValueError, match="empty"):
        holm_adjust([])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm_adjust([0.5, 1.5])


def test_degenerate_rate():
    assert degenerate_rate([True, False, None, False]) == pytest.approx(1 / 3)
    assert degenerate_rate([False, False]) == 0.0
    assert degenerate_rate([None]) is None and degenerate_rate([]) is None
