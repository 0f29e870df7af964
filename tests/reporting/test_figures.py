"""One figure style for every package (`isoprobe.core.figures`): the series styles are the ones the
figures have always had, and no module imports another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

from isoprobe.core import figures

SRC = Path(__file__).resolve().parents[2] / "src" / "isoprobe"


def test_series_styles_cycle_through_the_grey_scale_map():
    assert figures.line_style(0) == {
        "linestyle": "-",
        "marker": "o",
        "color": "0.0",
        "markersize": 4,
    }
    assert figures.line_style(7) == {
        "linestyle": "--",
        "marker": "s",
        "color": "0.4",
        "markersize": 4,
    }
    assert [figures.grey(i) for i in range(6)] == ["0.0", "0.25", "0.4", "0.55", "0.7", "0.0"]
    assert [figures.hatch(i) for i in (0, 1, 6, 7)] == ["", "//", "oo", ""]


def test_figure_modules_draw_with_the_shared_style():
    for name in ("isotropy/plots.py", "probing/plots.py", "reporting/plots.py"):
        text = (SRC / name).read_text(encoding="utf-8")
        assert "from isoprobe.core import figures" in text and "matplotlib.use" not in text, name


def test_the_figure_and_reporting_modules_import_no_private_names():
    paths = [SRC / "isotropy/plots.py", SRC / "probing/plots.py", *(SRC / "reporting").glob("*.py")]
    bad = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("isoprobe"):
                bad += [f"{path.relative_to(SRC)}: {node.module}.{a.name}"
                        for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]  # fmt: skip
    assert bad == []
