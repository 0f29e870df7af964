"""Probe one encoder's representations of a task, layer by layer (Zhou & Srikumar 2021, 2022).

Per layer, on frozen vectors (rows: sentences for [CLS]/mean features, words for token tasks):
- a linear and an MLP classifier probe trained on train, configuration chosen on dev, accuracy on
  train, dev and test;
- DirectProbe clusters of the train split and of the test split: cluster count against label count
  (equal: linearly separable), label-pair hull distances and each label's minimum distance to the
  others, nearest-cluster accuracy on test, and the train/test spatial similarity (Pearson
  correlation of the two label-pair distance vectors);
- label centroids of the train split;
- against a reference encoder (the pre-trained one) on the same rows: linear CKA, the spatial
  similarity of the two label-pair distance vectors, and how far each label's centroid moved.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from isoprobe.core.config import ProbeConfig
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.layout import SPLITS
from isoprobe.probing.classifiers import LinearProbe, MLPProbe
from isoprobe.probing.directprobe import DirectProbe
from isoprobe.probing.geometry import (
    centroid_movement,
    label_centroids,
    linear_cka,
    spatial_similarity,
)


@dataclass
class Split:
    """One split's vectors at every layer and their labels."""

    X: np.ndarray  # [L+1, N, H] float32
    y: np.ndarray  # [N] int label codes (index into the task's label names)


@dataclass
class Reference:
    """What a fine-tuned encoder is compared with: the pre-trained vectors of the same rows and the
    pre-trained probe's arrays."""

    train: np.ndarray  # [L+1, N, H]
    centroids: np.ndarray  # [L+1, C, H]
    distances_train: np.ndarray  # [L+1, C, C] label-pair hull distances of the train split


@dataclass
class ProbeResult:
    layers: list[dict]  # one dict of metrics per probed layer
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # see `probe_encoder`


def _number(x) -> float | None:
    """JSON-ready float: NaN/inf (undefined) become None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def resolve_layers(requested: list[int] | None, n_layers: int) -> list[int]:
    """Layer indices to probe (0 = embeddings); `requested` may count from the end (-1 = last)."""
    if requested is None:
        return list(range(n_layers))
    out = []
    for layer in requested:
        if not -n_layers <= layer < n_layers:
            raise IsoprobeError(
                f"probe.layers: layer {layer} is out of range: the encoder has {n_layers} layers "
                f"(0 = embeddings ... {n_layers - 1}; -1 = the last, down to -{n_layers})"
            )
        out.append(layer % n_layers)
    return sorted(set(out))


def subsample(n: int, max_rows: int | None, seed: int) -> np.ndarray:
    """Sorted row indices: all rows, or a seeded random subset of `max_rows`."""
    if max_rows is None or n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:max_rows])


def _directprobe(X: np.ndarray, y: np.ndarray, n_labels: int) -> tuple[DirectProbe | None, dict]:
    """Fit DirectProbe; returns (probe or None when nothing is left to cluster, metrics)."""
    probe = DirectProbe().fit(X, y)
    out = {
        "rows": len(y),
        "conflicting_rows": probe.conflicts_["rows"],
        "clusters": probe.n_clusters_,
        "labels_present": len(probe.labels_),
        "lp_calls": probe.stats_.lp_calls,
        "touching_pairs": probe.stats_.touching,
        "undecided_pairs": probe.stats_.undecided,
    }
    if probe.n_clusters_ == 0:
        return None, out
    return probe, out


def _full_label_distances(probe: DirectProbe, n_labels: int) -> np.ndarray:
    """[C, C] label-pair distances indexed by label code (NaN where a label is absent)."""
    out = np.full((n_labels, n_labels), np.nan)
    codes = probe.labels_.astype(int)
    out[np.ix_(codes, codes)] = probe.label_distances()
    return out


def _min_distances(D: np.ndarray) -> np.ndarray:
    """[C] each label's minimum distance to any other label (NaN when none is defined)."""
    with np.errstate(all="ignore"):
        masked = np.where(np.eye(len(D), dtype=bool), np.nan, D)
        return np.array([np.nan if np.isnan(r).all() else np.nanmin(r) for r in masked])


def probe_layer(
    layer: int,
    data: dict[str, Split],
    n_labels: int,
    cfg: ProbeConfig,
    reference: Reference | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Every probe on one layer. Returns (metrics, arrays) with arrays `centroids` [C, H],
    `distances_train` / `distances_test` [C, C]."""
    tr, dv, te = (data[s] for s in SPLITS)
    Xtr, Xdv, Xte = tr.X[layer], dv.X[layer], te.X[layer]
    out: dict = {"layer": layer}
    t0 = time.perf_counter()
    for name, probe in (
        ("linear", LinearProbe(c_grid=tuple(cfg.linear.c_grid), max_iter=cfg.linear.max_iter, seed=cfg.seed)),
        ("mlp", MLPProbe(hidden_grid=tuple(map(tuple, cfg.mlp.hidden_grid)), l2_grid=tuple(cfg.mlp.l2_grid), lr=cfg.mlp.lr, seed=cfg.seed)),
    ):  # fmt: skip
        probe.fit(Xtr, tr.y, Xdv, dv.y)
        out[name] = {
            "train": probe.score(Xtr, tr.y),
            "dev": probe.score(Xdv, dv.y),
            "test": probe.score(Xte, te.y),
            "params": probe.best_params_,
        }
    out["classifier_seconds"] = round(time.perf_counter() - t0, 3)

    arrays = {
        "centroids": label_centroids(Xtr, tr.y, np.arange(n_labels)),
        "distances_train": np.full((n_labels, n_labels), np.nan),
        "distances_test": np.full((n_labels, n_labels), np.nan),
    }
    if cfg.directprobe.enabled:
        t0 = time.perf_counter()
        dp: dict = {}
        for split, d in (("train", tr), ("test", te)):
            rows = subsample(len(d.y), cfg.directprobe.max_rows, cfg.seed)
            probe, stats = _directprobe(d.X[layer][rows], d.y[rows], n_labels)
            dp[split] = stats
            if probe is None:
                continue
            D = _full_label_distances(probe, n_labels)
            arrays[f"distances_{split}"] = D
            dp[split]["min_distance"] = _number(np.nanmin(D)) if np.isfinite(D).any() else None
            dp[split]["min_distance_by_label"] = [_number(v) for v in _min_distances(D)]
            if split == "train":
                dp["test_accuracy"] = probe.score(Xte, te.y)
        dp.setdefault("test_accuracy", None)
        dp["similarity_train_test"] = _number(
            spatial_similarity(arrays["distances_train"], arrays["distances_test"])
        )
        dp["seconds"] = round(time.perf_counter() - t0, 3)
        out["directprobe"] = dp

    if reference is not None:
        out["cka_to_pretrained"] = _number(linear_cka(reference.train[layer], Xtr))
        out["similarity_to_pretrained"] = _number(
            spatial_similarity(reference.distances_train[layer], arrays["distances_train"])
            if cfg.directprobe.enabled
            else np.nan
        )
        moved = centroid_movement(reference.centroids[layer], arrays["centroids"])
        out["centroid_movement"] = [_number(v) for v in np.asarray(moved)]
    return out, arrays


def probe_encoder(
    data: dict[str, Split],
    n_labels: int,
    cfg: ProbeConfig,
    reference: Reference | None = None,
    progress: bool = True,
    desc: str = "probe",
) -> ProbeResult:
    """`probe_layer` on every layer of `cfg.layers`. Arrays, stacked over all L+1 layers (NaN for
    layers not probed): `centroids` [L+1, C, H], `distances_train` / `distances_test` [L+1, C, C]."""
    n_layers = data["train"].X.shape[0]
    layers = resolve_layers(cfg.layers, n_layers)
    hidden = data["train"].X.shape[2]
    arrays = {
        "centroids": np.full((n_layers, n_labels, hidden), np.nan, dtype=np.float32),
        "distances_train": np.full((n_layers, n_labels, n_labels), np.nan),
        "distances_test": np.full((n_layers, n_labels, n_labels), np.nan),
    }
    results = []
    for layer in tqdm(layers, desc=desc, unit="layer", disable=not progress):
        metrics, arr = probe_layer(layer, data, n_labels, cfg, reference)
        for k, v in arr.items():
            arrays[k][layer] = v
        results.append(metrics)
    return ProbeResult(results, arrays)


def summary(layer: dict) -> dict:
    """Flat scalars of one layer's metrics (the names used in metrics JSON and MLflow)."""
    dp = layer.get("directprobe", {})
    out = {
        "linear_train": layer["linear"]["train"],
        "linear_test": layer["linear"]["test"],
        "mlp_train": layer["mlp"]["train"],
        "mlp_test": layer["mlp"]["test"],
    }
    if dp:
        out.update(
            clusters=dp["train"]["clusters"],
            min_distance=dp["train"].get("min_distance"),
            directprobe_test=dp.get("test_accuracy"),
            similarity_train_test=dp.get("similarity_train_test"),
        )
    for k in ("cka_to_pretrained", "similarity_to_pretrained"):
        if k in layer:
            out[k] = layer[k]
    moved = [v for v in layer.get("centroid_movement", []) if v is not None]
    if moved:
        out["centroid_movement_mean"] = float(np.mean(moved))
    return out
