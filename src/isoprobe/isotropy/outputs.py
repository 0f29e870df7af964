"""Isotropy of one encoder's [CLS] on one split, every layer: the metrics report, the per-dimension
arrays and the plots. Shared by the pre-trained encoder and (later) each fine-tuned one."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from isoprobe.core import layout
from isoprobe.core.config import IsotropyConfig
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.io import atomic_dir, atomic_file, json_safe, write_safetensors
from isoprobe.isotropy.metrics import Isotropy


@dataclass
class LayerIsotropy:
    fits: list[Isotropy]  # one per layer, 0 = embedding layer
    layers: list[dict]  # [{"layer": i, **metrics}] with None for undefined values

    @property
    def last(self) -> Isotropy:
        return self.fits[-1]


def check_top_k(cfg: IsotropyConfig, hidden: int) -> None:
    """`isotropy.top_k` must fit the vectors' H dimensions (a share of the top 1000 of 384 is no
    measurement)."""
    too_big = [k for k in cfg.top_k if k > hidden]
    if too_big:
        raise IsoprobeError(
            f"isotropy.top_k: {too_big} more than the {hidden} dimensions of the model's vectors; "
            f"use values up to {hidden}"
        )


def isotropy_by_layer(cls: np.ndarray, cfg: IsotropyConfig) -> LayerIsotropy:
    """Fit `Isotropy` on every layer of `cls` [L+1, N, H]; undefined metrics (NaN) become None."""
    check_top_k(cfg, cls.shape[-1])
    fits = [Isotropy(cfg.top_k, cfg.corr_threshold).fit(cls[i]) for i in range(cls.shape[0])]
    return LayerIsotropy(fits, [{"layer": i, **json_safe(f.metrics_)} for i, f in enumerate(fits)])


def report(result: LayerIsotropy, **context) -> dict:
    """The metrics JSON: `context` (task, encoder, model, split), the last layer's metrics at the top
    level, and every layer in `layers`."""
    return {**context, "layer": len(result.fits) - 1, **result.layers[-1], "layers": result.layers}


def write_arrays(result: LayerIsotropy, path: Path, metadata: dict[str, str]) -> None:
    """Per-dimension mean and std and the covariance eigenvalues, each [L+1, H] float32."""
    write_safetensors(
        path,
        {
            "mean": np.stack([f.mean_ for f in result.fits]).astype(np.float32),
            "std": np.stack([f.std_ for f in result.fits]).astype(np.float32),
            "eigenvalues": np.stack([f.eigenvalues_ for f in result.fits]).astype(np.float32),
        },
        metadata,
    )


def write_plots(
    result: LayerIsotropy, task: str, encoder: str, heatmap_dims: int, title: str
) -> None:
    """PNG figures into the isotropy plots folder of (task, encoder) (replaced whole) and two CSV
    data plots beside it: every metric by layer and the last layer's sorted std (core.layout)."""
    from isoprobe.isotropy import plots  # matplotlib: only where figures are drawn

    plot_dir = layout.isotropy_plots_dir(task, encoder)
    last, n_layers = result.last, len(result.fits)
    where = f"{title}, [CLS] layer {n_layers - 1} (n={int(last.metrics_['n_rows'])})"
    with atomic_dir(plot_dir) as tmp:
        plots.std_histogram(last.std_, tmp / "std_hist.png", f"Per-dimension std: {where}")
        plots.std_sorted(last.std_, tmp / "std_sorted.png", f"Sorted per-dimension std: {where}")
        plots.correlation_heatmap(
            last.corr_,
            last.std_,
            min(heatmap_dims, len(last.std_)),
            tmp / "corr_heatmap.png",
            f"|correlation| of top-variance dimensions: {where}",
        )
        plots.abs_mean(
            last.mean_, last.std_, tmp / "abs_mean.png", f"|mean| per dimension: {where}"
        )
        plots.metrics_by_layer(
            result.layers, tmp / "by_layer.png", f"[CLS] isotropy by layer: {title}"
        )
    write_by_layer_csv(result, layout.isotropy_plot_csv(task, encoder, "by_layer"))
    with atomic_file(layout.isotropy_plot_csv(task, encoder, "std_sorted")) as f:
        w = csv.writer(f)
        w.writerow(["rank", "std"])
        for i, s in enumerate(np.sort(last.std_)[::-1], start=1):
            w.writerow([i, f"{s:.6g}"])


def write_by_layer_csv(result: LayerIsotropy, path: Path) -> None:
    """Every metric by layer (a DVC data plot)."""
    with atomic_file(path) as f:
        keys = [k for k in result.layers[0] if k != "layer"]
        w = csv.writer(f)
        w.writerow(["layer", *keys])
        for r in result.layers:
            w.writerow([r["layer"], *("" if r[k] is None else f"{r[k]:.6g}" for k in keys)])
