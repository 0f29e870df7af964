"""Delimited text files (CSV/TSV) into sentence rows, with named columns checked up front."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from isoprobe.core.errors import IsoprobeError
from isoprobe.data.raw import Tally, read_lines


def read_table(
    path: Path,
    delimiter: str,
    encoding: str,
    fallback: str | None,
    tally: Tally,
    header: list[str] | None = None,
    quoting: int = csv.QUOTE_MINIMAL,
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Return (column names, [(line number, fields)]). `header=None` reads it from the first line.

    Rows whose field count differs from the header's are counted as `bad_field_count` and left out
    (the caller's invalid-rows policy decides whether that is fatal).
    """
    text = "\n".join(read_lines(path, encoding, fallback, tally))
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, quoting=quoting)
    rows = []
    try:
        for fields in reader:
            rows.append((reader.line_num, fields))
    except csv.Error as err:
        raise IsoprobeError(
            f"{path}:{reader.line_num}: malformed {delimiter!r}-delimited text: {err}"
        ) from None
    rows_start_line = 0  # the line before the first record
    if header is None:
        if not rows:
            raise IsoprobeError(f"{path}: empty file (expected a header line)")
        if any(n <= rows[0][0] for n in tally.bad_lines.get(str(path), ())):
            raise IsoprobeError(f"{path}: the header line is not decodable as {encoding}")
        header = [h.strip() for h in rows[0][1]]
        rows_start_line = rows[0][0]
        rows = rows[1:]
    good = []
    bad_lines = tally.bad_lines.get(str(path), set())
    previous = rows_start_line
    for line, fields in rows:
        first, previous = previous + 1, line  # a quoted record may span lines first..line
        if bad_lines and any(n in bad_lines for n in range(first, line + 1)):
            tally.add("undecodable")
            continue
        if fields == [] or fields == [""]:
            continue  # blank line
        if len(fields) != len(header):
            tally.add(
                "bad_field_count", f"{path}:{line} has {len(fields)} fields, expected {len(header)}"
            )
            continue
        good.append((line, fields))
    return header, good


def require_columns(path: Path, header: list[str], wanted: list[str], key: str) -> list[int]:
    """Indices of `wanted` in `header`, or a message naming the missing column, the key and the file."""
    idx = []
    for col in wanted:
        if col not in header:
            raise IsoprobeError(
                f"{key}: column '{col}' not found in {path}; columns there: {', '.join(header)}"
            )
        idx.append(header.index(col))
    return idx


def parse_label(value: str, label_type: str) -> str | float | None:
    """Strip a label field; '' means missing. Regression labels become floats (NaN -> missing)."""
    value = value.strip()
    if value == "" or value.lower() in ("nan", "none", "null"):
        return None
    if label_type == "regression":
        try:
            f = float(value)
        except ValueError:
            return value  # reported as not numeric by the prepare step
        return None if math.isnan(f) else f
    return value


def table_rows(
    path: Path,
    header: list[str],
    rows: list[tuple[int, list[str]]],
    text_columns: list[str],
    label_column: str,
    label_type: str,
    task_key: str,
) -> list[dict]:
    text_idx = require_columns(path, header, text_columns, f"{task_key}.text_columns")
    (label_idx,) = require_columns(path, header, [label_column], f"{task_key}.label_column")
    if label_idx in text_idx:
        raise IsoprobeError(
            f"{task_key}.label_column: '{label_column}' is also a text column of {path.name} "
            f"(text_columns {text_columns}); set {task_key}.label_column or text_columns"
        )
    out = []
    for line, fields in rows:
        out.append(
            {
                "text_a": fields[text_idx[0]],
                "text_b": fields[text_idx[1]] if len(text_idx) > 1 else None,
                "label": parse_label(fields[label_idx], label_type),
                "origin": f"{path.name}:{line}",
            }
        )
    return out
