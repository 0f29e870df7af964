"""The one style of every isoprobe figure: matplotlib on the non-interactive Agg backend (stages run
headless), PNGs readable in grey-scale (series told apart by line style, marker, grey level and
hatch, never by colour alone), short wrapped titles, and atomic saving.

`isotropy.plots`, `probing.plots` and `reporting.plots` draw with `plt` from here and finish each
figure with `title` and `save`; the i-th series of a figure gets `line_style(i)` / `grey(i)` (lines)
or `hatch(i)` (bars and boxes)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from isoprobe.core.io import atomic_file  # noqa: E402

__all__ = ["GREYS", "HATCHES", "LINE_STYLES", "grey", "hatch", "line_style", "plt", "save", "title"]

# (line style, marker) of the i-th series
LINE_STYLES = [
    ("-", "o"),
    ("--", "s"),
    ("-.", "^"),
    (":", "D"),
    ((0, (5, 1)), "v"),
    ((0, (3, 1, 1, 1)), "P"),
]
GREYS = ["0.0", "0.25", "0.4", "0.55", "0.7"]
HATCHES = ["", "//", "..", "xx", "\\\\", "++", "oo"]
DPI = 110


def grey(i: int) -> str:
    """The grey level (matplotlib colour) of the i-th series."""
    return GREYS[i % len(GREYS)]


def line_style(i: int) -> dict:
    """Keyword arguments of `ax.plot` for the i-th series: line style, marker, grey level."""
    ls, marker = LINE_STYLES[i % len(LINE_STYLES)]
    return {"linestyle": ls, "marker": marker, "color": grey(i), "markersize": 4}


def hatch(i: int) -> str:
    """The hatch pattern of the i-th bar or box."""
    return HATCHES[i % len(HATCHES)]


def title(ax, text: str, width: int = 60) -> None:
    """A small axes title, wrapped at `width` characters."""
    ax.set_title(textwrap.fill(text, width), fontsize=8)


def save(fig, path: Path) -> None:
    """Lay `fig` out, write it as a PNG to `path` atomically, and close it."""
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    plt.close(fig)
