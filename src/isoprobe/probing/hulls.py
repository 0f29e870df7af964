"""Exact linear separability and distances between convex hulls of point sets.

`separate(P, Q)` decides whether hull(P) and hull(Q) are disjoint, i.e. P and Q are strictly linearly
separable; `hull_distance(P, Q)` is the Euclidean distance between the hulls (0 when they meet),
`point_hull_distances(X, P)` the distance from each row of X to hull(P) and `nearest_hulls(X, sets)`
the nearest of several hulls to each row (certified distance bounds for all rows at once, then
per row a lean minimum-norm-point solve for each hull that could be nearest, and the step-by-step
race of `_Race` only where those bounds still leave the choice open).

All run Wolfe's active-set method for the nearest points of two hulls: the minimum of
||P'lam - Q'mu|| over convex weights lam, mu. It keeps an affinely independent set of active rows
(at most d + 2) whose weights minimise that norm on their affine hull, adds the row that most
violates optimality (one matrix product over all rows), and drops rows whose weight would turn
negative. Every iterate certifies something exactly:
- x = P'lam - Q'mu is a point of hull(P) - hull(Q), so ||x|| bounds the distance from above, and
  when ||x|| <= _EPS (scaled coordinates) the active rows are a witness: at most d + 2 points whose
  hulls meet (Caratheodory), reusable for every pair of supersets;
- min_p x.p - max_q x.q > 0 means the hyperplane with normal x separates the sets (checked on every
  row), and divided by ||x|| it bounds the distance from below; the two bounds meet at the optimum.
A search can restart from the active rows of an earlier one (`Basis`, same coordinate frame).
Coordinates are centred and scaled first; BLAS runs on one thread (`one_thread`). When rounding stalls the method
(_PATIENCE major cycles without a new smallest ||x||), the decision falls back to
an LP on HiGHS (max delta s.t. w.p + b >= delta, w.q + b <= -delta, -1 <= w <= 1: half the L1
distance between the hulls, 0 when they meet; its dual support is the witness) and the distance to
the hard-margin SVM QP, both with constraint generation over a growing subset of rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

_ADD = 64  # rows per side added to an LP subset per round
_EPS = 1e-9  # hulls closer than this (scaled coordinates) meet
_LP_TOL = (
    1e-6  # LP margins below this are within HiGHS's feasibility tolerance (1e-7): the hulls touch
)
_TOUCH = 1e-6  # hull distances (scaled coordinates) at or below this are rounding: the hulls touch
_TIME_LIMIT = 60.0  # seconds per HiGHS solve; a pair still open then is undecided
_EXACT = 1.0 - 1e-10  # margin fraction that counts as the optimum (distances)
_PATIENCE = 32  # major cycles without a new smallest ||x||: rounding has stopped the method
_WORK = 256  # rows per side priced between full pricings (sides of more than twice this)
_FULL_EVERY = 8  # cycles between full pricings


@dataclass
class Separation:
    separable: bool
    w: np.ndarray | None = None  # [d] (original coordinates): w.p - t > 0 > w.q - t
    t: float = 0.0  # threshold, midway between the two sides
    witness: tuple[np.ndarray, np.ndarray] | None = None  # row indices of P, Q whose hulls meet
    rounds: int = 0  # LP rounds (0: decided without the LP)
    support: tuple[np.ndarray, np.ndarray] | None = None  # rows of P, Q active at the end
    basis: Basis | None = None  # Wolfe's final active rows, to restart a later call from
    touching: bool = False  # not separable: the gap is positive but below solver tolerance
    undecided: bool = False  # not separable: HiGHS ran out of time (_TIME_LIMIT) or failed


@dataclass
class Basis:
    """Active rows of Wolfe's method, reusable by a later call in the same frame: the columns
    (1, 0, p) for rows of P (side 0) and (0, 1, -q) for rows of Q (side 1) as A = QR."""

    side: np.ndarray  # [k]
    rows: np.ndarray  # [k] row indices into P or Q (the caller may rename them)
    Q: np.ndarray  # [d + 2, k]
    R: np.ndarray  # [k, k]
    beta: np.ndarray  # [k] convex weights per side
    age: int = 0  # updates since the last fresh factorisation


_CONTROLLER = None


def one_thread():
    """Context manager: BLAS on one thread. The products here are small, so threads only contend
    (badly on a busy machine), and one thread keeps results identical across machines."""
    global _CONTROLLER
    if _CONTROLLER is None:
        import scipy.linalg  # noqa: F401  (load its BLAS before listing libraries)
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


def _frame(P: np.ndarray, Q: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and scale: z = (x - c) / s keeps coordinates near 1."""
    c = (P.mean(0) + Q.mean(0)) / 2
    s = float(np.sqrt(((np.vstack([P, Q]) - c) ** 2).sum(1).mean())) or 1.0
    return c, s


def _separates(lo: float, hi: float, w: np.ndarray) -> bool:
    """Do projections onto w with minimum lo on one side and maximum hi on the other leave a gap
    (in distance units, scaled coordinates) that rounding cannot explain?"""
    norm = float(np.linalg.norm(w))
    return norm > 0 and (lo - hi) / norm > 1e-9 * max(1.0, abs(lo) / norm, abs(hi) / norm)


def _qr_insert(*args, **kwargs):
    from scipy.linalg import qr_insert

    return getattr(qr_insert, "__wrapped__", qr_insert)(*args, **kwargs)  # skip batch handling


def _qr_delete(*args, **kwargs):
    from scipy.linalg import qr_delete

    return getattr(qr_delete, "__wrapped__", qr_delete)(*args, **kwargs)


class _SolverFailure(Exception):
    """HiGHS ended without an optimum (args: its status)."""


class _TimeLimit(_SolverFailure):
    """HiGHS stopped at _TIME_LIMIT."""


class _Stall(Exception):
    """Wolfe's method lost progress to rounding."""


class _Corral:
    """Active rows of zp (side 0) and zq (side 1) as columns (1, 0, p) and (0, 1, -q) of A [d + 2, k],
    kept as A = QR, with convex weights beta per side."""

    def __init__(self, zp: np.ndarray, zq: np.ndarray, side: np.ndarray, rows: np.ndarray):
        self.zp, self.zq = zp, zq
        if not ((side == 0).any() and (side == 1).any()):
            raise _Stall
        A = np.stack([self.column(s, r) for s, r in zip(side, rows, strict=True)], 1)
        Q, R = np.linalg.qr(A)
        keep = np.abs(np.diag(R)) > 1e-10 * np.linalg.norm(A, axis=0)
        if not keep.all():  # affinely dependent rows: keep an independent part
            A, side, rows = A[:, keep], side[keep], rows[keep]
            Q, R = np.linalg.qr(A)
        if not ((side == 0).any() and (side == 1).any()):
            raise _Stall
        self.Q, self.R, self.side, self.rows = Q, R, side, rows
        self.beta = np.where(side == 0, 1.0 / (side == 0).sum(), 1.0 / (side == 1).sum())
        self.age = 0

    @classmethod
    def restart(cls, zp: np.ndarray, zq: np.ndarray, basis: Basis) -> _Corral:
        """From a basis whose rows index zp / zq, or -1 for rows that are gone (dropped)."""
        if basis.age > 4 * (zp.shape[1] + 2):  # refresh a factorisation worn by updates
            keep = basis.rows >= 0
            return cls(zp, zq, basis.side[keep], basis.rows[keep])
        corral = object.__new__(cls)
        corral.zp, corral.zq = zp, zq
        corral.Q, corral.R, corral.age = basis.Q.copy(), basis.R.copy(), basis.age
        corral.side, corral.rows, corral.beta = basis.side, basis.rows, basis.beta
        corral.drop(np.flatnonzero(basis.rows < 0))
        return corral

    def basis(self) -> Basis:
        return Basis(self.side, self.rows, self.Q, self.R, self.beta, self.age)

    def drop(self, idx: np.ndarray) -> None:
        """Remove active rows (positions idx), renormalising the weights per side."""
        for i in np.sort(idx)[::-1]:
            self.Q, self.R = _qr_delete(
                self.Q, self.R, int(i), 1, which="col", overwrite_qr=True, check_finite=False
            )
        self.age += len(idx)
        self.side, self.rows = np.delete(self.side, idx), np.delete(self.rows, idx)
        beta = np.maximum(np.delete(self.beta, idx), 0.0)
        on = self.side == 0
        if not (on.any() and (~on).any()):
            raise _Stall
        for half in (on, ~on):
            total = beta[half].sum()
            beta[half] = beta[half] / total if total > 0 else 1.0 / half.sum()
        self.beta = beta

    def column(self, s: int, r: int) -> np.ndarray:
        col = np.zeros(self.zp.shape[1] + 2)
        col[s], col[2:] = 1.0, (self.zp[r] if s == 0 else -self.zq[r])
        return col

    def x(self) -> np.ndarray:
        on = self.side == 0
        return self.beta[on] @ self.zp[self.rows[on]] - self.beta[~on] @ self.zq[self.rows[~on]]

    def insert(self, s: int, r: int) -> bool:
        """Add a row with weight 0; False (and nothing added) if it is affinely dependent."""
        col, k = self.column(s, r), len(self.rows)
        if k + 1 > len(col):
            return False
        try:
            Q, R = _qr_insert(
                self.Q, self.R, col, k, which="col", overwrite_qru=False, check_finite=False
            )
        except np.linalg.LinAlgError:  # (economic QR) the column is in the span
            return False
        if abs(R[k, k]) <= 1e-10 * np.linalg.norm(col):
            self.Q, self.R = _qr_delete(
                Q, R, k, 1, which="col", overwrite_qr=True, check_finite=False
            )
            return False
        self.Q, self.R = Q, R
        self.age += 1
        self.side, self.rows, self.beta = (
            np.r_[self.side, s],
            np.r_[self.rows, r],
            np.r_[self.beta, 0],
        )
        return True

    def settle(self) -> None:
        """Minor cycles: move the weights to the minimiser of ||x|| on the affine hull of the active
        rows, dropping the rows whose weight reaches 0 on the way."""
        from scipy.linalg.lapack import dtrtrs

        while True:
            k, on = len(self.rows), self.side == 0
            u, info = dtrtrs(self.R[:k, :k], self.Q[:2, :k].T)  # [k, 2]: R^-1 Q[0], R^-1 Q[1]
            (spp, spq), (sqp, sqq) = u[on].sum(0), u[~on].sum(0)
            det = spp * sqq - spq * sqp
            if info != 0 or not det:
                raise _Stall
            a, b = (sqq - spq) / det, (spp - sqp) / det  # S [a, b] = [1, 1]
            target = a * u[:, 0] + b * u[:, 1]  # weights summing to 1 per side, minimising ||x||
            if (target > 1e-14).all():
                self.beta = target
                return
            low = target <= 1e-14
            beta = np.maximum(self.beta, 0.0)
            fall = beta[low] - target[low]
            ratio = np.where(fall > 0, beta[low] / np.where(fall > 0, fall, 1.0), 0.0)
            theta = float(np.clip(ratio.min(), 0.0, 1.0))  # step to the first weight reaching 0
            beta = np.maximum(theta * target + (1 - theta) * beta, 0.0)
            drop = np.flatnonzero(low & (beta <= 1e-14))
            if not drop.size:
                drop = np.flatnonzero(low)[[int(np.argmin(ratio))]]
            self.beta = beta
            self.drop(drop)

    def active(self) -> tuple[np.ndarray, np.ndarray]:
        on = self.side == 0
        return np.sort(self.rows[on]), np.sort(self.rows[~on])


def _corral(
    zp: np.ndarray,
    zq: np.ndarray,
    direction: np.ndarray | None,
    start: tuple[np.ndarray, np.ndarray] | None,
    basis: Basis | None = None,
) -> _Corral:
    """Start from a basis (rows -1: gone), else the rows `start` (indices of zp, zq), else the
    rows furthest along `direction` (from zq towards zp)."""
    if basis is not None:
        try:
            corral = _Corral.restart(zp, zq, basis)
            corral.settle()
            return corral
        except _Stall:
            pass
    if start is not None and len(start[0]) and len(start[1]):
        side = np.r_[np.zeros(len(start[0]), int), np.ones(len(start[1]), int)]
        rows = np.r_[start[0], start[1]].astype(int)
    else:
        v = zp.mean(0) - zq.mean(0) if direction is None else direction
        side, rows = np.array([0, 1]), np.array([np.argmin(zp @ v), np.argmax(zq @ v)])
    corral = _Corral(zp, zq, side, rows)
    corral.settle()
    return corral


def _steps(corral: _Corral) -> Iterator[tuple[np.ndarray, float | None, float | None]]:
    """Wolfe's method on rows zp [n, d] and zq [m, d] of the corral: yields (x, lo, hi) per major
    cycle, x the current point of hull(zp) - hull(zq), lo = min zp.x, hi = max zq.x. Ends once
    ||x|| <= _EPS or no row improves x (the optimum, up to rounding). Raises _Stall when rounding
    stops the method: in exact arithmetic ||x|| falls at every major cycle, so _PATIENCE cycles
    without a new minimum (rows added, then dropped again at once) are a loop, not progress.

    A side of more than 2 * _WORK rows is priced in full only every _FULL_EVERY cycles (and
    before the method may end); between, only its working set: the _WORK rows that reached
    furthest at the last full pricing, and the active rows. Those cycles yield lo = hi = None:
    a bound holds only when every row was priced."""
    zp, zq = corral.zp, corral.zq
    d = zp.shape[1]
    scale = max(np.abs(zp).max(), np.abs(zq).max()) * np.sqrt(d)
    smallest, idle = np.inf, 0
    partial = max(len(zp), len(zq)) > 2 * _WORK
    work, since = None, 0
    for _ in range(20 * (d + 2)):
        x = corral.x()
        xx = float(x @ x)
        full = work is None or since >= _FULL_EVERY
        if full:
            sp, sq = zp @ x, zq @ x
            yield x, sp.min(), sq.max()
            rp = rq = None
        else:
            rp, rq, wp, wq, pos_p, pos_q = work
            sp, sq = wp @ x, wq @ x
            yield x, None, None
        if xx <= _EPS**2:
            return
        smallest, idle = (xx, 0) if xx < smallest else (smallest, idle + 1)
        if idle >= _PATIENCE:
            break
        on = corral.side == 0
        ap, aq = corral.rows[on], corral.rows[~on]
        if not full:
            ap, aq = pos_p[ap], pos_q[aq]
        cp, cq = sp[ap].mean(), sq[aq].mean()
        sp[ap], sq[aq] = np.inf, -np.inf  # active rows are not new
        i, j = int(np.argmin(sp)), int(np.argmax(sq))
        gains = sorted([(cp - sp[i], 0, i), (sq[j] - cq, 1, j)], reverse=True)
        noise = 1e-12 * np.sqrt(xx) * scale  # rounding in the projections
        added = False
        for gain, side, r in gains:
            if gain > noise:
                row = r if full else (rp if side == 0 else rq)[r]
                added = corral.insert(side, row) or added
        if not added:
            if full:
                return
            since = _FULL_EVERY  # price every row before deciding that nothing improves x
            continue
        corral.settle()
        if full and partial:
            work, since = _working_set(corral, sp, sq), 0
        else:
            since += 1
    raise _Stall(corral.active(), corral.x())


def _working_set(corral: _Corral, sp: np.ndarray, sq: np.ndarray) -> tuple:
    """(rows of zp, rows of zq, their rows copied, row -> position maps): per side the _WORK rows
    with the lowest sp (highest sq) and the active rows, or every row of a side that is small."""
    out = []
    for z, proj, side in ((corral.zp, sp, 0), (corral.zq, -sq, 1)):
        if len(z) <= 2 * _WORK:
            out.append((np.arange(len(z)), z))
            continue
        rows = np.argpartition(proj, _WORK)[:_WORK]
        rows = np.union1d(rows, corral.rows[corral.side == side])
        out.append((rows, z[rows]))
    (rp, wp), (rq, wq) = out
    pos_p, pos_q = np.full(len(corral.zp), -1), np.full(len(corral.zq), -1)
    pos_p[rp], pos_q[rq] = np.arange(len(rp)), np.arange(len(rq))
    return rp, rq, wp, wq, pos_p, pos_q


def _nearest(
    zp: np.ndarray,
    zq: np.ndarray,
    direction: np.ndarray | None = None,
    start: tuple[np.ndarray, np.ndarray] | None = None,
    margin: float = 0.0,
    basis: Basis | None = None,
) -> tuple[bool, np.ndarray, _Corral]:
    """Wolfe's method on rows zp [n, d] and zq [m, d] (see _corral for the start). Returns
    (separable, x, corral): separable once x separates every row with
    (min zp.x - max zq.x) >= margin * ||x||^2 (margin 1: the optimum, ||x|| is the distance), not
    separable once ||x|| <= _EPS. Raises _Stall, unless an iterate separated the sets already:
    then that hyperplane is the answer (its margin short of `margin`)."""
    corral = _corral(zp, zq, direction, start, basis)
    apart, proof = False, None
    try:
        for x, lo, hi in _steps(corral):
            if x @ x <= _EPS**2:
                return False, x, corral
            if lo is None:  # not every row priced: no bound this cycle
                continue
            apart = _separates(lo, hi, x)
            if apart and lo - hi >= margin * (x @ x):
                return True, x, corral
            if apart:
                proof = x
    except _Stall:
        if proof is None:
            raise
        return True, proof, corral
    if apart:  # the optimum, up to rounding
        return True, x, corral
    if proof is not None:
        return True, proof, corral
    raise _Stall(corral.active(), corral.x())


def separate(
    P: np.ndarray,
    Q: np.ndarray,
    direction: np.ndarray | None = None,
    start: tuple[np.ndarray, np.ndarray] | None = None,
    margin: float = 0.0,
    frame: tuple[np.ndarray, float] | None = None,
    basis: Basis | None = None,
) -> Separation:
    """Exact strict linear separability of P [n, d] and Q [m, d].

    Optional: where to begin, `basis` (the .basis of an earlier result in the same `frame`, its
    rows renamed to rows of P and Q, -1 for rows that are gone), else `start` (row indices of P and
    Q, e.g. an earlier support), else `direction` [d] (from Q towards P); `margin` in [0, 1]: keep
    improving a separating hyperplane until its margin is at least that fraction of the best bound
    so far (0: stop at the first; 1: the maximum-margin hyperplane); `frame` (c [d], s): the
    coordinates (x - c) / s to work in (default: centred and scaled for P and Q).

    When rounding stalls Wolfe's method before any iterate separated the sets, its last iterate x
    (a point of hull(P) - hull(Q)) with ||x||_1 <= 2 * _LP_TOL decides the pair as touching: the
    LP's margin (half the L1 distance between the hulls) is then at most _LP_TOL, so the LP would
    refuse the pair as well. Otherwise the LP decides."""
    P, Q = np.asarray(P, dtype=np.float64), np.asarray(Q, dtype=np.float64)
    c, s = _frame(P, Q) if frame is None else frame
    zp, zq = (P - c) / s, (Q - c) / s
    try:
        with one_thread():
            separable, x, corral = _nearest(zp, zq, direction, start, margin, basis)
    except _Stall as stall:
        rows, x = stall.args if len(stall.args) == 2 else (None, None)
        if x is not None and _within_lp_tol(x):
            return Separation(False, witness=rows, support=rows, touching=bool(x @ x > _EPS**2))
        return _separate_lp(zp, zq, c, s, direction, rows)
    if not separable:
        active = corral.active()
        return Separation(
            False,
            witness=active,
            support=active,
            basis=corral.basis(),
            touching=bool(x @ x > _EPS**2),
        )
    out = _separation(zp, zq, x, 0.0, c, s, rounds=0)
    out.support, out.basis = corral.active(), corral.basis()
    return out


def _within_lp_tol(x: np.ndarray) -> bool:
    """Is ||x||_1 <= 2 _LP_TOL for x in hull(P) - hull(Q), so that the LP's margin is <= _LP_TOL?"""
    return float(np.abs(x).sum()) <= 2 * _LP_TOL


def _separation(
    zp: np.ndarray, zq: np.ndarray, w: np.ndarray, b: float, c: np.ndarray, s: float, rounds: int
) -> Separation:
    """Separation (original coordinates) from w.z + b, threshold midway between the sides."""
    lo, hi = (zp @ w).min() + b, (zq @ w).max() + b
    return Separation(True, w / s, float((lo + hi) / 2 - b + (w / s) @ c), rounds=rounds)


# ---------------------------------------------------------------------- HiGHS fallbacks


def _highs():
    import highspy

    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("time_limit", _TIME_LIMIT)
    return h


def _initial(
    zp: np.ndarray, zq: np.ndarray, direction: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The _ADD rows of each side that reach furthest towards the other along `direction`."""
    v = zp.mean(0) - zq.mean(0) if direction is None else direction
    sp, sq = np.argsort(zp @ v, kind="stable"), np.argsort(-(zq @ v), kind="stable")
    return sp[:_ADD], sq[:_ADD]


def _most(violation: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Up to _ADD indices with the largest positive violation that are not chosen (bool [n])."""
    v = np.where(chosen, -np.inf, violation)
    top = np.argsort(-v, kind="stable")[:_ADD]
    return top[v[top] > 0]


class _MarginLP:
    """max delta over (w [d] in [-1, 1], b, delta) with rows added per point (dual simplex)."""

    def __init__(self, d: int):
        import highspy

        self.d, self.inf = d, highspy.kHighsInf
        self.h = h = _highs()
        h.setOptionValue("solver", "simplex")
        h.setOptionValue("simplex_strategy", 1)  # dual: added rows keep the basis dual feasible
        h.setOptionValue("presolve", "off")
        nv, inf = d + 2, self.inf
        h.addVars(nv, np.r_[-np.ones(d), -inf, -inf], np.r_[np.ones(d), inf, inf])
        h.changeColsCost(nv, np.arange(nv, dtype=np.int32), np.r_[np.zeros(d + 1), -1.0])
        self.rows: list[np.ndarray] = []  # per batch: 1 + index for P, -1 - index for Q

    def add(self, zp: np.ndarray, ip: np.ndarray, zq: np.ndarray, iq: np.ndarray) -> None:
        nv, inf, k = self.d + 2, self.inf, len(ip) + len(iq)
        if not k:
            return
        vals = np.vstack(
            [
                np.c_[zp[ip], np.ones(len(ip)), -np.ones(len(ip))],
                np.c_[zq[iq], np.ones((len(iq), 2))],
            ]
        )
        lower = np.r_[np.zeros(len(ip)), np.full(len(iq), -inf)]
        upper = np.r_[np.full(len(ip), inf), np.zeros(len(iq))]
        starts = np.arange(0, k * nv, nv, dtype=np.int32)
        index = np.tile(np.arange(nv, dtype=np.int32), k)
        self.h.addRows(k, lower, upper, k * nv, starts, index, vals.ravel())
        self.rows.append(np.r_[ip + 1, -(iq + 1)])

    def solve(self) -> tuple[np.ndarray, float, float]:
        """(w [d], b, delta) at the optimum."""
        import highspy

        self.h.run()
        status = self.h.getModelStatus()
        if status == highspy.HighsModelStatus.kTimeLimit:
            raise _TimeLimit
        if status != highspy.HighsModelStatus.kOptimal:
            raise _SolverFailure(self.h.modelStatusToString(status))
        x = np.asarray(self.h.getSolution().col_value)
        return x[: self.d], float(x[self.d]), float(x[self.d + 1])

    def support(self) -> tuple[np.ndarray, np.ndarray]:
        """Indices of P and Q whose rows carry a non-zero dual weight (sorted)."""
        rows = np.concatenate(self.rows)
        on = rows[np.abs(np.asarray(self.h.getSolution().row_dual)) > 0]
        return np.sort(on[on > 0] - 1), np.sort(-on[on < 0] - 1)


def _separate_lp(
    zp: np.ndarray,
    zq: np.ndarray,
    c: np.ndarray,
    s: float,
    direction: np.ndarray | None,
    start: tuple[np.ndarray, np.ndarray] | None = None,
) -> Separation:
    """separate() by the max-margin LP with constraint generation (from the rows `start`)."""
    inp, inq = np.zeros(len(zp), bool), np.zeros(len(zq), bool)
    lp = _MarginLP(zp.shape[1])
    ip, iq = _initial(zp, zq, direction)
    if start is not None:
        ip, iq = np.union1d(ip, start[0]), np.union1d(iq, start[1])
    rounds = 0
    while True:
        lp.add(zp, ip, zq, iq)
        inp[ip], inq[iq] = True, True
        rounds += 1
        try:
            w, b, delta = lp.solve()
        except (
            _SolverFailure
        ) as err:  # treated as meeting, reported as undecided; the rows so far witness it
            log.warning(
                "separation LP: HiGHS ended without an optimum (%s)", err.args or "time limit"
            )
            rows = (np.flatnonzero(inp), np.flatnonzero(inq))
            return Separation(False, witness=rows, rounds=rounds, support=rows, undecided=True)
        if delta <= _LP_TOL:
            return Separation(
                False,
                witness=lp.support(),
                rounds=rounds,
                support=lp.support(),
                touching=delta > _EPS,
            )
        mp, mq = zp @ w + b, zq @ w + b
        if _separates(mp.min(), mq.max(), w):
            out = _separation(zp, zq, w, b, c, s, rounds)
            out.support = lp.support()
            return out
        ip, iq = _most(delta - mp, inp), _most(mq + delta, inq)
        if not (ip.size or iq.size):  # every violated row is in: the gap is below rounding
            return Separation(
                False, witness=lp.support(), rounds=rounds, support=lp.support(), touching=True
            )


def _svm(zp: np.ndarray, zq: np.ndarray) -> np.ndarray | None:
    """(w, b) [d + 1] of the hard-margin SVM on rows zp (>= 1) and zq (<= -1); None if they meet."""
    import highspy

    d = zp.shape[1]
    rows = np.vstack([zp, zq])
    m = rows.shape[0]
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = d + 1, m
    lp.col_cost_ = np.zeros(d + 1)
    lp.col_lower_ = np.full(d + 1, -highspy.kHighsInf)
    lp.col_upper_ = np.full(d + 1, highspy.kHighsInf)
    lp.row_lower_ = np.concatenate([np.ones(len(zp)), np.full(len(zq), -highspy.kHighsInf)])
    lp.row_upper_ = np.concatenate([np.full(len(zp), highspy.kHighsInf), -np.ones(len(zq))])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = np.arange(0, m * (d + 1) + 1, d + 1, dtype=np.int32)
    lp.a_matrix_.index_ = np.tile(np.arange(d + 1, dtype=np.int32), m)
    lp.a_matrix_.value_ = np.hstack([rows, np.ones((m, 1))]).ravel()
    model = highspy.HighsModel()
    model.lp_ = lp
    hess = highspy.HighsHessian()
    hess.dim_ = d + 1
    hess.format_ = highspy.HessianFormat.kTriangular
    hess.start_ = np.concatenate([np.arange(d + 1), [d]]).astype(np.int32)
    hess.index_ = np.arange(d, dtype=np.int32)
    hess.value_ = np.ones(d)
    model.hessian_ = hess
    h = _highs()
    h.passModel(model)
    h.run()
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        return None
    if status == highspy.HighsModelStatus.kTimeLimit:
        raise _TimeLimit
    if status != highspy.HighsModelStatus.kOptimal:
        raise _SolverFailure(h.modelStatusToString(status))
    return np.asarray(h.getSolution().col_value)


def _hull_distance_qp(
    zp: np.ndarray,
    zq: np.ndarray,
    tol: float = 1e-7,
    start: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Distance (scaled coordinates) by the hard-margin SVM QP with constraint generation (from
    the rows `start` too)."""
    ip, iq = _initial(zp, zq, None)
    if start is not None:
        ip, iq = np.union1d(ip, start[0]), np.union1d(iq, start[1])
    while True:
        sol = _svm(zp[ip], zq[iq])
        if sol is None:
            return 0.0
        w, b = sol[:-1], sol[-1]
        vp, vq = 1.0 - (zp @ w + b), (zq @ w + b) + 1.0
        if vp.max() <= tol and vq.max() <= tol:
            return float(2.0 / np.linalg.norm(w))
        ip = np.union1d(ip, _most(vp - tol, np.isin(np.arange(len(zp)), ip)))
        iq = np.union1d(iq, _most(vq - tol, np.isin(np.arange(len(zq)), iq)))


# ---------------------------------------------------------------------- distances


def _distance(zp: np.ndarray, zq: np.ndarray, direction: np.ndarray | None = None) -> float:
    """Distance between hull(zp) and hull(zq) (same frame); 0 when they meet."""
    try:
        separable, x, _ = _nearest(zp, zq, direction, margin=_EXACT)
    except _Stall as stall:
        return _distance_qp(zp, zq, stall)
    return float(np.linalg.norm(x)) if separable else 0.0


def _distance_qp(zp: np.ndarray, zq: np.ndarray, stall: _Stall) -> float:
    """The distance after Wolfe's method stalled on rounding. The stalled iterate x bounds it from
    above; when ||x|| <= _TOUCH the hulls touch up to rounding and ||x|| is the answer (the
    hard-margin QP is ill-posed there: its weights grow as 1 / distance). Otherwise the QP decides;
    if HiGHS fails or runs out of time, ||x|| with a warning."""
    start = stall.args[0] if stall.args else None
    upper = float(np.linalg.norm(stall.args[1])) if len(stall.args) > 1 else None
    if upper is not None and upper <= _TOUCH:
        return upper
    try:
        return _hull_distance_qp(zp, zq, start=start)
    except _SolverFailure as err:
        if upper is None:
            raise RuntimeError(
                f"hull distance: HiGHS QP failed ({err.args or 'time limit'})"
            ) from None
        log.warning("hull distance: HiGHS QP failed (%s); using the upper bound %.3g", err, upper)
        return upper


def hull_distance(P: np.ndarray, Q: np.ndarray) -> float:
    """Euclidean distance between hull(P [n, d]) and hull(Q [m, d]); 0.0 when they intersect."""
    P, Q = np.asarray(P, dtype=np.float64), np.asarray(Q, dtype=np.float64)
    c, s = _frame(P, Q)
    with one_thread():
        return s * _distance((P - c) / s, (Q - c) / s)


def _own_frame(P: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """(c, s, (P - c) / s) for distances from points to hull(P)."""
    c = P.mean(0)
    s = float(np.sqrt(((P - c) ** 2).sum(1).mean())) or 1.0
    return c, s, (P - c) / s


def point_hull_distances(X: np.ndarray, P: np.ndarray) -> np.ndarray:
    """[n] Euclidean distance from each row of X [n, d] to hull(P [m, d]); 0 inside."""
    X, P = np.asarray(X, dtype=np.float64), np.asarray(P, dtype=np.float64)
    c, s, zp = _own_frame(P)
    with one_thread():
        return np.array([s * _distance(zp, (x - c)[None, :] / s) for x in X])


class _Race:
    """Certified bounds on the distance from one point to one hull, refined a Wolfe step at a
    time: lower <= distance <= upper; exact once `done`."""

    def __init__(self, frame: tuple[np.ndarray, float, np.ndarray], x: np.ndarray, upper: float):
        self.c, self.s, self.zp = frame
        self.zx = ((x - self.c) / self.s)[None, :]
        self.lower, self.upper, self.done = 0.0, upper, False
        self.steps: Iterator | None = None

    def step(self) -> None:
        try:
            if self.steps is None:
                self.steps = _steps(_corral(self.zp, self.zx, None, None))
            x, lo, hi = next(self.steps)
        except StopIteration:  # the optimum: upper is the distance
            self.lower, self.done = self.upper, True
            return
        except _Stall as stall:
            self.lower = self.upper = self.s * _distance_qp(self.zp, self.zx, stall)
            self.done = True
            return
        norm = float(np.linalg.norm(x))
        if norm <= _EPS:
            self.lower = self.upper = 0.0
            self.done = True
            return
        self.upper = min(self.upper, self.s * norm)
        if lo is not None:
            self.lower = max(self.lower, self.s * (lo - hi) / norm)


_BLOCK = 256  # rows of X per block of the batched bounds


def _unit_rows(W: np.ndarray | None, d: int) -> np.ndarray:
    """[J, d] the non-zero rows of W scaled to unit length (none: [0, d])."""
    if W is None:
        return np.zeros((0, d))
    W = np.asarray(W, dtype=np.float64).reshape(-1, d)
    norm = np.linalg.norm(W, axis=1)
    keep = np.isfinite(norm) & (norm > 0)
    return W[keep] / norm[keep, None]


def _first_bounds(
    X: np.ndarray, sets: list[np.ndarray], frames: list, directions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """[n, K] certified bounds on the distance from each row of X to each hull, for all rows at
    once (blocks of _BLOCK rows): upper = distance to the nearest member; lower = the largest gap
    along the direction from the row to the hull's centroid or along any unit direction given
    (a hull lies between the minimum and maximum of its members' projections)."""
    allp = np.vstack(sets)
    starts = np.r_[0, np.cumsum([len(P) for P in sets])[:-1]]
    cent = np.stack([f[0] for f in frames])  # [K, d]
    own = np.concatenate([P @ c for P, c in zip(sets, cent, strict=True)])  # p . c_k
    sq, cc = (allp**2).sum(1), (cent**2).sum(1)
    proj = [P @ directions.T for P in sets]  # [m_k, J]
    lo = np.stack([p.min(0) for p in proj], 1) if len(directions) else None  # [J, K]
    hi = np.stack([p.max(0) for p in proj], 1) if len(directions) else None
    upper, lower = np.empty((len(X), len(sets))), np.empty((len(X), len(sets)))
    for b in range(0, len(X), _BLOCK):
        x = X[b : b + _BLOCK]
        xx, px, xc = (x**2).sum(1)[:, None], x @ allp.T, x @ cent.T
        upper[b : b + _BLOCK] = np.sqrt(
            np.maximum(np.minimum.reduceat(sq - 2 * px, starts, 1) + xx, 0)
        )
        reach = np.minimum.reduceat(own - px, starts, 1) - (xc - xx)  # along v_k = c_k - x
        norm = np.sqrt(np.maximum(cc - 2 * xc + xx, 1e-300))
        low = np.maximum(reach / norm, 0.0)
        if lo is not None:
            s = (x @ directions.T)[:, :, None]  # [b, J, 1]
            low = np.maximum(low, np.maximum(lo[None] - s, s - hi[None]).max(1))
        lower[b : b + _BLOCK] = low
    return upper, lower


def nearest_hulls(
    X: np.ndarray, sets: list[np.ndarray], directions: np.ndarray | None = None
) -> np.ndarray:
    """[n] index of the hull nearest to each row of X [n, d] among hull(sets[k] [m_k, d]); ties
    go to the lowest index, as with point_hull_distances + argmin. Exact: every hull starts with
    certified bounds for all rows at once (`_first_bounds`: the nearest member above; the
    hyperplane facing the hull's centroid and the optional unit `directions` [J, d], e.g. the
    separating hyperplanes of a DirectProbe fit, below). A row is settled when one hull's upper
    bound is below every other lower bound; else the bounds of the hulls that could still be
    nearest are tightened by minimum-norm-point solves (`_tighten`: the open rows together, hull by
    hull), and a row still open after that is raced a Wolfe step at a time (each step certifies
    both bounds) until one hull is certainly nearest; near-ties are settled by the exact
    distances."""
    X = np.asarray(X, dtype=np.float64)
    sets = [np.asarray(P, dtype=np.float64) for P in sets]
    out = np.zeros(len(X), int)
    if not len(X) or len(sets) < 2:
        return out
    frames = [_own_frame(P) for P in sets]
    tol = 1e-9 * max(f[1] for f in frames)
    with one_thread():
        upper, lower = _first_bounds(X, sets, frames, _unit_rows(directions, X.shape[1]))
        open_ = np.flatnonzero(~_settled(upper, lower, tol, out))
        up, low = upper[open_], lower[open_]
        _tighten(X[open_], frames, up, low, tol)
        picked = np.zeros(len(open_), int)
        done = _settled(up, low, tol, picked)
        out[open_[done]] = picked[done]
        for r in np.flatnonzero(~done):
            out[open_[r]] = _race(X[open_[r]], sets, frames, up[r], low[r], tol)
    return out


def _tighten(X: np.ndarray, frames: list, upper: np.ndarray, lower: np.ndarray, tol: float) -> None:
    """Tighten the bounds [n, K] (in place) of every hull that could still be nearest to each row
    of X [n, d] with `_points_bounds`: first the hull with the lowest upper bound (the likely
    nearest one) to its distance, so the others face a tight bar, then the rest lowest lower bound
    first; a row stops at the first hull its lower bound rules out. Rows advance in rounds, one
    hull each, and the rows at the same hull are solved together (matrix products, not one
    matrix-vector product per row): each row meets the same hulls with the same bars as alone."""
    n, K = upper.shape
    first = upper.argmin(1)
    order = np.argsort(lower, 1, kind="stable")
    visits = np.column_stack((first, order[order != first[:, None]].reshape(n, K - 1)))
    norms = {}  # hull -> squared norms of its scaled rows
    live, pos = np.arange(n), np.zeros(n, int)
    while live.size:
        hull = visits[live, pos[live]]
        bar = upper[live].min(1) + tol
        go = lower[live, hull] <= bar
        live, hull, bar = live[go], hull[go], bar[go]
        for k in np.unique(hull):
            c, s, zp = frames[k]
            if k not in norms:
                norms[k] = np.einsum("ij,ij->i", zp, zp)
            at = np.flatnonzero(hull == k)
            for b in range(0, len(at), _BLOCK):
                rows = live[at[b : b + _BLOCK]]
                up, low = _points_bounds(
                    zp, norms[k], (X[rows] - c) / s, bar[at[b : b + _BLOCK]] / s
                )
                upper[rows, k] = np.minimum(upper[rows, k], s * up)
                lower[rows, k] = np.maximum(lower[rows, k], s * low)
        pos[live] += 1
        live = live[pos[live] < K]


def _point_bounds(zp: np.ndarray, zx: np.ndarray, stop: float) -> tuple[float, float]:
    """`_points_bounds` for one point zx [d]."""
    up, low = _points_bounds(zp, np.einsum("ij,ij->i", zp, zp), zx[None, :], np.array([stop]))
    return float(up[0]), float(low[0])


def _points_bounds(
    zp: np.ndarray, norms: np.ndarray, ZX: np.ndarray, stops: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """[B] certified upper and lower bounds on the distance from each row of ZX [B, d] to
    hull(zp [m, d]) (norms [m]: the squared norms of zp's rows), by Wolfe's minimum-norm-point
    method on the rows zp - zx (never formed: projections are taken on zp and shifted) with the
    affine minimiser of each corral from its small Gram system, kept up to date row by row (no QR
    updates, unlike `_Corral`). The B solves run in lock step, so that each cycle projects zp on
    all their current points in one matrix product. Only the bounds matter: upper is the norm of
    a point of the hull minus zx, lower the gap along that vector to the hull's supporting
    hyperplane, both recomputed from the rows; a solve stops at the optimum (up to rounding), once
    lower > its stop, or after 10 (d + 2) cycles."""
    B, d = ZX.shape
    upper, lower = np.full(B, np.inf), np.zeros(B)
    sq = norms[None, :] - 2 * (ZX @ zp.T) + np.einsum("ij,ij->i", ZX, ZX)[:, None]
    size = min(len(zp), d + 2) + 1  # rows and columns [:k] of a Gram matrix in use
    solves = []
    for b, j in enumerate(sq.argmin(1)):
        gram = np.empty((size, size))
        gram[0, 0] = max(float(sq[b, j]), 0.0)
        solves.append(([int(j)], np.ones(1), gram))
    live = list(range(B))
    for _ in range(10 * (d + 2)):
        if not live:
            break
        zx = ZX[live]
        W = _combine([solves[b] for b in live], zp) - zx
        YW = W @ zp.T - np.einsum("ij,ij->i", zx, W)[:, None]  # [L, m]: (zp_i - zx) . w
        WW = np.einsum("ij,ij->i", W, W)
        going = []
        for r, b in enumerate(live):
            ww, yw = float(WW[r]), YW[r]
            norm = np.sqrt(ww)
            if norm <= _EPS:
                upper[b] = lower[b] = 0.0
                continue
            upper[b], lower[b] = min(upper[b], norm), max(lower[b], float(yw.min()) / norm)
            j = int(np.argmin(yw))
            active, lam, gram = solves[b]
            if lower[b] > stops[b] or yw[j] >= ww - 1e-12 * max(ww, 1.0) or j in active:
                continue
            k = len(active)
            if k + 1 >= size:
                continue  # more rows than an affinely independent corral can hold: rounding
            yj = zp[j] - zx[r]
            gram[k, :k] = gram[:k, k] = (zp[active] - zx[r]) @ yj
            gram[k, k] = yj @ yj
            active.append(j)
            lam, active, gram = _affine_minimum(gram, active, np.concatenate((lam, [0.0])))
            if active:
                solves[b] = (active, lam, gram)
                going.append(b)
        live = going
    return upper, lower


def _combine(solves: list, zp: np.ndarray) -> np.ndarray:
    """[L, d] the points lam @ zp[active] of the solves (active, lam, gram), as one sparse product."""
    from scipy.sparse import csr_matrix

    indptr = np.cumsum([0] + [len(active) for active, _, _ in solves])
    cols = np.fromiter((a for active, _, _ in solves for a in active), int, indptr[-1])
    weights = np.concatenate([lam for _, lam, _ in solves])
    return csr_matrix((weights, cols, indptr), shape=(len(solves), len(zp))) @ zp


def _affine_minimum(
    gram: np.ndarray, active: list[int], lam: np.ndarray
) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Wolfe's minor cycles on the Gram matrix of the rows Y[active] (gram[:k, :k], k active rows;
    updated in place): move their convex weights lam towards the minimiser of the norm on their
    affine hull, dropping rows whose weight reaches 0 (with their row and column of gram)."""
    from scipy.linalg.lapack import dgesv

    while active:
        k = len(active)
        kkt = np.ones((k + 1, k + 1))
        kkt[:k, :k], kkt[k, k] = gram[:k, :k], 0.0
        rhs = np.zeros(k + 1)
        rhs[k] = 1.0
        *_, sol, info = dgesv(kkt, rhs)
        if info != 0:  # affinely dependent rows: a least-squares solution
            sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
        mu = sol[:k]
        if not np.isfinite(mu).all():
            return lam, [], gram
        if (mu > 1e-14).all():
            return mu / mu.sum(), active, gram  # convex weights, whatever the solve's rounding
        fall = lam - mu
        down = (mu <= 1e-14) & (fall > 0)
        theta = float(np.min(lam[down] / fall[down])) if down.any() else 0.0
        lam = np.maximum(lam + min(theta, 1.0) * (mu - lam), 0.0)
        keep = lam > 1e-14
        if keep.all():
            keep[int(np.argmin(np.where(down, lam, np.inf)))] = False
        active = [a for a, kept in zip(active, keep, strict=True) if kept]
        idx = np.flatnonzero(keep)
        gram[: len(idx), : len(idx)] = gram[np.ix_(idx, idx)]
        lam = lam[keep] / lam[keep].sum() if keep.any() else lam[keep]
    return lam, active, gram


def _settled(upper: np.ndarray, lower: np.ndarray, tol: float, out: np.ndarray) -> np.ndarray:
    """[n] rows whose nearest hull the bounds alone decide (written to out)."""
    best = upper.argmin(1)
    rows = np.arange(len(upper))
    rival = lower.copy()
    rival[rows, best] = np.inf
    done = upper[rows, best] < rival.min(1) - tol
    out[done] = best[done]
    return done


def _race(
    x: np.ndarray,
    sets: list[np.ndarray],
    frames: list,
    upper: np.ndarray,
    lower: np.ndarray,
    tol: float,
) -> int:
    """The nearest hull to x from the bounds [K], refining one hull a Wolfe step at a time."""
    races = [_Race(f, x, u) for f, u in zip(frames, upper, strict=True)]
    upper, lower = upper.copy(), lower.copy()
    done = np.zeros(len(sets), bool)
    for r, low in zip(races, lower, strict=True):
        r.lower = float(low)
    while True:
        best = int(np.argmin(upper))
        rival = np.delete(lower, best)
        if upper[best] < rival.min() - tol:
            return best
        near = lower <= upper[best] + tol
        open_ = np.flatnonzero(near & ~done)
        if not open_.size:  # a near-tie of exact distances: as point_hull_distances would
            tied = np.flatnonzero(near)
            exact = [point_hull_distances(x[None, :], sets[k])[0] for k in tied]
            return int(tied[int(np.argmin(exact))])
        k = int(open_[np.argmin(lower[open_])])
        races[k].step()
        upper[k], lower[k], done[k] = races[k].upper, races[k].lower, races[k].done
