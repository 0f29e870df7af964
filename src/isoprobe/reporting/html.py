"""Self-contained HTML and Markdown pieces for the report: escaped tables, embedded PNGs, sections."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem;
       color: #111; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #999; margin-top: 2.5rem; }
h3 { margin-top: 1.6rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: 13px; }
th, td { border: 1px solid #bbb; padding: .2rem .5rem; text-align: right; }
th { background: #eee; } td.l, th.l { text-align: left; }
td.best { font-weight: bold; text-decoration: underline; }
img { max-width: 100%; border: 1px solid #ddd; margin: .3rem 0; }
figure { display: inline-block; margin: .4rem; vertical-align: top; max-width: 48%; }
figcaption { font-size: 12px; color: #333; }
.note { background: #f4f4f4; border-left: 4px solid #666; padding: .4rem .8rem; }
code { background: #f0f0f0; padding: 0 .2rem; }
nav ol { columns: 2; }
"""


def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def fmt(x: object, digits: int = 4) -> str:
    """A number as text: `digits` significant digits; '' for None / NaN."""
    if x is None:
        return ""
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x != x:
            return ""
        return f"{x:.{digits}g}"
    return str(x)


@dataclass
class Table:
    """Header [k] and rows [n][k] of cells (numbers are formatted by fmt); `best` holds (row, col)
    cells to mark; the first `left` columns are left-aligned (labels)."""

    header: list[str]
    rows: list[list[object]]
    best: set[tuple[int, int]] = field(default_factory=set)
    left: int = 1

    def html(self) -> str:
        head = "".join(
            f'<th class="l">{esc(h)}</th>' if j < self.left else f"<th>{esc(h)}</th>"
            for j, h in enumerate(self.header)
        )
        body = []
        for i, row in enumerate(self.rows):
            cells = []
            for j, v in enumerate(row):
                cls = [c for c, on in (("l", j < self.left), ("best", (i, j) in self.best)) if on]
                attr = f' class="{" ".join(cls)}"' if cls else ""
                cells.append(f"<td{attr}>{esc(fmt(v))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    def markdown(self) -> str:
        def cell(i: int, j: int, v: object) -> str:
            text = fmt(v).replace("|", "\\|")
            return f"**{text}**" if (i, j) in self.best and text else text

        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += [
            "| " + " | ".join(cell(i, j, v) for j, v in enumerate(r)) + " |"
            for i, r in enumerate(self.rows)
        ]
        return "\n".join(lines)


def image(path: Path, caption: str) -> str:
    """A PNG embedded as a data URI (the page stays one file, readable offline)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def para(text: str) -> str:
    return f"<p>{esc(text)}</p>"


@dataclass
class Section:
    title: str
    anchor: str
    parts: list[str] = field(default_factory=list)  # HTML fragments

    def add(self, *fragments: str) -> None:
        self.parts.extend(fragments)

    def html(self) -> str:
        return f'<section id="{esc(self.anchor)}"><h2>{esc(self.title)}</h2>{"".join(self.parts)}</section>'


def page(title: str, sections: list[Section], subtitle: str = "") -> str:
    nav = "".join(f'<li><a href="#{esc(s.anchor)}">{esc(s.title)}</a></li>' for s in sections)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1><p>{esc(subtitle)}</p><nav><ol>{nav}</ol></nav>"
        + "".join(s.html() for s in sections)
        + "</body></html>\n"
    )
