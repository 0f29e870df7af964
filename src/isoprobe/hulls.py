"""Exact linear separability and distances between convex hulls of point sets (HiGHS, no license).

`separate(P, Q)` decides whether hull(P) and hull(Q) are disjoint, i.e. P and Q are strictly linearly
separable: the LP  w.p + b >= 1 (p in P), w.q + b <= -1 (q in Q)  is feasible. `hull_distance(P, Q)`
is the Euclidean distance between the hulls: 2 / ||w|| of the hard-margin SVM (the QP
min ||w||^2 / 2 under the same constraints), 0 when they intersect.

Both solve over a growing subset of the points (constraint generation): a subset that overlaps proves
overlap; a hyperplane that separates every point (checked with one matrix product) proves separation,
and the SVM on a subset is the SVM of the whole set once no point violates its margin. Only the few
points near the boundary ever enter the solver, so sets of thousands of points in hundreds of
dimensions take milliseconds. Coordinates are centred and scaled before solving.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_ADD = 64  # points per side added to the subset per round


@dataclass
class Separation:
    separable: bool
    w: np.ndarray | None = None  # [d] (original coordinates): w.p - t > 0 > w.q - t
    t: float = 0.0  # threshold, midway between the two sides
    witness: tuple[np.ndarray, np.ndarray] | None = None  # row indices of P, Q whose hulls meet
    rounds: int = 0


def _highs():
    import highspy

    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    return h


def _solve(zp: np.ndarray, zq: np.ndarray, quadratic: bool) -> np.ndarray | None:
    """(w, b) [d + 1] with w.p + b >= 1 on rows of zp and w.q + b <= -1 on rows of zq, minimising
    ||w||^2 when `quadratic` (else any feasible point); None when infeasible."""
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
    h = _highs()
    if quadratic:
        model = highspy.HighsModel()
        model.lp_ = lp
        hess = highspy.HighsHessian()
        hess.dim_ = d + 1
        hess.format_ = highspy.HessianFormat.kTriangular
        hess.start_ = np.concatenate([np.arange(d + 1), [d]]).astype(np.int32)
        hess.index_ = np.arange(d, dtype=np.int32)
        hess.value_ = np.ones(d)
        model.hessian_ = hess
        h.passModel(model)
    else:
        h.passModel(lp)
    h.run()
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        return None
    if status != highspy.HighsModelStatus.kOptimal:
        raise RuntimeError(f"HiGHS ended with status {h.modelStatusToString(status)}")
    return np.asarray(h.getSolution().col_value)


def _frame(P: np.ndarray, Q: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and scale: z = (x - c) / s keeps solver coefficients near 1."""
    c = (P.mean(0) + Q.mean(0)) / 2
    s = float(np.sqrt(((np.vstack([P, Q]) - c) ** 2).sum(1).mean())) or 1.0
    return c, s


def _initial(
    zp: np.ndarray, zq: np.ndarray, direction: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Start from the points of each side that reach furthest towards the other along `direction`."""
    v = zp.mean(0) - zq.mean(0) if direction is None else direction
    sp, sq = np.argsort(zp @ v, kind="stable"), np.argsort(-(zq @ v), kind="stable")
    return sp[:_ADD], sq[:_ADD]


def _grow(chosen: np.ndarray, violation: np.ndarray) -> np.ndarray:
    """Add up to _ADD of the most violating points not yet chosen (violation > 0)."""
    mask = violation > 0
    mask[chosen] = False
    new = np.flatnonzero(mask)
    new = new[np.argsort(-violation[new], kind="stable")[:_ADD]]
    return np.union1d(chosen, new)


def separate(P: np.ndarray, Q: np.ndarray, direction: np.ndarray | None = None) -> Separation:
    """Exact strict linear separability of P [n, d] and Q [m, d]."""
    P, Q = np.asarray(P, dtype=np.float64), np.asarray(Q, dtype=np.float64)
    c, s = _frame(P, Q)
    zp, zq = (P - c) / s, (Q - c) / s
    ip, iq = _initial(zp, zq, direction)
    rounds = 0
    while True:
        rounds += 1
        sol = _solve(zp[ip], zq[iq], quadratic=False)
        if sol is None:
            return Separation(False, witness=(ip, iq), rounds=rounds)
        w, b = sol[:-1], sol[-1]
        mp, mq = zp @ w + b, zq @ w + b
        lo, hi = mp.min(), mq.max()
        if lo > hi + 1e-9 * max(1.0, abs(lo), abs(hi)):
            return Separation(True, w / s, float((lo + hi) / 2 - b + (w / s) @ c), rounds=rounds)
        ip, iq = _grow(ip, 1.0 - mp), _grow(iq, mq + 1.0)


def hull_distance(P: np.ndarray, Q: np.ndarray, tol: float = 1e-7) -> float:
    """Euclidean distance between hull(P) and hull(Q); 0.0 when they intersect."""
    P, Q = np.asarray(P, dtype=np.float64), np.asarray(Q, dtype=np.float64)
    c, s = _frame(P, Q)
    zp, zq = (P - c) / s, (Q - c) / s
    ip, iq = _initial(zp, zq, None)
    while True:
        sol = _solve(zp[ip], zq[iq], quadratic=True)
        if sol is None:
            return 0.0
        w, b = sol[:-1], sol[-1]
        vp, vq = 1.0 - (zp @ w + b), (zq @ w + b) + 1.0
        if vp.max() <= tol and vq.max() <= tol:
            return float(2.0 * s / np.linalg.norm(w))
        ip, iq = _grow(ip, vp - tol), _grow(iq, vq - tol)
