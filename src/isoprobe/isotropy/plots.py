"""IsoBN-style figures of a [CLS] cloud: PNG files, readable in grey-scale, with labelled axes (the
shared style of `isoprobe.core.figures`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from isoprobe.core import figures
from isoprobe.core.figures import plt


def std_histogram(std: np.ndarray, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.hist(std, bins=50, color="0.35", edgecolor="black", linewidth=0.4)
    ax.axvline(np.median(std), color="black", linestyle="--", label=f"median {np.median(std):.3g}")
    ax.set_xlabel("standard deviation of a dimension (embedding units)")
    ax.set_ylabel("number of dimensions")
    figures.title(ax, title)
    ax.legend(fontsize=8)
    figures.save(fig, path)


def std_sorted(std: np.ndarray, path: Path, title: str) -> None:
    s = np.sort(std)[::-1]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(np.arange(1, len(s) + 1), s, color="black", linewidth=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("dimension rank (by standard deviation)")
    ax.set_ylabel("standard deviation (log scale)")
    figures.title(ax, title)
    ax.grid(True, which="both", color="0.85", linewidth=0.5)
    figures.save(fig, path)


def correlation_heatmap(corr: np.ndarray, std: np.ndarray, k: int, path: Path, title: str) -> None:
    top = np.argsort(-std)[:k]
    c = corr[np.ix_(top, top)]
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    im = ax.imshow(np.abs(c), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel(f"dimension (top {k} by std, descending)")
    ax.set_ylabel(f"dimension (top {k} by std, descending)")
    figures.title(ax, title)
    fig.colorbar(im, ax=ax, label="|Pearson correlation|")
    figures.save(fig, path)


def abs_mean(mean: np.ndarray, std: np.ndarray, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    ax.bar(np.arange(len(mean)), np.abs(mean), width=1.0, color="0.25", label="|mean|")
    ax.plot(np.arange(len(std)), std, color="0.6", linewidth=0.8, linestyle="-", label="std")
    ax.set_xlabel("dimension index")
    ax.set_ylabel("embedding units")
    figures.title(ax, title)
    ax.legend(fontsize=8)
    figures.save(fig, path)


BY_LAYER_PANELS = (
    ("isoscore", "IsoScore (1 = isotropic)"),
    ("mean_cosine", "mean cosine of pairs"),
    ("centring_ratio", "||mean|| / mean ||x||"),
    ("std_cv", "CV of per-dimension std"),
    ("corr_mean_abs", "mean |correlation|"),
    ("effective_rank", "effective rank (dims)"),
)


def metrics_by_layer(layers: list[dict], path: Path, title: str) -> None:
    x = [r["layer"] for r in layers]
    fig, axes = plt.subplots(2, 3, figsize=(10, 5.4), sharex=True)
    for ax, (key, label) in zip(axes.flat, BY_LAYER_PANELS, strict=True):
        y = [np.nan if r.get(key) is None else r[key] for r in layers]
        ax.plot(x, y, marker="o", color="black", markerfacecolor="white", linewidth=1.2)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(True, color="0.85", linewidth=0.5)
    for ax in axes[1]:
        ax.set_xlabel("layer (0 = embeddings)")
    fig.suptitle(title, fontsize=10)
    figures.save(fig, path)
