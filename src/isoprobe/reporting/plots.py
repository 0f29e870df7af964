"""Report figures (PNG, labelled axes with units, readable in grey-scale): test score per method
over seeds, the per-step [CLS] gradient norm per method, IsoScore by layer before and after; the
shared style of `isoprobe.core.figures`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from isoprobe.core import figures
from isoprobe.core.figures import plt


def scores(task: str, metric: str, by_method: dict[str, list[float]], path: Path) -> None:
    """Per method: every seed's test score (points) and the median (bar)."""
    methods = list(by_method)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(methods) + 1.5), 3.2))
    for i, m in enumerate(methods):
        v = np.asarray(by_method[m], dtype=float)
        if v.size:
            ax.bar(i, np.median(v), color="0.85", edgecolor="0.2", hatch=figures.hatch(i))
            ax.plot(np.full(v.size, i), v, "o", color="0.1", markersize=4)
    ax.set_xticks(range(len(methods)), methods, rotation=20)
    ax.set_ylabel(f"test {metric}")
    ax.set_xlabel("[CLS] treatment (bar: median over seeds, dots: seeds)")
    lo = min((min(v) for v in by_method.values() if v), default=0.0)
    ax.set_ylim(max(0.0, lo - 0.1), None)
    figures.title(ax, f"{task}: test {metric} per method")
    figures.save(fig, path)


def gradients(task: str, by_method: dict[str, np.ndarray], path: Path) -> None:
    """Box plot per method of ||d loss / d [CLS]|| over every step of every seed (log scale)."""
    methods = [m for m, v in by_method.items() if len(v)]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(methods) + 1.5), 3.2))
    if methods:
        box = ax.boxplot(
            [by_method[m] for m in methods], patch_artist=True, showfliers=True, widths=0.6
        )
        for i, patch in enumerate(box["boxes"]):
            patch.set(facecolor="0.9", edgecolor="0.1", hatch=figures.hatch(i))
        for part in ("medians", "whiskers", "caps"):
            for line in box[part]:
                line.set_color("0.1")
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=20)
        ax.set_yscale("log")
    ax.set_ylabel("||d loss / d [CLS]|| (L2, per step)")
    ax.set_xlabel("[CLS] treatment (all steps of all seeds)")
    figures.title(ax, f"{task}: gradient norm at [CLS] during fine-tuning")
    figures.save(fig, path)


def isoscore_by_layer(
    task: str, pretrained: list[float], by_method: dict[str, np.ndarray], path: Path
) -> None:
    """IsoScore of [CLS] per layer: pre-trained, and the median over seeds per method."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    x = np.arange(len(pretrained))
    ax.plot(x, pretrained, color="0.0", linewidth=2.5, marker="o", label="pre-trained")
    for i, (m, v) in enumerate(by_method.items()):
        ax.plot(x[: len(v)], v, label=m, **figures.line_style(i + 1))
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("IsoScore (1 = isotropic)")
    ax.legend(fontsize=7, ncol=2)
    figures.title(
        ax, f"{task}: IsoScore of [CLS] by layer, before and after fine-tuning (median over seeds)"
    )
    figures.save(fig, path)
