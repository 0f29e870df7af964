"""Anisotropy of a point cloud X [N, H] (N embeddings of H dimensions), as plain numpy.

Statistics use the population convention (divide by N). The metrics:
- `centring_ratio`: ||mean(X)|| / mean_i ||x_i|| (0 for a centred cloud, 1 for identical points);
- `std_cv`, `std_max_median`: coefficient of variation and max/median ratio (median over the
  non-constant dimensions) of the per-dimension std;
- `corr_mean_abs`, `corr_share_above_<t>`: mean |rho_ij| over i != j and the share of such pairs with
  |rho_ij| > t (dimensions of zero variance are left out and counted in `constant_dims`);
- `var_share_top<k>`: share of the total variance in the k highest-variance dimensions;
  `l2_share_top<k>`: share of the squared L2 mass sum_i x_id^2 in the k heaviest dimensions;
- `mean_cosine`: mean cosine similarity over all pairs i != j, computed exactly from the sum of unit
  vectors: (||sum_i u_i||^2 - N) / (N (N - 1)) (the expectation over random pairs);
- `effective_rank`: exp of the entropy of the normalised covariance eigenvalues (Roy & Vetterli 2007);
  `participation_ratio`: (sum lambda)^2 / sum lambda^2;
- `isoscore`: IsoScore (Rudman et al. 2022), a function of the covariance eigenvalues: 1 for an
  isotropic cloud, (k - 1)/(H - 1) for a cloud spread evenly over k of H dimensions;
- `partition_isotropy`: I(W) = min_c Z(c) / max_c Z(c) with Z(c) = sum_i exp(c^T x_i) over the
  eigenvectors c of X^T X (Mu & Viswanath 2018), taken with both signs so the result does not depend
  on the arbitrary sign an eigen-solver returns.

A metric that is undefined for the cloud is NaN: for instance the spread metrics of the embedding-layer
[CLS] vector, which is the same for every input (zero variance in every dimension).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


def _fmt(t: float) -> str:
    return f"{t:g}"


def covariance_eigenvalues(cov: np.ndarray) -> np.ndarray:
    """Eigenvalues of a covariance matrix, descending, clipped at 0 (round-off)."""
    return np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)


def effective_rank(eig: np.ndarray) -> float:
    if not eig.sum() > 0:
        return float("nan")
    p = eig / eig.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def participation_ratio(eig: np.ndarray) -> float:
    return float(eig.sum() ** 2 / (eig**2).sum())


def isoscore(eig: np.ndarray) -> float:
    """IsoScore from the variances along the principal axes (the covariance eigenvalues)."""
    n = len(eig)
    sigma = eig * np.sqrt(n) / np.linalg.norm(eig)
    defect = np.linalg.norm(sigma - 1.0) / np.sqrt(2 * (n - np.sqrt(n)))
    # k = n - defect^2 (n - sqrt n) solves to sqrt(n k) for a cloud spread evenly over k dims.
    return float(((n - defect**2 * (n - np.sqrt(n))) ** 2 - n) / (n * (n - 1)))


def partition_isotropy(X: np.ndarray) -> float:
    """I(W) of Mu & Viswanath (2018) on the uncentred rows of X, in log space (no overflow)."""
    _, vecs = np.linalg.eigh(X.T @ X)
    proj = X @ vecs  # [N, H]
    log_z = np.concatenate([logsumexp(proj, axis=0), logsumexp(-proj, axis=0)])
    return float(np.exp(log_z.min() - log_z.max()))


def mean_cosine(X: np.ndarray) -> float:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    U = X / np.where(norms > 0, norms, 1.0)
    s = U.sum(0)
    n = len(X)
    k = (norms[:, 0] > 0).sum()  # zero rows have no direction: they add nothing to ||s||^2
    return float((s @ s - k) / (n * (n - 1)))


class Isotropy:
    """Estimator-like: `fit(X)` on X [N, H] sets `mean_`, `std_` ([H]), `eigenvalues_` ([H], descending),
    `corr_` ([H, H], NaN for constant dimensions) and `metrics_` (a dict of floats)."""

    def __init__(
        self, top_k: tuple[int, ...] | list[int] = (1, 5, 10), corr_threshold: float = 0.5
    ):
        self.top_k = tuple(top_k)
        self.corr_threshold = corr_threshold

    def fit(self, X: np.ndarray) -> Isotropy:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._fit(np.asarray(X, dtype=np.float64))

    def _fit(self, X: np.ndarray) -> Isotropy:
        if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 2:
            raise ValueError(f"expected X of shape [N >= 2, H >= 2], got {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("X has non-finite values")
        n, h = X.shape
        mean = X.mean(0)
        Xc = X - mean
        cov = Xc.T @ Xc / n
        var = np.clip(np.diag(cov).copy(), 0.0, None)
        std = np.sqrt(var)
        # A dimension is constant when its spread is round-off relative to the data's magnitude
        # (the mean of identical floats is not always exactly that float).
        live = std > 1e-10 * max(np.abs(X).max(), 1e-300)
        std[~live], var[~live] = 0.0, 0.0
        cov[~live, :], cov[:, ~live] = 0.0, 0.0
        corr = np.full((h, h), np.nan)
        corr[np.ix_(live, live)] = np.clip(
            cov[np.ix_(live, live)] / np.outer(std[live], std[live]), -1, 1
        )
        off = corr[np.ix_(live, live)][~np.eye(live.sum(), dtype=bool)]
        eig = covariance_eigenvalues(cov)
        mass = (X**2).sum(0)
        m: dict[str, float] = {
            "n_rows": float(n),
            "dim": float(h),
            "centring_ratio": float(np.linalg.norm(mean) / np.linalg.norm(X, axis=1).mean()),
            "std_mean": float(std.mean()),
            "std_cv": float(std.std() / std.mean()),
            "std_max_median": float(std.max() / np.median(std[live])) if live.any() else np.nan,
            "corr_mean_abs": float(np.abs(off).mean()) if off.size else np.nan,
            f"corr_share_above_{_fmt(self.corr_threshold)}": float(
                (np.abs(off) > self.corr_threshold).mean()
            )
            if off.size
            else np.nan,
            "constant_dims": float((~live).sum()),
        }
        var_sorted, mass_sorted = np.sort(var)[::-1], np.sort(mass)[::-1]
        for k in self.top_k:
            m[f"var_share_top{k}"] = float(var_sorted[:k].sum() / var_sorted.sum())
        for k in self.top_k:
            m[f"l2_share_top{k}"] = float(mass_sorted[:k].sum() / mass_sorted.sum())
        m.update(
            mean_cosine=mean_cosine(X),
            effective_rank=effective_rank(eig),
            participation_ratio=participation_ratio(eig),
            isoscore=isoscore(eig),
            partition_isotropy=partition_isotropy(X),
        )
        self.mean_, self.std_, self.eigenvalues_, self.corr_, self.metrics_ = (
            mean,
            std,
            eig,
            corr,
            m,
        )
        return self


def isotropy_metrics(
    X: np.ndarray, top_k=(1, 5, 10), corr_threshold: float = 0.5
) -> dict[str, float]:
    """The metrics of `Isotropy(top_k, corr_threshold).fit(X)`."""
    return Isotropy(top_k, corr_threshold).fit(X).metrics_
