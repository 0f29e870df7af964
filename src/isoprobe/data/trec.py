"""TREC question classification (Li & Roth 2002): `COARSE:fine question` per line."""

from __future__ import annotations

from pathlib import Path

from isoprobe.core.config import TaskConfig
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.repo import data_path
from isoprobe.data.raw import RawData, Tally, read_lines

TRAIN_FILES = ("train_5500.label", "train_5500.txt")
TEST_FILES = ("TREC_10.label", "TREC_10.txt", "test.label")
COARSE = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")


def _find(directory: Path, names: tuple[str, ...], key: str) -> Path:
    for n in names:
        if (directory / n).is_file():
            return directory / n
    raise IsoprobeError(
        f"{key}.source: none of {', '.join(names)} found in TREC directory {directory}"
    )


def parse_trec_lines(path: Path, lines: list[str], granularity: str, tally: Tally) -> list[dict]:
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        label, _, text = line.partition(" ")
        coarse, colon, fine = label.partition(":")
        if not colon or not coarse or not fine:
            tally.add(
                "malformed_line", f"{path}:{i}: expected 'COARSE:fine question', got {line[:60]!r}"
            )
            continue
        rows.append(
            {
                "text_a": text.strip(),
                "text_b": None,
                "label": coarse if granularity == "coarse" else label,
                "origin": f"{path.name}:{i}",
            }
        )
    return rows


def read_trec(task: TaskConfig, key: str) -> RawData:
    directory = data_path(task.argument)
    if not directory.is_dir():
        raise IsoprobeError(f"{key}.source: TREC directory not found: {directory}")
    tally = Tally()
    splits, files = {}, []
    for split, names in (("train", TRAIN_FILES), ("test", TEST_FILES)):
        path = _find(directory, names, key)
        # The official train file has a few Latin-1 bytes; such lines are decoded as Latin-1 and counted.
        lines = read_lines(path, task.encoding, "latin-1", tally)
        splits[split] = parse_trec_lines(path, lines, task.granularity, tally)
        files.append(path)
    labels = task.labels or (list(COARSE) if task.granularity == "coarse" else None)
    return RawData(
        kind="sentence",
        label_type="classification",
        splits=splits,
        label_names=labels,
        text_columns=["question"],
        label_column=f"{task.granularity} label",
        files=files,
        split_origin={"train": f"TREC {files[0].name}", "test": f"TREC {files[1].name}"},
        tally=tally,
    )
