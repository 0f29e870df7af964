"""Figures of probing results, pre-trained against fine-tuned, by layer (PNG, grey-scale readable).

Each series is one encoder group: `pretrained`, or a method (token tasks: `<finetune task>/<method>`)
whose value per layer is the median over its seeds, with the min-max range over seeds shaded; the
shared style of `isoprobe.core.figures`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from isoprobe.core import figures
from isoprobe.core.figures import plt


def series(reports: list[dict], key) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(layers, median, min, max) over `reports` (seeds) of `key(layer_dict) -> float | None`."""
    layers = [r["layer"] for r in reports[0]["layers"]]
    values = np.array(
        [[np.nan if (v := key(lay)) is None else v for lay in r["layers"]] for r in reports],
        dtype=float,
    )
    with warnings.catch_warnings():  # all-NaN layers (e.g. DirectProbe off) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return (
            np.array(layers),
            np.nanmedian(values, 0),
            np.nanmin(values, 0),
            np.nanmax(values, 0),
        )


def by_layer(
    groups: dict[str, list[dict]],
    panels: list[tuple[str, object]],
    path: Path,
    title: str,
    hline: float | None = None,
    hline_label: str = "",
) -> None:
    """One panel per (y label, key); one line per group (median over seeds, range shaded)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, (ylabel, key) in zip(axes[0], panels, strict=True):
        for i, (name, reports) in enumerate(groups.items()):
            x, med, lo, hi = series(reports, key)
            if np.isnan(med).all():
                continue
            ax.plot(
                x, med, label=f"{name} (n={len(reports)})", linewidth=1.2, **figures.line_style(i)
            )
            if len(reports) > 1:
                ax.fill_between(x, lo, hi, color=figures.grey(i), alpha=0.15, linewidth=0)
        if hline is not None:
            ax.axhline(hline, color="0.5", linewidth=0.8, linestyle=":", label=hline_label)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel(ylabel)
        ax.grid(True, color="0.88", linewidth=0.5)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=9)
    figures.save(fig, path)


def centroid_pca(
    before: np.ndarray,
    after: dict[str, np.ndarray],
    labels: list[str],
    layer: int,
    path: Path,
    title: str,
) -> None:
    """Label centroids [C, H] before fine-tuning and after (one panel per group), projected by one
    joint 2-D PCA per panel; arrows show each label's move."""
    from isoprobe.probing.geometry import pca_2d

    names = list(after)
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.2 * max(1, len(names)), 4.0), squeeze=False)  # fmt: skip
    for ax, name in zip(axes[0], names, strict=False):
        keep = np.isfinite(before).all(1) & np.isfinite(after[name]).all(1)
        (pb, pa), ratio = pca_2d(before[keep], after[name][keep])
        ax.scatter(pb[:, 0], pb[:, 1], marker="o", facecolors="white", edgecolors="black", label="pre-trained")  # fmt: skip
        ax.scatter(pa[:, 0], pa[:, 1], marker="s", color="0.3", label="fine-tuned")
        for j, lab in enumerate(np.asarray(labels)[keep]):
            ax.annotate(
                "", pa[j], pb[j], arrowprops={"arrowstyle": "->", "color": "0.5", "lw": 0.7}
            )
            ax.annotate(str(lab), pa[j], fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set_xlabel(f"PC 1 ({ratio[0]:.0%} of variance)")
        ax.set_ylabel(f"PC 2 ({ratio[1]:.0%} of variance)")
        figures.title(ax, f"{name}, layer {layer}", 40)
        ax.grid(True, color="0.88", linewidth=0.5)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    figures.save(fig, path)
