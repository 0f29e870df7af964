"""CoNLL-U treebanks: one row per sentence with its word forms and UPOS tags."""

from __future__ import annotations

from pathlib import Path

from isoprobe.core.config import TaskConfig
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.repo import data_path
from isoprobe.data.raw import RawData, Tally, read_lines

UPOS = (
    "ADJ",
    "ADP",
    "ADV",
    "AUX",
    "CCONJ",
    "DET",
    "INTJ",
    "NOUN",
    "NUM",
    "PART",
    "PRON",
    "PROPN",
    "PUNCT",
    "SCONJ",
    "SYM",
    "VERB",
    "X",
)


def parse_conllu(path: Path, lines: list[str], tally: Tally) -> list[dict]:
    """Sentences as {"tokens", "tags", "origin"}; multi-word token ranges (1-2) and empty nodes
    (3.1) are skipped, as UPOS belongs to the syntactic words. A sentence with an undecodable line
    or a word line without 10 fields is left out and counted (`undecodable`, `malformed_line`)."""
    rows: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    start, problem = 1, None
    bad_lines = tally.bad_lines.get(str(path), set())
    for i, line in enumerate([*lines, ""], start=1):
        if not line.strip():
            if problem:
                tally.add(*problem)
            elif tokens:
                rows.append({"tokens": tokens, "tags": tags, "origin": f"{path.name}:{start}"})
            tokens, tags, start, problem = [], [], i + 1, None
            continue
        if i in bad_lines:
            problem = problem or ("undecodable", None)
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            problem = problem or (
                "malformed_line",
                f"{path}:{i}: a CoNLL-U word line has 10 tab-separated fields, got {len(cols)}",
            )
            continue
        wid = cols[0]
        if "-" in wid or "." in wid:
            continue
        if not tokens:
            start = i
        tokens.append(cols[1])
        tags.append(cols[3])
    return rows


def read_conllu(task: TaskConfig, key: str) -> RawData:
    path = data_path(task.argument)
    if not path.is_file():
        raise IsoprobeError(f"{key}.source: CoNLL-U file not found: {path}")
    tally = Tally()
    rows = parse_conllu(path, read_lines(path, task.encoding, None, tally), tally)
    return RawData(
        kind="token",
        label_type="classification",
        splits={"pool": rows},
        label_names=task.labels or list(UPOS),
        text_columns=["FORM"],
        label_column="UPOS",
        files=[path],
        split_origin={"pool": f"all sentences of {path.name}"},
        tally=tally,
    )
