"""DirectProbe (Zhou & Srikumar, NAACL 2021): the clusters a labelled point set forms under linear separation.

Definition: start from one cluster per point; repeatedly take the closest pair of same-label clusters
(squared Euclidean distance between centroids; ties broken by label order, then position) and merge it
unless the merged cluster's convex hull would intersect the hull of a cluster of another label; a pair
refused once stays refused (clusters only grow, so an overlap never goes away) until one side changes;
stop when no pair is left. The published procedure (merge to the end, back-track to the last
overlap-free state, continue with checks) reaches the same clustering: up to the first refusal both
make the same merges.

Overlap is decided exactly (isoprobe.hulls: a linear-programming feasibility problem on HiGHS), after
cheap exact shortcuts:
- a pool of hyperplanes (every separating hyperplane the LP finds, kept with each cluster's minimum
  and maximum signed distance to it) proves two clusters separable when one of them leaves the
  clusters on opposite sides: subsets of a separable pair stay separable, at any later merge;
- an overlap witness (the point subsets whose hulls were found to meet) proves any pair of clusters
  containing them overlapping: supersets of an overlapping pair stay overlapping;
- the bounding spheres (centroid, radius) of two clusters that do not meet prove separation.

Identical points with different labels can never be separated: they are found first, reported in
`conflicts_` and left out of the clustering (with `conflicts="fail"`, fit raises instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from isoprobe.hulls import hull_distance, separate


@dataclass
class _Label:
    """Clusters of one label: slots (global ids = a member point index) and centroid distances."""

    slots: np.ndarray  # [m] slot id per position
    dist: (
        np.ndarray
    )  # [m, m] squared centroid distances (inf: inactive or refused pair or diagonal)
    rowmin: np.ndarray  # [m]
    rowarg: np.ndarray  # [m]

    def refresh(self, rows: np.ndarray) -> None:
        if rows.size:
            sub = self.dist[rows]
            self.rowarg[rows] = sub.argmin(1)
            self.rowmin[rows] = sub[np.arange(rows.size), self.rowarg[rows]]


@dataclass
class ProbeStats:
    merges: int = 0
    refused: int = 0
    lp_calls: int = 0
    certified_by_hyperplanes: int = 0
    certified_by_spheres: int = 0
    refused_by_witness: int = 0
    hyperplanes: int = 0
    extra: dict = field(default_factory=dict)


class DirectProbe:
    """fit(X [n, d], y [n]) -> clusters; predict(X) labels by the nearest cluster hull."""

    def __init__(
        self, conflicts: str = "drop", max_hyperplanes: int = 1024, progress: bool = False
    ):
        if conflicts not in ("drop", "fail"):
            raise ValueError(f"conflicts must be 'drop' or 'fail', got {conflicts!r}")
        self.conflicts = conflicts
        self.max_hyperplanes = max_hyperplanes
        self.progress = progress

    # ------------------------------------------------------------------ fit

    def fit(self, X: np.ndarray, y: np.ndarray) -> DirectProbe:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        if X.ndim != 2 or len(X) != len(y):
            raise ValueError(f"X must be [n, d] and y [n]; got {X.shape} and {y.shape}")
        if not np.isfinite(X).all():
            raise ValueError("X has non-finite values")
        self.labels_, codes = np.unique(y, return_inverse=True)
        keep = self._drop_conflicts(X, codes)
        self.X_ = X
        self.codes_ = codes
        self.stats_ = ProbeStats()
        rows = np.flatnonzero(keep)
        clusters = self._cluster(X[rows], codes[rows])
        self.clusters_ = [rows[c] for c in clusters]
        self.cluster_labels_ = np.array([codes[c[0]] for c in self.clusters_])
        self.n_clusters_ = len(self.clusters_)
        return self

    def _drop_conflicts(self, X: np.ndarray, codes: np.ndarray) -> np.ndarray:
        _, group = np.unique(X, axis=0, return_inverse=True)
        group = group.ravel()
        pairs = np.unique(np.stack([group, codes], 1), axis=0)
        n_labels = np.bincount(pairs[:, 0], minlength=int(group.max()) + 1 if group.size else 0)
        bad_groups = np.flatnonzero(n_labels > 1)
        bad = n_labels[group] > 1
        self.conflicts_ = {
            "rows": int(bad.sum()),
            "groups": int(bad_groups.size),
            "indices": np.flatnonzero(bad).tolist(),
        }
        if bad.any() and self.conflicts == "fail":
            raise ValueError(
                f"{bad.sum()} rows in {bad_groups.size} groups of identical vectors carry different "
                "labels; they can never be separated (conflicts='drop' leaves them out)"
            )
        return ~bad

    def _cluster(self, X: np.ndarray, codes: np.ndarray) -> list[np.ndarray]:
        n, d = X.shape
        self._X, self._codes = X, codes
        self._root = np.arange(n)
        self._members = {i: np.array([i]) for i in range(n)}
        self._centroid = X.copy()
        self._radius = np.zeros(n)
        self._active = np.ones(n, dtype=bool)
        hmax = self.max_hyperplanes
        self._W = np.zeros((hmax, d))
        self._T = np.zeros(hmax)
        self._h = 0
        self._lo = np.full((n, hmax), np.inf)
        self._hi = np.full((n, hmax), -np.inf)
        self._witnesses: list[tuple[int, int, np.ndarray, np.ndarray]] = []
        self._seed_hyperplanes()
        labels = []
        for code in range(int(codes.max()) + 1 if n else 0):
            slots = np.flatnonzero(codes == code)
            c = X[slots]
            sq = (c**2).sum(1)
            dist = np.maximum(sq[:, None] + sq[None, :] - 2 * c @ c.T, 0.0)
            np.fill_diagonal(dist, np.inf)
            lab = _Label(slots, dist, np.full(len(slots), np.inf), np.zeros(len(slots), int))
            lab.refresh(np.arange(len(slots)))
            labels.append(lab)
        bar = tqdm(
            total=n - len(labels), desc="directprobe", unit="merge", disable=not self.progress
        )
        while True:
            best = [(lab.rowmin.min() if lab.rowmin.size else np.inf) for lab in labels]
            code = int(np.argmin(best))
            if not np.isfinite(best[code]):
                break
            lab = labels[code]
            i = int(np.argmin(lab.rowmin))
            j = int(lab.rowarg[i])
            i, j = min(i, j), max(i, j)
            if self._allowed(lab.slots[i], lab.slots[j], code):
                self._merge(lab, i, j)
                self.stats_.merges += 1
                bar.update(1)
            else:
                lab.dist[i, j] = lab.dist[j, i] = np.inf
                lab.refresh(np.array([i, j]))
                self.stats_.refused += 1
        bar.close()
        self.stats_.hyperplanes = self._h
        return [np.sort(self._members[s]) for s in np.flatnonzero(self._active)]

    def _merge(self, lab: _Label, i: int, j: int) -> None:
        a, b = int(lab.slots[i]), int(lab.slots[j])
        ma, mb = self._members[a], self._members.pop(b)
        self._root[mb] = a
        merged = np.concatenate([ma, mb])
        self._members[a] = merged
        self._centroid[a] = (len(ma) * self._centroid[a] + len(mb) * self._centroid[b]) / len(
            merged
        )
        self._radius[a] = -1.0  # computed when needed
        h = self._h
        self._lo[a, :h] = np.minimum(self._lo[a, :h], self._lo[b, :h])
        self._hi[a, :h] = np.maximum(self._hi[a, :h], self._hi[b, :h])
        self._active[b] = False
        alive = np.flatnonzero(self._active[lab.slots])
        lab.dist[j, :] = lab.dist[:, j] = np.inf
        others = alive[alive != i]
        new = ((self._centroid[lab.slots[others]] - self._centroid[a]) ** 2).sum(1)
        lab.dist[i, :] = np.inf
        lab.dist[:, i] = np.inf
        lab.dist[i, others] = lab.dist[others, i] = new
        stale = others[np.isin(lab.rowarg[others], (i, j))]
        lab.refresh(np.concatenate([[i, j], stale]))
        better = others[lab.dist[others, i] < lab.rowmin[others]]
        lab.rowmin[better], lab.rowarg[better] = lab.dist[better, i], i

    def _radius_of(self, slot: int) -> float:
        if self._radius[slot] < 0:
            pts = self._X[self._members[slot]]
            self._radius[slot] = float(np.sqrt(((pts - self._centroid[slot]) ** 2).sum(1).max()))
        return float(self._radius[slot])

    def _allowed(self, a: int, b: int, code: int) -> bool:
        """Would the hull of clusters a and b (label `code`) stay clear of every other label's cluster?"""
        st = self.stats_
        members = np.concatenate([self._members[a], self._members[b]])
        others = np.flatnonzero(self._active & (self._codes != code))
        h = self._h
        if h:
            lo = np.minimum(self._lo[a, :h], self._lo[b, :h])
            hi = np.maximum(self._hi[a, :h], self._hi[b, :h])
            tol = 1e-12 * (1.0 + np.abs(self._lo[others, :h]).clip(max=1e300))
            sep = ((hi + tol < self._lo[others, :h]) | (lo - tol > self._hi[others, :h])).any(1)
            st.certified_by_hyperplanes += int(sep.sum())
            others = others[~sep]
        if not others.size:
            return True
        pts = self._X[members]
        centre = pts.mean(0)
        radius = float(np.sqrt(((pts - centre) ** 2).sum(1).max()))
        gaps = np.sqrt(((self._centroid[others] - centre) ** 2).sum(1))
        radii = np.array([self._radius_of(int(o)) for o in others])
        far = gaps > radius + radii + 1e-12 * (1 + gaps)
        st.certified_by_spheres += int(far.sum())
        others = others[~far]
        others = others[np.argsort(gaps[~far], kind="stable")]  # nearest first: refusals come early
        for o in others:
            if self._witnessed(a, b, int(o), code):
                st.refused_by_witness += 1
                return False
            other = self._members[int(o)]
            st.lp_calls += 1
            result = separate(pts, self._X[other], direction=centre - self._centroid[o])
            if not result.separable:
                ip, iq = result.witness
                self._witnesses.append((code, int(self._codes[o]), members[ip], other[iq]))
                return False
            self._add_hyperplane(result.w, result.t)
            self.stats_.hyperplanes = self._h
        return True

    def _witnessed(self, a: int, b: int, other: int, code: int) -> bool:
        oc = int(self._codes[other])
        for ca, cb, pa, pb in self._witnesses:
            if ca == code and cb == oc:
                mine, theirs = pa, pb
            elif ca == oc and cb == code:
                mine, theirs = pb, pa
            else:
                continue
            if np.isin(self._root[mine], (a, b)).all() and (self._root[theirs] == other).all():
                return True
        return False

    def _seed_hyperplanes(self) -> None:
        """One soft-margin linear SVM per pair of labels (a few ms each): where it separates two whole
        labels no check between their clusters is ever needed, elsewhere it certifies every pair of
        clusters it happens to split. Only a starting pool: exactness does not depend on it."""
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.svm import LinearSVC

        X, codes = self._X, self._codes
        present = np.unique(codes)
        for i, a in enumerate(present):
            for b in present[i + 1 :]:
                rows = np.flatnonzero((codes == a) | (codes == b))
                if rows.size < 3:
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    svm = LinearSVC(C=10.0, max_iter=2000, random_state=0)
                    svm.fit(X[rows], codes[rows] == a)
                w = svm.coef_[0].astype(np.float64)
                if np.linalg.norm(w) > 0:
                    self._add_hyperplane(w, -float(svm.intercept_[0]))

    def _add_hyperplane(self, w: np.ndarray, t: float) -> None:
        if self._h >= self.max_hyperplanes:
            return
        k = self._h
        self._W[k], self._T[k] = w, t
        s = self._X @ w - t
        lo = np.full(len(s), np.inf)
        hi = np.full(len(s), -np.inf)
        np.minimum.at(lo, self._root, s)
        np.maximum.at(hi, self._root, s)
        self._lo[:, k], self._hi[:, k] = lo, hi
        self._h += 1

    # ------------------------------------------------------------------ results

    def cluster_distances(self) -> np.ndarray:
        """[K, K] distances between the hulls of clusters of different labels (NaN for same label)."""
        k = self.n_clusters_
        out = np.full((k, k), np.nan)
        for i in range(k):
            for j in range(i + 1, k):
                if self.cluster_labels_[i] != self.cluster_labels_[j]:
                    out[i, j] = out[j, i] = hull_distance(
                        self.X_[self.clusters_[i]], self.X_[self.clusters_[j]]
                    )
        return out

    def label_distances(self, cluster_distances: np.ndarray | None = None) -> np.ndarray:
        """[L, L] minimum hull distance between the clusters of two labels (NaN on the diagonal)."""
        dist = self.cluster_distances() if cluster_distances is None else cluster_distances
        n = len(self.labels_)
        out = np.full((n, n), np.nan)
        for a in range(n):
            for b in range(n):
                if a != b:
                    block = dist[np.ix_(self.cluster_labels_ == a, self.cluster_labels_ == b)]
                    out[a, b] = np.nanmin(block) if block.size else np.nan
        return out

    def transform(self, X: np.ndarray) -> np.ndarray:
        """[n, K] distance from each row to each cluster's hull (0 inside)."""
        X = np.asarray(X, dtype=np.float64)
        out = np.zeros((len(X), self.n_clusters_))
        for j, members in enumerate(self.clusters_):
            pts = self.X_[members]
            for i, x in enumerate(X):
                out[i, j] = hull_distance(x[None, :], pts)
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The label of the nearest cluster hull of each row."""
        return self.labels_[self.cluster_labels_[self.transform(X).argmin(1)]]

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        return float((self.predict(X) == np.asarray(y)).mean())
