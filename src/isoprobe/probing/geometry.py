"""Geometry of the change between two representation spaces of the same rows (plain numpy, float64).

- `linear_cka`: linear CKA (Kornblith et al. 2019) of X [n, d1] and Y [n, d2];
- `label_centroids`: [L, d] mean row of each label;
- `centroid_distances`: [L, L] Euclidean distances between label centroids;
- `pair_vector`, `pair_names`: the label pairs i < j of an [L, L] matrix in row-major order
  (0|1, 0|2, ..., 0|L-1, 1|2, ...), as in np.triu_indices(L, 1);
- `spatial_similarity`: Pearson correlation of two label-pair distance vectors (Zhou & Srikumar 2022);
- `centroid_movement`, `relative_centroid_movement`: how far each label's centroid moved;
- `pca_2d`: one joint 2-D PCA of several point clouds, so that they share axes.

Undefined values are NaN: CKA of a constant cloud, a label without rows, a correlation over fewer than
2 pairs or of a constant vector.
"""

from __future__ import annotations

import numpy as np


def _centred(X: np.ndarray, name: str) -> np.ndarray:
    """Columns centred; a column whose spread is round-off relative to its magnitude becomes 0."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name} must be [n, d], got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} has non-finite values")
    Xc = X - X.mean(0)
    dead = np.abs(Xc).max(0, initial=0.0) <= 1e-12 * np.abs(X).max(0, initial=0.0)
    Xc[:, dead] = 0.0
    return Xc


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA of X [n, d1] and Y [n, d2] (rows paired): ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F
    ||Yc^T Yc||_F) with column-centred Xc, Yc; in [0, 1], 1 for X = Y. Computed in the feature form
    or the n x n Gram form, whichever is cheaper. NaN when either side is constant."""
    X, Y = _centred(X, "X"), _centred(Y, "Y")
    if len(X) != len(Y):
        raise ValueError(f"X and Y must have the same rows, got {X.shape} and {Y.shape}")
    nx, ny = np.linalg.norm(X), np.linalg.norm(Y)
    if nx == 0 or ny == 0:
        return float("nan")
    X, Y = X / nx, Y / ny  # scale-free; keeps the products far from overflow
    n, d1, d2 = len(X), X.shape[1], Y.shape[1]
    if n * (d1 + d2) < d1 * d2 + d1 * d1 + d2 * d2:
        K, L = X @ X.T, Y @ Y.T
        hsic, kx, ky = (K * L).sum(), np.linalg.norm(K), np.linalg.norm(L)
    else:
        hsic = np.linalg.norm(Y.T @ X) ** 2
        kx, ky = np.linalg.norm(X.T @ X), np.linalg.norm(Y.T @ Y)
    return float(hsic / (kx * ky))


def _codes(labels, y) -> np.ndarray:
    labels = np.asarray(labels).tolist()
    index = {c: i for i, c in enumerate(labels)}
    if len(index) != len(labels):
        raise ValueError(f"labels must be distinct, got {labels}")
    return np.array([index.get(v, -1) for v in np.asarray(y).tolist()], dtype=np.int64)


def label_centroids(X: np.ndarray, y, labels) -> np.ndarray:
    """[L, d] mean of the rows of X [n, d] with each label of `labels` (in that order); NaN row for
    a label without rows. Rows whose label is not in `labels` are left out."""
    X = np.asarray(X, dtype=np.float64)
    codes = _codes(labels, y)
    if X.ndim != 2 or len(X) != len(codes):
        raise ValueError(f"X must be [n, d] and y [n], got {X.shape} and {codes.shape}")
    onehot = (codes[None, :] == np.arange(len(np.asarray(labels)))[:, None]).astype(np.float64)
    counts = onehot.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, onehot @ X / counts, np.nan)


def centroid_distances(C: np.ndarray) -> np.ndarray:
    """[L, L] Euclidean distances between the rows of C [L, d] (NaN with a NaN row)."""
    C = np.asarray(C, dtype=np.float64)
    return np.sqrt(((C[:, None, :] - C[None, :, :]) ** 2).sum(-1))


def pair_vector(D: np.ndarray) -> np.ndarray:
    """[L(L-1)/2] entries i < j of a symmetric [L, L] matrix, row-major: (0,1), (0,2), ..., (1,2), ..."""
    D = np.asarray(D, dtype=np.float64)
    if D.ndim != 2 or D.shape[0] != D.shape[1]:
        raise ValueError(f"D must be a square [L, L] matrix, got shape {D.shape}")
    if not np.allclose(D, D.T, equal_nan=True):
        raise ValueError("D must be symmetric")
    return D[np.triu_indices(len(D), 1)]


def pair_names(labels) -> list[str]:
    """'a|b' names of the label pairs, in the order of `pair_vector`."""
    labels = np.asarray(labels).tolist()
    return [
        f"{labels[i]}|{labels[j]}" for i, j in zip(*np.triu_indices(len(labels), 1), strict=True)
    ]


def spatial_similarity(D1: np.ndarray, D2: np.ndarray) -> float:
    """Pearson correlation of two label-pair distance vectors: [L, L] matrices (their `pair_vector`)
    or [P] vectors. Pairs with NaN in either are left out; NaN for fewer than 2 pairs or when either
    vector is constant."""
    a, b = (np.asarray(D, dtype=np.float64) for D in (D1, D2))
    a, b = (pair_vector(v) if v.ndim == 2 else v for v in (a, b))
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"need two [L, L] matrices or two [P] vectors, got {a.shape}, {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 2:
        return float("nan")
    ac, bc = a - a.mean(), b - b.mean()
    na, nb = np.linalg.norm(ac), np.linalg.norm(bc)
    tiny = 1e-12 * np.sqrt(a.size)
    if na <= tiny * np.abs(a).max() or nb <= tiny * np.abs(b).max():
        return float("nan")
    return float(np.clip(ac @ bc / (na * nb), -1.0, 1.0))


def centroid_movement(C_before: np.ndarray, C_after: np.ndarray) -> np.ndarray:
    """[L] Euclidean distance each label's centroid moved (rows paired; NaN for a NaN row)."""
    C_before, C_after = (np.asarray(C, dtype=np.float64) for C in (C_before, C_after))
    if C_before.shape != C_after.shape or C_before.ndim != 2:
        raise ValueError(
            f"need two [L, d] arrays of one shape, got {C_before.shape}, {C_after.shape}"
        )
    return np.linalg.norm(C_after - C_before, axis=1)


def relative_centroid_movement(
    C_before: np.ndarray, C_after: np.ndarray, reference: str = "spread"
) -> np.ndarray:
    """[L] `centroid_movement` divided by a scale of C_before (over its non-NaN rows):
    - "spread": the mean distance of the centroids from their mean, i.e. movement in units of the
      size of the label configuration (blind to a shift shared by all embeddings);
    - "norm": the mean norm of the centroids (movement relative to where they sit in the space).
    NaN when the scale is 0 or undefined."""
    move = centroid_movement(C_before, C_after)
    C = np.asarray(C_before, dtype=np.float64)
    C = C[np.isfinite(C).all(1)]
    if reference == "spread":
        scale = np.linalg.norm(C - C.mean(0), axis=1).mean() if len(C) else np.nan
    elif reference == "norm":
        scale = np.linalg.norm(C, axis=1).mean() if len(C) else np.nan
    else:
        raise ValueError(f"reference must be 'spread' or 'norm', got {reference!r}")
    return move / scale if scale > 0 else np.full_like(move, np.nan)


def pca_2d(*clouds: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """One PCA fitted on the stacked rows of all clouds [n_i, d] (rows with NaN left out of the fit
    and given NaN coordinates). Returns ([n_i, 2] coordinates per cloud, [2] explained variance
    ratio). Sign rule: the largest-|loading| entry of each component (first on ties) is positive.
    With d = 1 or fewer than 3 rows the missing components are 0 (ratio 0); the ratios are NaN when
    all fitted rows coincide (or there are none)."""
    arrays = [np.atleast_2d(np.asarray(c, dtype=np.float64)) for c in clouds]
    if not arrays or len({a.shape[1] for a in arrays}) != 1 or arrays[0].ndim != 2:
        raise ValueError(f"need clouds [n_i, d] of one d, got {[a.shape for a in arrays]}")
    S = np.concatenate(arrays)
    ok = np.isfinite(S).all(1)
    Sc = S[ok] - S[ok].mean(0) if ok.any() else np.zeros((0, S.shape[1]))
    _, s, Vt = np.linalg.svd(Sc, full_matrices=False)
    comps = np.zeros((2, S.shape[1]))
    comps[: min(2, len(Vt))] = Vt[:2]
    comps *= np.where(comps[np.arange(2), np.abs(comps).argmax(1)] < 0, -1.0, 1.0)[:, None]
    var = np.zeros(2)
    var[: min(2, len(s))] = s[:2] ** 2
    total = (s**2).sum()
    ratio = var / total if total > 0 else np.full(2, np.nan)
    out = np.full((len(S), 2), np.nan)
    out[ok] = Sc @ comps.T
    return np.split(out, np.cumsum([len(a) for a in arrays])[:-1]), ratio
