"""DirectProbe (Zhou & Srikumar, NAACL 2021): the clusters a labelled point set forms under linear separation.

Definition: start from one cluster per point; repeatedly take the closest pair of same-label clusters
(squared Euclidean distance between centroids; ties broken by label order, then position, i.e. the
clusters' first members) and merge it unless the merged cluster's convex hull would intersect the
hull of a cluster of another label; stop when no pair is left. A refused pair stays refused, and so
does every pair of clusters that contain it (clusters only grow, so an overlap never goes away): its
distance is never looked at again. The result is the same as re-checking such pairs.

Merges are not checked one by one (the published procedure merges to the end and back-tracks to the
last overlap-free state; this is the same idea, repeated). From an overlap-free state the merge order
is followed ahead without checks (a plan); the state after t planned merges is overlap-free exactly
when all t merges were allowed (every earlier cluster is a subset of a later one), so the first
refused merge is the first overlapping state. The last state of the plan is checked first; an
overlap found there comes with a witness (at most d + 2 points whose hulls meet) and the first state
it applies to bounds the search (hi); states hi - 1, hi - 2, hi - 4, ... follow until one is
overlap-free (lo), then bisection. Separating hyperplanes found in later states hold for the
subsets in earlier ones. The plan up to the refused merge is committed and planning resumes.

A state is checked only for pairs with a new cluster (old pairs were separable already), every pair
of different labels, with exact certificates from cheap to dear:
- stored witnesses that apply (supersets of an overlapping pair overlap);
- a pool of hyperplanes (ridge-regression directions for the labels, then every separating
  hyperplane found), with each committed cluster's projection range: a hyperplane leaving two
  clusters on opposite sides proves them (and all their subsets) separable;
- bounding spheres (centroid, radius) that do not meet;
- isoprobe.probing.hulls.separate: Wolfe's active-set method for the nearest points of the two hulls
  (restarted from the search behind the best pool hyperplane), HiGHS LP as a fallback; it adds a
  hyperplane or a witness.

Identical points with different labels can never be separated: they are found first, reported in
`conflicts_` and left out of the clustering (with `conflicts="fail"`, fit raises instead).
Hulls that touch up to solver tolerance (an LP margin below 1e-6 in scaled coordinates) count as
meeting (`stats_.touching`), decided without the LP when Wolfe's method stalls on rounding at a
point of hull(P) - hull(Q) with an L1 norm below 2e-6 (the LP's margin is then below 1e-6 too); a pair HiGHS cannot decide (60 s limit per solve, or a solver failure)
is refused as well and counted in `stats_.undecided` with a warning: never a hang, never unseen. predict
labels a point by its nearest cluster hull (isoprobe.probing.hulls.nearest_hulls: certified distance bounds
for all points at once, the fit's hyperplanes among them, refined only as far as the choice needs); transform gives the exact distances to all hulls.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm.auto import tqdm

from isoprobe.probing.hulls import (
    Basis,
    hull_distance,
    nearest_hulls,
    one_thread,
    point_hull_distances,
    separate,
)

log = logging.getLogger(__name__)

_MIN_PLAN = 16  # shortest plan after a refusal
_GROW = 4  # a plan after a refusal is this many times the merges committed before it
_CHUNK = 32  # hyperplanes tested at once
_BASES = 32  # search bases kept for restarts (about 2 MB each)
_REPLAY_FLOATS = 1 << 24  # distances a plan keeps for replaying its merges (128 MB at most)
_MARGIN = 0.5  # separating hyperplanes found are improved to this fraction of the best margin


@dataclass
class ProbeStats:
    merges: int = 0
    refused: int = 0
    lp_calls: int = 0
    certified_by_hyperplanes: int = 0
    certified_by_spheres: int = 0
    refused_by_witness: int = 0
    hyperplanes: int = 0
    touching: int = 0  # pairs refused with a gap below solver tolerance (hulls touch)
    undecided: int = 0  # pairs refused because HiGHS ran out of time (reported, never hidden)
    extra: dict = field(default_factory=dict)


@dataclass
class _Label:
    """Clusters of one label by position (a cluster keeps the smallest position of its members)."""

    slots: np.ndarray  # [m] point index naming the cluster at each position (its first member)
    alive: np.ndarray  # [m] bool
    centroid: np.ndarray  # [m, d]
    size: np.ndarray  # [m]
    dist: np.ndarray  # [m, m] squared centroid distances; inf: inactive, refused or diagonal
    refused: np.ndarray  # [m, m] bool: the two clusters (or subsets of them) were refused
    rowmin: np.ndarray  # [m] row minima of dist
    rowarg: np.ndarray  # [m] their first column

    def copy(self) -> _Label:
        return _Label(self.slots, *(np.copy(getattr(self, f)) for f in _LABEL_ARRAYS))

    def refresh(self, rows: np.ndarray) -> None:
        if rows.size:
            self.rowarg[rows] = self.dist[rows].argmin(1)
            self.rowmin[rows] = self.dist[rows, self.rowarg[rows]]


_LABEL_ARRAYS = ("alive", "centroid", "size", "dist", "refused", "rowmin", "rowarg")


class _Order:
    """The merge order of the definition over clusters named by slots (point indices). Copies
    share each label's arrays until they change them."""

    def __init__(self, X: np.ndarray, codes: np.ndarray, n_labels: int):
        self.labels: list[_Label] = []
        for code in range(n_labels):
            slots = np.flatnonzero(codes == code)
            c, m = X[slots], len(slots)
            sq = (c**2).sum(1)
            dist = np.maximum(sq[:, None] + sq[None, :] - 2 * c @ c.T, 0.0)
            np.fill_diagonal(dist, np.inf)
            lab = _Label(
                slots,
                np.ones(m, bool),
                c.copy(),
                np.ones(m),
                dist,
                np.zeros((m, m), bool),
                np.full(m, np.inf),
                np.zeros(m, int),
            )
            lab.refresh(np.arange(m))
            self.labels.append(lab)
        self.best = np.array(
            [lab.rowmin.min() if lab.rowmin.size else np.inf for lab in self.labels]
        )
        self.owned = set(range(n_labels))
        self.scratch = np.empty(
            0
        )  # [k * d] for the distances of a merged cluster, shared by copies

    def copy(self) -> _Order:
        new = object.__new__(_Order)
        new.labels, new.best, new.owned = list(self.labels), self.best.copy(), set()
        new.scratch = self.scratch
        return new

    def _distances(self, lab: _Label, i: int, others: np.ndarray) -> np.ndarray:
        """((centroid[others] - centroid[i]) ** 2).sum(1), the same numbers, in a reused buffer."""
        k, d = len(others), lab.centroid.shape[1]
        if self.scratch.size < k * d:
            self.scratch = np.empty(max(k * d, 2 * self.scratch.size))
        buf = self.scratch[: k * d].reshape(k, d)
        np.take(lab.centroid, others, axis=0, out=buf)
        np.subtract(buf, lab.centroid[i], out=buf)
        np.square(buf, out=buf)
        return buf.sum(1)

    def _compact(self, code: int) -> None:
        """Drop the positions of merged clusters (their order, hence tie-breaking, is kept)."""
        lab = self.labels[code]
        keep = np.flatnonzero(lab.alive)
        pos = np.full(len(lab.alive), -1)
        pos[keep] = np.arange(len(keep))
        sub = np.ix_(keep, keep)
        self.labels[code] = _Label(
            lab.slots[keep],
            lab.alive[keep],
            lab.centroid[keep],
            lab.size[keep],
            lab.dist[sub],
            lab.refused[sub],
            lab.rowmin[keep],
            np.maximum(pos[lab.rowarg[keep]], 0),  # rows without a finite entry: any column
        )
        self.owned.add(code)

    def _own(self, code: int) -> _Label:
        if code not in self.owned:
            self.labels[code] = self.labels[code].copy()
            self.owned.add(code)
        return self.labels[code]

    def centroid(self, code: int, slot: int) -> np.ndarray:
        lab = self.labels[code]
        return lab.centroid[int(np.searchsorted(lab.slots, slot))]

    def next(self) -> tuple[int, int, int] | None:
        """(label, a, b): slots of the closest pair, a first by position; None when none is left."""
        if not self.best.size:
            return None
        code = int(np.argmin(self.best))
        if not np.isfinite(self.best[code]):
            return None
        lab = self.labels[code]
        i = int(np.argmin(lab.rowmin))
        return code, int(lab.slots[i]), int(lab.slots[lab.rowarg[i]])

    def merge(self, code: int, a: int, b: int, new: np.ndarray | None = None) -> np.ndarray:
        """Cluster b joins cluster a (a first by position). Returns the squared distances from the
        merged cluster to the others; a replay of the same merge from the same state may pass
        them back as `new` instead of recomputing them (the same numbers)."""
        lab = self._own(code)
        i, j = np.searchsorted(lab.slots, (a, b))
        na, nb = lab.size[i], lab.size[j]
        lab.centroid[i] = (na * lab.centroid[i] + nb * lab.centroid[j]) / (na + nb)
        lab.size[i] = na + nb
        lab.alive[j] = False
        lab.refused[i] |= lab.refused[j]
        lab.refused[:, i] = lab.refused[i]
        lab.dist[j, :] = lab.dist[:, j] = np.inf
        lab.dist[i, :] = lab.dist[:, i] = np.inf
        others = np.flatnonzero(lab.alive)
        others = others[others != i]
        if new is None:
            new = self._distances(lab, i, others)
            new[lab.refused[i, others]] = np.inf
        lab.dist[i, others] = lab.dist[others, i] = new
        lab.rowmin[j] = np.inf
        stale = others[(lab.rowarg[others] == i) | (lab.rowarg[others] == j)]
        lab.refresh(np.append(stale, i))
        rowmin, rowarg = lab.rowmin[others], lab.rowarg[others]
        better = (new < rowmin) | ((new == rowmin) & (i < rowarg))
        lab.rowmin[others[better]], lab.rowarg[others[better]] = new[better], i
        self.best[code] = lab.rowmin.min()
        if len(lab.slots) > 64 and 2 * (len(others) + 1) < len(lab.slots):
            self._compact(code)
        return new

    def refuse(self, code: int, a: int, b: int) -> None:
        lab = self._own(code)
        i, j = np.searchsorted(lab.slots, (a, b))
        lab.refused[i, j] = lab.refused[j, i] = True
        lab.dist[i, j] = lab.dist[j, i] = np.inf
        lab.refresh(np.array([i, j]))
        self.best[code] = lab.rowmin.min()


class _Pool:
    """Hyperplane directions with each committed cluster's projection range [lo, hi]."""

    def __init__(self, X: np.ndarray, root: np.ndarray, size: int):
        self.X, self.root = X, root
        n, d = X.shape
        self.size = size
        self.W = np.zeros((size, d))
        self.norm = np.ones(size)
        self.tol = np.zeros(size)
        self.lo = np.full((size, n), np.inf)  # [H, n] by slot (inf for non-slots)
        self.hi = np.full((size, n), -np.inf)
        self.h = 0  # filled
        self.seeds = 0  # permanent entries at the front
        self.added = 0  # every direction ever added
        self.stamp = np.zeros(size, int)  # when each entry was written
        self.support: list = [None] * size  # (points above, points below) it was found with

    def add(
        self, w: np.ndarray, support: tuple[np.ndarray, np.ndarray] | None = None
    ) -> int | None:
        """Store a direction (support: points found above and below it); its entry, if any."""
        if self.h < self.size:
            k = self.h
            self.h += 1
        elif self.seeds < self.size:  # overwrite the oldest non-seed entry
            k = self.seeds + int(np.argmin(self.stamp[self.seeds :]))
        else:
            return None
        s = self.X @ w
        self.W[k], self.norm[k], self.support[k] = w, np.linalg.norm(w), support
        self.tol[k] = 1e-12 * (1.0 + np.abs(s).max())
        self.lo[k].fill(np.inf)
        self.hi[k].fill(-np.inf)
        np.minimum.at(self.lo[k], self.root, s)
        np.maximum.at(self.hi[k], self.root, s)
        self.added += 1
        self.stamp[k] = self.added
        return k

    def order(self) -> np.ndarray:
        """Entries to try: seeds, then newest first."""
        rest = np.arange(self.seeds, self.h)
        return np.r_[np.arange(self.seeds), rest[np.argsort(-self.stamp[rest], kind="stable")]]

    def merge(self, a: int, b: int) -> None:
        np.minimum(self.lo[:, a], self.lo[:, b], out=self.lo[:, a])
        np.maximum(self.hi[:, a], self.hi[:, b], out=self.hi[:, a])
        self.lo[:, b], self.hi[:, b] = np.inf, -np.inf


class _Plan:
    """Merges planned ahead of the committed state: steps (label, a, b), slot b joining a."""

    def __init__(self, steps: list[tuple[int, int, int]]):
        self.steps = steps
        self.parent = {b: a for *_, a, b in steps}  # a forest: times grow towards the roots
        self.time = {b: k + 1 for k, (*_, b) in enumerate(steps)}
        self.touched = set(self.parent) | set(self.parent.values())

    def __len__(self) -> int:
        return len(self.steps)

    def rep(self, n: int, t: int) -> np.ndarray:
        """[n] committed slot -> slot of its cluster after the first t merges."""
        rep = np.arange(n)
        for *_, a, b in reversed(self.steps[:t]):
            rep[b] = rep[a]
        return rep

    def joined(self, slots: np.ndarray) -> float:
        """Number of merges after which all the committed slots share a cluster (inf: never)."""
        up, node, when = {int(slots[0]): 0}, int(slots[0]), 0
        while node in self.parent:
            when, node = max(when, self.time[node]), self.parent[node]
            up[node] = when
        out = 0
        for s in map(int, slots[1:]):
            node, when = s, 0
            while node not in up:
                if node not in self.parent:
                    return np.inf
                when, node = max(when, self.time[node]), self.parent[node]
            out = max(out, when, up[node])
        return out


class _Witnesses:
    """Point sets whose hulls meet (rows of X, one set per side), found by earlier searches: a
    state in which each set lies within one cluster overlaps. Kept flat as well, so that the plan
    step at which each applies is found for all of them at once."""

    def __init__(self):
        self.items: list[tuple[np.ndarray, np.ndarray]] = []
        self._flat: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._pairs: set[tuple[int, int]] | None = None  # for the committed state of the last call

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def add(self, witness: tuple[np.ndarray, np.ndarray]) -> None:
        self.items.append(witness)
        self._flat = self._pairs = None

    def committed(self) -> None:
        """The committed clusters changed."""
        self._pairs = None

    def refuse(self, root: np.ndarray, a: int, b: int) -> bool:
        """Does a witness apply to the merge of committed clusters a and b alone (activation <= 1
        for the one-step plan)? True for every merge if one applies already (activation 0)."""
        if self._pairs is None:
            self._pairs = self._pair_index(root)
        return (min(a, b), max(a, b)) in self._pairs or (-1, -1) in self._pairs

    def _pair_index(self, root: np.ndarray) -> set[tuple[int, int]]:
        """The pairs (a < b) of committed slots whose merge alone a witness applies to: each of
        its sets spread over several clusters lies in exactly a and b; (-1, -1) if one applies
        already (no set spread)."""
        if not self.items:
            return set()
        points, starts, owner = self._arrays()
        slots = root[points]
        segment = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(points)]))
        ordered = slots[np.lexsort((slots, segment))]  # sorted within each set, sets in place
        fresh = np.r_[True, ordered[1:] != ordered[:-1]]
        fresh[starts] = True
        distinct = np.add.reduceat(fresh.astype(int), starts)
        lo, hi = np.minimum.reduceat(slots, starts), np.maximum.reduceat(slots, starts)
        keys: dict[int, set] = {int(i): set() for i in range(len(self.items))}
        for g in np.flatnonzero(distinct > 1):
            pair = (int(lo[g]), int(hi[g])) if distinct[g] == 2 else None
            keys[int(owner[g])].add(pair)
        out = set()
        for found in keys.values():
            if not found:
                out.add((-1, -1))
            elif len(found) == 1 and None not in found:
                out |= found
        return out

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(points of every non-empty set, where each set starts, its witness)."""
        if self._flat is None:
            sets = [(i, side) for i, w in enumerate(self.items) for side in w if len(side)]
            sizes = np.array([len(side) for _, side in sets], int)
            self._flat = (
                np.concatenate([side for _, side in sets]).astype(int),
                np.r_[0, np.cumsum(sizes)[:-1]],
                np.array([i for i, _ in sets], int),
            )
        return self._flat

    def activations(self, root: np.ndarray, plan: _Plan) -> list[float]:
        """Per witness, the number of merges of the plan after which it applies (inf: never): a
        set spread over several committed clusters needs all of them touched by the plan, and
        applies once they are joined."""
        out = [0.0] * len(self.items)
        if not self.items:
            return out
        points, starts, owner = self._arrays()
        slots = root[points]
        spread = np.minimum.reduceat(slots, starts) != np.maximum.reduceat(slots, starts)
        if not spread.any():
            return out
        touched = np.zeros(len(root), bool)
        touched[list(plan.touched)] = True
        covered = np.logical_and.reduceat(touched[slots], starts)
        never = np.zeros(len(self.items), bool)
        never[owner[spread & ~covered]] = True
        ends = np.r_[starts[1:], len(points)]
        for g in np.flatnonzero(spread & covered & ~never[owner]):
            i = int(owner[g])
            joined = plan.joined(np.unique(slots[starts[g] : ends[g]]))
            out[i] = max(out[i], joined)
        for i in np.flatnonzero(never):
            out[int(i)] = np.inf
        return out


class _State:
    """The clusters after the first t merges of a plan (named by their smallest committed slot)."""

    def __init__(self, fit: _Fit, plan: _Plan, t: int):
        n = len(fit.X)
        self.fit, self.t = fit, t
        self.rep = plan.rep(n, t)
        self.slots = np.flatnonzero(fit.active & (self.rep == np.arange(n)))
        self.new = np.unique(self.rep[[step[1] for step in plan.steps[:t]]])
        self._members: dict[int, np.ndarray] = {}

    def parts(self, s: int) -> np.ndarray:
        return np.flatnonzero((self.rep == s) & self.fit.active) if s in self.new else np.array([s])

    def members(self, s: int) -> np.ndarray:
        if s not in self._members:
            fit = self.fit
            self._members[s] = np.sort(np.concatenate([fit.members[int(p)] for p in self.parts(s)]))
        return self._members[s]

    def ranges(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """[H] minimum and maximum projection of the cluster on each pool direction."""
        pool, parts = self.fit.pool, self.parts(s)
        return pool.lo[: pool.h, parts].min(1), pool.hi[: pool.h, parts].max(1)


class _Fit:
    """The clustering of X [n, d] with label codes [n] (no conflicting duplicates)."""

    def __init__(self, X: np.ndarray, codes: np.ndarray, stats: ProbeStats, hyperplanes: int):
        n = len(X)
        self.X, self.codes, self.stats = X, codes, stats
        self.n_labels = int(codes.max()) + 1 if n else 0
        self.root = np.arange(n)  # point -> committed cluster slot
        self.active = np.ones(n, bool)  # committed slots in use
        self.members = {i: np.array([i]) for i in range(n)}
        self.radius = np.zeros(n)  # of committed clusters; < 0: not computed
        self.order = _Order(X, codes, self.n_labels)
        self.pool = _Pool(X, self.root, hyperplanes)
        self.witnesses = _Witnesses()
        c = X.mean(0) if n else np.zeros(X.shape[1])
        scale = float(np.sqrt(((X - c) ** 2).sum(1).mean())) if n else 1.0
        self.frame = (c, scale or 1.0)  # one frame for all searches, so bases carry over
        self.bases: OrderedDict[int, Basis] = OrderedDict()  # pool entry -> search basis
        self._seed()

    # ---------------------------------------------------------------- driver

    def run(self, progress: bool = False) -> list[np.ndarray]:
        bar = tqdm(total=len(self.X), desc="directprobe", unit="merge", disable=not progress)
        window = len(self.X)
        while True:
            if self.refused_at_once():
                window = _MIN_PLAN
                continue
            spec = self.order.copy()
            steps, news, kept = [], [], 0
            while len(steps) < window and (step := spec.next()) is not None:
                steps.append(step)
                new = spec.merge(*step)
                kept += new.size
                news.append(new if kept <= _REPLAY_FLOATS else None)
            if not steps:
                break
            plan = _Plan(steps)
            k = self.good_prefix(plan)
            if k == len(plan):
                self.order = spec
                spec.owned = set(range(self.n_labels))  # nothing else shares its arrays now
            else:
                for step, new in zip(steps[:k], news, strict=False):
                    self.order.merge(*step, new=new)  # the plan's own distances, not recomputed
                self.order.refuse(*steps[k])
                self.stats.refused += 1
            for *_, a, b in steps[:k]:
                self.commit(a, b)
            bar.update(k)
            window = 2 * len(plan) if k == len(plan) else max(_MIN_PLAN, _GROW * k)
        bar.close()
        self.stats.merges = len(self.X) - int(self.active.sum())
        self.stats.hyperplanes = self.pool.added
        self.stats.extra["witnesses"] = len(self.witnesses)
        return [np.sort(self.members[int(s)]) for s in np.flatnonzero(self.active)]

    def refused_at_once(self) -> bool:
        """Refuse the next merge of the order when a known witness applies to it alone (what
        good_prefix would decide on any plan that starts with it), before planning beyond it."""
        step = self.order.next()
        if step is None or not self.witnesses.refuse(self.root, *step[1:]):
            return False
        st = self.stats
        st.extra["plans"] = st.extra.get("plans", 0) + 1
        st.refused_by_witness += 1
        st.refused += 1
        self.order.refuse(*step)
        return True

    def good_prefix(self, plan: _Plan) -> int:
        """Largest t such that the state after t merges of the plan is overlap-free. The last state
        is checked first; an overlap bounds the answer by the first state its witness applies to
        (hi); states hi - 1, hi - 2, hi - 4, ... follow until one is overlap-free (lo), then
        bisection. Every separating hyperplane found holds for all earlier states too."""
        st = self.stats
        st.extra["plans"] = st.extra.get("plans", 0) + 1
        self._acts = self.witnesses.activations(self.root, plan)
        known = min(self._acts, default=np.inf)
        if known <= len(plan):  # a known witness applies already: no need to look beyond
            st.refused_by_witness += 1
        lo, hi, back = 0, int(min(known, len(plan) + 1)), 1
        while hi - lo > 1:
            if hi > len(plan):
                t = len(plan)
            elif lo == 0 and back <= hi:
                t = max(1, hi - back)
            else:
                t = (lo + hi) // 2
            first = self.check(plan, t)
            if first > t:
                lo = t
                back = hi + 1  # bisect from now on
            else:
                hi, back = max(first, lo + 1), 2 * back
        return lo

    def commit(self, a: int, b: int) -> None:
        mb = self.members.pop(b)
        self.root[mb] = a
        self.members[a] = np.concatenate([self.members[a], mb])
        self.active[b] = False
        self.radius[a] = -1.0
        self.pool.merge(a, b)
        self.witnesses.committed()

    # ---------------------------------------------------------------- states

    def activation(self, plan: _Plan, witness: tuple[np.ndarray, np.ndarray]) -> float:
        """Number of merges of the plan after which the witness applies (inf: never)."""
        out = 0
        for side in witness:
            slots = np.unique(self.root[side])
            if len(slots) > 1:
                if not plan.touched.issuperset(slots.tolist()):
                    return np.inf
                out = max(out, plan.joined(slots))
        return out

    def check(self, plan: _Plan, t: int) -> float:
        """The first state (number of merges) at which an overlap found in the state after t
        merges appears; inf when that state is overlap-free. Decides every pair of its clusters."""
        st = self.stats
        st.extra["states_checked"] = st.extra.get("states_checked", 0) + 1
        state = _State(self, plan, t)
        first, known = np.inf, set()
        for w, act in zip(self.witnesses, self._acts, strict=True):
            if act <= t:
                first = min(first, act)
                known.add((int(state.rep[self.root[w[0][0]]]), int(state.rep[self.root[w[1][0]]])))
        st.refused_by_witness += len(known)
        u, v = self.pairs(state)
        n_pairs = len(u)
        u, v = self.certify(state, u, v)
        log.debug(
            "state %d/%d: %d new clusters, %d pairs, %d left for LP, %d known overlaps",
            t,
            len(plan),
            len(state.new),
            n_pairs,
            len(u),
            len(known),
        )
        for w in self.solve(state, u, v, known):
            self.witnesses.add(w)
            self._acts.append(self.activation(plan, w))
            first = min(first, self._acts[-1])
        return first

    def pairs(self, state: _State) -> tuple[np.ndarray, np.ndarray]:
        """Cluster pairs (slots) of different labels with at least one new cluster."""
        slots, codes = state.slots, self.codes[state.slots]
        is_new = np.isin(slots, state.new)
        us, vs = [np.zeros(0, int)], [np.zeros(0, int)]
        for s in state.new:
            other = slots[(codes != self.codes[s]) & (~is_new | (slots > s))]
            us.append(np.full(len(other), s))
            vs.append(other)
        return np.concatenate(us), np.concatenate(vs)

    def certify(self, state: _State, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pairs not proved separable by the hyperplane pool or bounding spheres."""
        st, pool = self.stats, self.pool
        n, new = len(self.X), state.new
        # projection ranges of the new clusters: committed slots grouped by their new cluster
        parts = np.flatnonzero(self.active & np.isin(state.rep, new))
        parts = parts[np.argsort(state.rep[parts], kind="stable")]
        starts = np.flatnonzero(np.r_[True, np.diff(state.rep[parts]) != 0])
        is_new = np.zeros(n, bool)
        is_new[new] = True
        gnew = np.zeros(n, int)
        gnew[new] = np.arange(len(new))
        order = pool.order()
        k0 = 0
        while k0 < pool.h and u.size:
            ks = order[k0 : k0 + max(1, min(_CHUNK, 2_000_000 // u.size))]
            k0 += len(ks)
            lo_new = np.minimum.reduceat(pool.lo[ks][:, parts], starts, 1)  # [k, new]
            hi_new = np.maximum.reduceat(pool.hi[ks][:, parts], starts, 1)
            lo_u, hi_u = lo_new[:, gnew[u]], hi_new[:, gnew[u]]
            vn = is_new[v]
            lo_v, hi_v = pool.lo[np.ix_(ks, v)], pool.hi[np.ix_(ks, v)]
            lo_v[:, vn], hi_v[:, vn] = lo_new[:, gnew[v[vn]]], hi_new[:, gnew[v[vn]]]
            tol = pool.tol[ks, None]
            sep = ((hi_u + tol < lo_v) | (lo_u - tol > hi_v)).any(0)
            st.certified_by_hyperplanes += int(sep.sum())
            u, v = u[~sep], v[~sep]
        if not u.size:
            return u, v
        both = np.union1d(u, v)
        centre, radius = self.spheres(state, both)
        iu, iv = np.searchsorted(both, u), np.searchsorted(both, v)
        gap = np.sqrt(((centre[iu] - centre[iv]) ** 2).sum(1)) - radius[iu] - radius[iv]
        far = gap > 1e-12 * (1.0 + radius[iu] + radius[iv])
        st.certified_by_spheres += int(far.sum())
        keep = np.argsort(gap[~far], kind="stable")  # nearest first
        return u[~far][keep], v[~far][keep]

    def spheres(self, state: _State, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centroids [k, d] and radii [k] of the given clusters of the state."""
        centre, radius = np.zeros((len(slots), self.X.shape[1])), np.zeros(len(slots))
        for i, s in enumerate(map(int, slots)):
            if s in state.new:
                pts = self.X[state.members(s)]
                centre[i] = pts.mean(0)
                radius[i] = np.sqrt(((pts - centre[i]) ** 2).sum(1).max())
            else:
                centre[i] = self.order.centroid(int(self.codes[s]), s)
                if self.radius[s] < 0:
                    pts = self.X[self.members[s]]
                    self.radius[s] = np.sqrt(((pts - centre[i]) ** 2).sum(1).max())
                radius[i] = self.radius[s]
        return centre, radius

    def solve(
        self, state: _State, u: np.ndarray, v: np.ndarray, known: set
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Decide the remaining pairs exactly (nearest first); the witnesses of those that meet.
        Each search restarts from the basis of the pool hyperplane that best separates the pair
        (an earlier search on subsets of it, often), in the one frame of the fit."""
        st, pool = self.stats, self.pool
        pending = np.array(
            [(a, b) not in known and (b, a) not in known for a, b in zip(u, v, strict=True)]
        )
        found = []
        for k in range(len(u)):
            if not pending[k]:
                continue
            a, b = self.orient(state, int(u[k]), int(v[k]))
            P, Q = state.members(a), state.members(b)
            st.lp_calls += 1
            t0 = time.perf_counter()
            basis, start, direction = self.restart(state, a, b, P, Q)
            result = separate(self.X[P], self.X[Q], direction, start, _MARGIN, self.frame, basis)
            log.debug(
                "lp %d x %d: %s in %d rounds, %.3f s",
                len(P),
                len(Q),
                result.separable,
                result.rounds,
                time.perf_counter() - t0,
            )
            if not result.separable:
                st.touching += result.touching
                st.undecided += result.undecided
                if result.undecided:
                    log.warning(
                        "directprobe: a %d x %d pair is undecided (time limit)", len(P), len(Q)
                    )
                ip, iq = result.witness
                found.append((P[ip], Q[iq]))
                continue
            slot = pool.add(result.w, (P[result.support[0]], Q[result.support[1]]))
            self.bases.pop(slot, None)
            if result.basis is not None and slot is not None:
                on, rows = result.basis.side == 0, result.basis.rows
                keys = np.empty(len(rows), int)
                keys[on], keys[~on] = P[rows[on]], Q[rows[~on]]
                self.bases[slot] = replace(result.basis, rows=keys)
                self.bases.move_to_end(slot)
                while len(self.bases) > _BASES:
                    self.bases.popitem(last=False)
            s = self.X @ result.w  # the new hyperplane may settle later pairs too
            for r in np.flatnonzero(pending[k + 1 :]) + k + 1:
                sa, sb = s[state.members(int(u[r]))], s[state.members(int(v[r]))]
                if sa.min() > sb.max() or sa.max() < sb.min():
                    pending[r] = False
                    st.certified_by_hyperplanes += 1
        return found

    def best(self, state: _State, a: int, b: int) -> tuple[int, bool]:
        """(entry, a above b) of the pool direction that best separates clusters a and b."""
        pool = self.pool
        (lo_a, hi_a), (lo_b, hi_b) = state.ranges(a), state.ranges(b)
        norm = pool.norm[: pool.h]
        up, down = (lo_a - hi_b) / norm, (lo_b - hi_a) / norm  # a above b, a below b
        k = int(np.argmax(np.maximum(up, down)))
        return k, bool(up[k] >= down[k])

    def orient(self, state: _State, a: int, b: int) -> tuple[int, int]:
        """The pair ordered as the best pool direction has it: first above."""
        if not self.pool.h:
            return a, b
        return (a, b) if self.best(state, a, b)[1] else (b, a)

    def restart(
        self, state: _State, a: int, b: int, P: np.ndarray, Q: np.ndarray
    ) -> tuple[Basis | None, tuple[np.ndarray, np.ndarray] | None, np.ndarray | None]:
        """(basis, start, direction) to begin the search for clusters a (points P, above) and b:
        the best pool direction, and the basis of its search (rows renamed to rows of P and Q,
        -1 where gone) or else the rows of P and Q in its support."""
        pool = self.pool
        if not pool.h:
            return None, None, None
        k, _ = self.best(state, a, b)
        basis = self.bases.get(k)
        if basis is not None:
            keys, on = basis.rows, basis.side == 0
            rows = np.full(len(keys), -1)
            for half, pts in ((on, P), (~on, Q)):
                pos = np.minimum(np.searchsorted(pts, keys[half]), len(pts) - 1)
                rows[half] = np.where(pts[pos] == keys[half], pos, -1)
            return replace(basis, rows=rows), None, pool.W[k]
        if pool.support[k] is None:
            return None, None, pool.W[k]
        high, low = pool.support[k]
        return None, (np.flatnonzero(np.isin(P, high)), np.flatnonzero(np.isin(Q, low))), pool.W[k]

    def _seed(self) -> None:
        """Starting directions: ridge regression of one-hot labels (one per label, and the
        difference of every two when there are few labels). Only a start: exactness does not
        depend on them."""
        L = self.n_labels
        if L < 2 or not self.pool.size:
            return
        X = self.X - self.X.mean(0)
        Y = np.eye(L)[self.codes]
        gram = X.T @ X
        gram[np.diag_indices_from(gram)] += 1e-3 * np.trace(gram) / len(gram) + 1e-12
        B = np.linalg.solve(gram, X.T @ (Y - Y.mean(0)))  # [d, L]
        dirs = [B[:, a] for a in range(L)]
        if L * (L - 1) // 2 <= 64:
            dirs += [B[:, a] - B[:, b] for a in range(L) for b in range(a + 1, L)]
        for w in dirs[: self.pool.size]:
            if np.linalg.norm(w) > 0:
                self.pool.add(w)
        self.pool.seeds = self.pool.h


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
        codes = codes.ravel()
        keep = self._drop_conflicts(X, codes)
        self.X_ = X
        self.codes_ = codes
        self.stats_ = ProbeStats()
        rows = np.flatnonzero(keep)
        with one_thread():
            fit = _Fit(X[rows], codes[rows], self.stats_, self.max_hyperplanes)
            clusters = fit.run(self.progress)
        self.clusters_ = [rows[c] for c in clusters]
        # the hyperplane directions the fit kept (lower bounds on hull distances in predict)
        self.directions_ = fit.pool.W[: fit.pool.h].copy()
        self.cluster_labels_ = np.array([codes[c[0]] for c in self.clusters_], dtype=int)
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
            out[:, j] = point_hull_distances(X, self.X_[members])
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The label of the nearest cluster hull of each row (exactly as transform(X).argmin(1),
        refining distance bounds only as far as the choice needs)."""
        nearest = nearest_hulls(
            np.asarray(X, dtype=np.float64),
            [self.X_[c] for c in self.clusters_],
            directions=self.directions_,
        )
        return self.labels_[self.cluster_labels_[nearest]]

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        return float((self.predict(X) == np.asarray(y)).mean())
