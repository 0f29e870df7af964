"""Seeded, stratified carving and subsampling of index sets."""

from __future__ import annotations

import numpy as np


def strata_of(labels: list, label_type: str, bins: int = 10) -> np.ndarray:
    """Integer stratum per row: the class for classification, a quantile bin for regression."""
    if label_type == "classification":
        _, inv = np.unique(np.asarray(labels), return_inverse=True)
        return inv
    y = np.asarray(labels, dtype=float)
    edges = np.unique(np.quantile(y, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.searchsorted(edges, y, side="right")


def stratified_sample(strata: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Pick `n` of `len(strata)` rows so each stratum keeps its share (largest remainder), seeded.

    Returns sorted row indices, so the source order is kept. `n >= len(strata)` returns every row.
    """
    total = len(strata)
    if n >= total:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(strata, return_counts=True)
    exact = counts * (n / total)
    take = np.floor(exact).astype(int)
    short = n - take.sum()
    # Largest fractional part first; ties broken by class order (deterministic).
    order = np.lexsort((np.arange(len(classes)), -(exact - take)))
    take[order[:short]] += 1
    chosen = []
    for c, k in zip(classes, take, strict=True):
        members = np.flatnonzero(strata == c)
        chosen.append(members[rng.permutation(len(members))[:k]])
    return np.sort(np.concatenate(chosen))


def carve(strata: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into (rest, carved) with `round(fraction * n)` carved rows, stratified."""
    n_carved = int(round(fraction * len(strata)))
    carved = stratified_sample(strata, n_carved, seed)
    mask = np.ones(len(strata), dtype=bool)
    mask[carved] = False
    return np.flatnonzero(mask), carved
