"""What every source reader returns, before validation, label mapping, splitting and subsampling.

Sentence rows: {"text_a": str, "text_b": str | None, "label": str | float | None, "origin": str}.
Token rows (conllu): {"tokens": list[str], "tags": list[str], "origin": str}.
`origin` is "<file>:<line>" (or "<split>:<index>" for hub data), kept for traceability.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from isoprobe.core.errors import IsoprobeError
from isoprobe.core.repo import portable_path


@dataclass
class Tally:
    """Counts per reason (rows dropped, lines decoded by a fallback) with the first example of each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    # line numbers (1-based) per file whose bytes the task's encoding could not decode
    bad_lines: dict[str, set[int]] = field(default_factory=dict)

    def add(self, reason: str, example: str | None = None, n: int = 1) -> None:
        self.counts[reason] += n
        if example is not None:
            self.examples.setdefault(reason, example)


@dataclass
class RawData:
    kind: str  # "sentence" or "token"
    label_type: str  # "classification" or "regression"
    splits: dict[str, list[dict]]  # labelled official splits present: subset of train/dev/test
    label_names: list[str] | None  # known label set, or None to take it from the data
    text_columns: list[str]
    label_column: str
    files: list[Path] = field(default_factory=list)  # files read, hashed into meta.json
    split_origin: dict[str, str] = field(default_factory=dict)
    tally: Tally = field(
        default_factory=lambda: Tally()
    )  # reader-level counts (fallback decoding, bad rows)
    metric: str | None = None  # the source's customary metric (GLUE: mcc for CoLA, f1 for MRPC/QQP)
    source_splits: dict[str, str | None] | None = None  # hf: the dataset split each split came from


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_lines(path: Path, encoding: str, fallback: str | None, tally: Tally) -> list[str]:
    """Decode a text file line by line. A line that fails `encoding` is decoded with `fallback`
    (counted as `decoded_with_<fallback>`); without one it is decoded with replacement characters
    and its number recorded in `tally.bad_lines[str(path)]`: the reader drops the row it belongs
    to as `undecodable` (the invalid-rows policy then decides whether that is fatal)."""
    if not path.is_file():
        raise IsoprobeError(f"data file not found: {path}")
    out, where = [], portable_path(path)  # examples land in meta.json: no install location
    data = path.read_bytes().removeprefix(
        b"\xef\xbb\xbf"
    )  # a UTF-8 byte-order mark (Excel) is not text
    for i, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.removesuffix(b"\r")
        try:
            out.append(raw.decode(encoding))
        except UnicodeDecodeError as err:
            if fallback is None:
                out.append(raw.decode(encoding, errors="replace"))
                tally.bad_lines.setdefault(str(path), set()).add(i)
                tally.examples.setdefault(
                    "undecodable",
                    f"{where}:{i}: bytes not decodable as {encoding} ({err.reason} at byte {err.start})",
                )
                continue
            out.append(raw.decode(fallback))
            tally.add(f"decoded_with_{fallback}", f"{where}:{i}")
    if out and out[-1] == "":
        out.pop()
    return out
