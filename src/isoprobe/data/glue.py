"""The standard GLUE directory layout (as written by the GLUE download script), read as TSV.

The official test files are unlabeled, so the official dev set becomes the test split and dev is
carved from train by the prepare step.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from isoprobe.core.config import TaskConfig
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.repo import data_path
from isoprobe.data.raw import RawData, Tally
from isoprobe.data.table import read_table, table_rows


@dataclass(frozen=True)
class GlueLayout:
    text_columns: tuple[str, ...]
    label_column: str
    label_type: str
    labels: tuple[str, ...] | None
    dev_file: str = "dev.tsv"
    metric: str = "accuracy"
    header: tuple[str, ...] | None = None  # None: the file has a header line


GLUE = {
    "SST-2": GlueLayout(("sentence",), "label", "classification", ("0", "1")),
    "COLA": GlueLayout(
        ("sentence",),
        "label",
        "classification",
        ("0", "1"),
        metric="mcc",
        header=("source", "label", "original_mark", "sentence"),
    ),
    "RTE": GlueLayout(
        ("sentence1", "sentence2"), "label", "classification", ("entailment", "not_entailment")
    ),
    "WNLI": GlueLayout(("sentence1", "sentence2"), "label", "classification", ("0", "1")),
    "QNLI": GlueLayout(
        ("question", "sentence"), "label", "classification", ("entailment", "not_entailment")
    ),
    "MRPC": GlueLayout(
        ("#1 String", "#2 String"), "Quality", "classification", ("0", "1"), metric="f1"
    ),
    "QQP": GlueLayout(
        ("question1", "question2"), "is_duplicate", "classification", ("0", "1"), metric="f1"
    ),
    "MNLI": GlueLayout(
        ("sentence1", "sentence2"),
        "gold_label",
        "classification",
        ("contradiction", "entailment", "neutral"),
        dev_file="dev_matched.tsv",
    ),
    "STS-B": GlueLayout(
        ("sentence1", "sentence2"), "score", "regression", None, metric="correlation"
    ),
}
ALIASES = {"SST2": "SST-2", "STSB": "STS-B", "STS_B": "STS-B", "SST_2": "SST-2"}


def glue_layout(directory: Path, key: str = "source") -> tuple[str, GlueLayout]:
    key = directory.resolve().name.upper()
    key = ALIASES.get(key, key)
    if key not in GLUE:
        known = ", ".join(sorted(GLUE))
        raise IsoprobeError(
            f"{key}: glue_tsv: cannot tell the GLUE task from the folder name '{directory.name}'; "
            f"expected one of {known} (the GLUE download layout)"
        )
    return key, GLUE[key]


def read_glue(task: TaskConfig, key: str) -> RawData:
    directory = data_path(task.argument)
    if not directory.is_dir():
        raise IsoprobeError(f"{key}.source: GLUE directory not found: {directory}")
    name, layout = glue_layout(directory, f"{key}.source")
    text_columns = task.text_columns or list(layout.text_columns)
    label_column = task.label_column or layout.label_column
    label_type = task.label_type or layout.label_type
    labels = task.labels or (list(layout.labels) if layout.labels else None)
    tally = Tally()
    splits, files = {}, []
    for split, fname in (("train", "train.tsv"), ("test", layout.dev_file)):
        path = directory / fname
        if not path.is_file():
            raise IsoprobeError(f"{key}.source: {name} file not found: {path}")
        header, rows = read_table(
            path,
            "\t",
            task.encoding,
            None,
            tally,
            header=list(layout.header) if layout.header else None,
            quoting=csv.QUOTE_NONE,
        )
        splits[split] = table_rows(path, header, rows, text_columns, label_column, label_type, key)
        files.append(path)
    return RawData(
        kind="sentence",
        label_type=label_type,
        splits=splits,
        label_names=labels,
        text_columns=text_columns,
        label_column=label_column,
        files=files,
        split_origin={
            "train": f"GLUE {name} train.tsv",
            "test": f"GLUE {name} {layout.dev_file} (official test is unlabeled)",
        },
        tally=tally,
        metric=layout.metric,
    )
