"""Hugging Face `datasets` sources: `hf:<dataset>[:<config>]`, a hub id or a local folder of data
files (load_dataset's own resolution).

Which dataset split becomes train / dev / test: `tasks.<t>.hf_splits` names them, and what it leaves
out follows the default rule, the first split present of SPLIT_NAMES (MNLI on the hub: dev
`validation_matched`, test `test_matched`). A test split whose labels are all missing or -1 (GLUE on
the hub) is unlabeled: when it was not named, the dev split then becomes the test split and dev is
carved from train, as for GLUE TSVs; a named split without labels is an error. meta.json records the
outcome in `source_splits` (null: carved) and `split_origin`.
"""

from __future__ import annotations

from isoprobe.core.config import TaskConfig
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.repo import data_path
from isoprobe.data.raw import RawData, Tally

SPLIT_NAMES = {
    "train": ("train",),
    "dev": ("validation", "dev", "valid", "validation_matched"),
    "test": ("test", "test_matched"),
}
# Text columns of well-known hub data sets when the task names none.
KNOWN_TEXT_COLUMNS = (
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("question", "sentence"),
    ("premise", "hypothesis"),
    ("sentence",),
    ("text",),
)


def parse_hf_argument(arg: str) -> tuple[str, str | None]:
    name, _, config = arg.partition(":")
    return name, (config or None)


def _text_columns(columns: list[str], task: TaskConfig, key: str) -> list[str]:
    if task.text_columns:
        return list(task.text_columns)
    for cand in KNOWN_TEXT_COLUMNS:
        if all(c in columns for c in cand):
            return list(cand)
    raise IsoprobeError(
        f"{key}.text_columns: not set and no known text column among {columns}; set it"
    )


def _pick_splits(available: list[str], task: TaskConfig, key: str) -> dict[str, str]:
    """isoprobe split -> dataset split: the ones `hf_splits` names, then the default rule for the
    rest (never a split already taken)."""
    named = task.hf_splits.model_dump() if task.hf_splits else {}
    picked: dict[str, str] = {}
    for split, name in named.items():
        if name is None:
            continue
        if name not in available:
            raise IsoprobeError(
                f"{key}.hf_splits.{split}: no split '{name}' in dataset '{task.argument}'; "
                f"it has {', '.join(available)}"
            )
        picked[split] = name
    for split, names in SPLIT_NAMES.items():
        if split not in picked:
            free = [n for n in names if n in available and n not in picked.values()]
            if free:
                picked[split] = free[0]
    if "train" not in picked:
        raise IsoprobeError(
            f"{key}.source: dataset '{task.argument}' has no train split (has "
            f"{', '.join(available)}); name one in {key}.hf_splits.train"
        )
    return {s: picked[s] for s in ("train", "dev", "test") if s in picked}


def read_hf(task: TaskConfig, key: str) -> RawData:
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise IsoprobeError("the hf: source needs the `datasets` package") from err
    name, config = parse_hf_argument(task.argument)
    if data_path(name).exists():  # a local folder of data files
        name = str(data_path(name))
    try:
        dd = datasets.load_dataset(name, config)
    except Exception as err:  # datasets raises many types for a missing or unreachable set
        raise IsoprobeError(
            f"{key}.source: could not load Hugging Face dataset '{task.argument}': {type(err).__name__}: {err}. "
            "Offline, use a local folder (hf:/path/to/dir), glue_tsv:, csv: or tsv: instead."
        ) from None
    found = {s: (n, dd[n]) for s, n in _pick_splits(list(dd), task, key).items()}
    columns = list(found["train"][1].column_names)
    text_columns = _text_columns(columns, task, key)
    label_column = task.label_column or "label"
    for col in [*text_columns, label_column]:
        if col not in columns:
            raise IsoprobeError(
                f"{key}: column '{col}' not in dataset '{task.argument}'; columns: {', '.join(columns)}"
            )
    feature = found["train"][1].features[label_column]
    names = list(getattr(feature, "names", []) or []) or None
    label_type = task.label_type or (
        "classification"
        if names or feature.dtype in ("string", "bool") or "int" in str(feature.dtype)
        else "regression"
    )
    splits, origin = {}, {}
    for split, (sname, ds) in found.items():
        rows = []
        for i, ex in enumerate(ds):
            lab = ex[label_column]
            # -1 marks an unlabeled row (GLUE test sets), for ClassLabel and plain integer columns alike.
            if lab is None or (
                label_type == "classification" and isinstance(lab, int) and lab == -1
            ):
                lab = None
            elif names:
                lab = names[lab]
            elif label_type == "classification":
                lab = str(lab)
            else:
                lab = float(lab)
            rows.append(
                {
                    "text_a": ex[text_columns[0]],
                    "text_b": ex[text_columns[1]] if len(text_columns) > 1 else None,
                    "label": lab,
                    "origin": f"{sname}:{i}",
                }
            )
        splits[split] = rows
        origin[split] = f"{task.argument} [{sname}]"
    source_splits = {s: n for s, (n, _) in found.items()}
    named = task.hf_splits.model_dump() if task.hf_splits else {}
    for split in list(splits):
        if all(r["label"] is None for r in splits[split]):
            if named.get(split) is not None or split != "test":
                raise IsoprobeError(
                    f"{key}.hf_splits.{split}: split '{source_splits[split]}' of dataset "
                    f"'{task.argument}' has no labels; name a labelled split"
                )
            del splits["test"], origin["test"], source_splits["test"]
    if "test" not in splits and "dev" in splits:
        splits["test"] = splits.pop("dev")
        origin["test"] = origin.pop("dev") + " (no labelled test split)"
        source_splits["test"] = source_splits.pop("dev")
    return RawData(
        kind="sentence",
        label_type=label_type,
        splits=splits,
        label_names=task.labels or names,
        text_columns=text_columns,
        label_column=label_column,
        split_origin=origin,
        tally=Tally(),
        source_splits={s: source_splits.get(s) for s in ("train", "dev", "test")},
    )
