"""From a source's raw rows to train/dev/test splits with one schema, and their meta.json.

Prepared rows (JSON lines, one file per split):
- sentence tasks: {"id": str, "text_a": str, "text_b": str | null, "label": int | float}
  (`label` indexes meta["label_names"] for classification; a float for regression);
- token tasks: {"id": str, "tokens": [str], "tags": [int]} (tags index meta["label_names"]).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from isoprobe import __version__
from isoprobe.core.config import ROW_REASONS, SPLITS, TaskConfig
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.io import read_json, read_jsonl, write_json, write_jsonl
from isoprobe.core.repo import portable_path
from isoprobe.data.raw import RawData, Tally, sha256_file
from isoprobe.data.split import carve, strata_of, stratified_sample

REASON_TEXT = {
    "bad_field_count": "a wrong field count",
    "malformed_line": "a malformed line",
    "undecodable": "bytes not decodable in the task's encoding",
    "empty_text": "empty text",
    "missing_label": "a missing label",
    "unknown_label": "a label outside the label set",
    "duplicate": "a duplicate text",
    "conflicting_label": "the same text with different labels",
    "leakage": "a text also in train (leakage)",
}


HINT = {
    "unknown_label": ", or set {key}.labels to the labels the data uses",
    "undecodable": ", or set {key}.encoding to the file's encoding",
}


@dataclass
class PreparedTask:
    splits: dict[str, list[dict]]
    meta: dict


def _labels_from_train(raw: RawData) -> bool:
    """A classification task without a known label set takes the labels of its train split when it
    has dev or test splits of its own: a dev/test label never seen in training cannot be learned,
    so such rows count as `unknown_label`. Returns whether the label set was set here."""
    if raw.label_names or raw.label_type != "classification" or raw.kind != "sentence":
        return False
    if "train" not in raw.splits or len(raw.splits) == 1:
        return False
    raw.label_names = sorted({r["label"] for r in raw.splits["train"] if r["label"] is not None})
    return True


def _check_rows(raw: RawData, key: str, tally: Tally, from_train: bool = False) -> None:
    """Drop (and count) rows with empty text, a missing label or a label outside the label set."""
    allowed = set(raw.label_names) if raw.label_names else None
    label_set = "the train split's labels" if from_train else "the label set"
    for split, rows in raw.splits.items():
        kept = []
        for r in rows:
            where = f"{split} row {r['origin']}"
            if raw.kind == "token":
                if not r["tokens"]:
                    tally.add("empty_text", where)
                    continue
                bad = sorted({t for t in r["tags"] if allowed is not None and t not in allowed})
                if bad:
                    tally.add("unknown_label", f"{where}: tag(s) {bad} not in {sorted(allowed)}")
                    continue
                kept.append(r)
                continue
            if not (r["text_a"] or "").strip() or (
                r["text_b"] is not None and not r["text_b"].strip()
            ):
                tally.add("empty_text", where)
                continue
            label = r["label"]
            if label is None:
                tally.add("missing_label", where)
                continue
            if raw.label_type == "regression":
                if not isinstance(label, float) or not math.isfinite(label):
                    tally.add(
                        "unknown_label",
                        f"{where}: regression label {label!r} in column '{raw.label_column}' "
                        "is not a finite number",
                    )
                    continue
            elif allowed is not None and label not in allowed:
                tally.add(
                    "unknown_label",
                    f"{where}: label {label!r} in column '{raw.label_column}' is not in "
                    f"{label_set} {raw.label_names}",
                )
                continue
            kept.append(r)
        raw.splits[split] = kept


def _enforce_policy(task: TaskConfig, key: str, tally: Tally) -> None:
    """Stop at the first reason with rows whose policy is 'fail' (naming the count, the first row
    and the key to change); the others stay dropped and counted."""
    for reason in ROW_REASONS:
        n = tally.counts[reason]
        if n and task.policy(reason) == "fail":
            raise IsoprobeError(
                f"{key}: {n} row(s) with {reason.replace('_', ' ')}: {REASON_TEXT[reason]} (first: "
                f"{tally.examples.get(reason, '?')}); {key}.invalid_rows is 'fail' for {reason} "
                f"(use 'drop' to count and skip such rows{HINT.get(reason, '').format(key=key)})"
            )


def _drop_leakage(splits: dict[str, list[dict]], tally: Tally) -> None:
    """Remove dev/test rows whose text (case- and space-insensitive) is also in train."""
    train_keys = {_text_key(r) for r in splits["train"]}
    for split in ("dev", "test"):
        kept = []
        for r in splits[split]:
            if _text_key(r) in train_keys:
                tally.add("leakage", f"{split} row {r['origin']}")
            else:
                kept.append(r)
        splits[split] = kept


def _dedupe(rows: list[dict], label_type: str, split: str, tally: Tally) -> list[dict]:
    """Keep the first of identical texts; drop every copy of a text seen with different labels."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r["text_a"], r["text_b"]), []).append(i)
    keep = []
    for idx in groups.values():
        labels = {rows[i]["label"] for i in idx}
        if label_type == "classification" and len(labels) > 1:
            tally.add("conflicting_label", f"{split} {rows[idx[0]]['origin']}", n=len(idx))
            continue
        keep.append(idx[0])
        if len(idx) > 1:
            tally.add("duplicate", f"{split} {rows[idx[1]]['origin']}", n=len(idx) - 1)
    return [rows[i] for i in sorted(keep)]


def _strata(rows: list[dict], raw: RawData) -> np.ndarray:
    if raw.kind == "token":
        return np.zeros(len(rows), dtype=int)  # sentences: a plain seeded sample
    return strata_of([r["label"] for r in rows], raw.label_type)


def _assign_splits(raw: RawData, task: TaskConfig) -> tuple[dict[str, list[dict]], dict[str, str]]:
    s = dict(raw.splits)
    origin = dict(raw.split_origin)
    if "train" in s and "dev" not in s and "test" not in s:  # a lone train split is a pool too
        s["pool"], origin["pool"] = s.pop("train"), origin.pop("train")
    if "pool" in s:
        pool = s.pop("pool")
        p_origin = origin.pop("pool")
        rest, test = carve(_strata(pool, raw), task.split.test, task.seed)
        rest_rows = [pool[i] for i in rest]
        train, dev = carve(
            _strata(rest_rows, raw), task.split.dev / (1 - task.split.test), task.seed + 1
        )
        s = {
            "train": [rest_rows[i] for i in train],
            "dev": [rest_rows[i] for i in dev],
            "test": [pool[i] for i in test],
        }
        origin = {
            "train": f"{p_origin}: the rest",
            "dev": f"{p_origin}: {task.split.dev:.0%} carved, stratified, seed {task.seed + 1}",
            "test": f"{p_origin}: {task.split.test:.0%} carved, stratified, seed {task.seed}",
        }
        return s, origin
    if "test" not in s and "dev" in s:
        s["test"] = s.pop("dev")
        origin["test"] = origin.pop("dev") + " (used as test: no labelled test split)"
    if "dev" not in s:
        train = s["train"]
        keep, dev = carve(_strata(train, raw), task.split.dev, task.seed + 1)
        s["train"], s["dev"] = [train[i] for i in keep], [train[i] for i in dev]
        origin["dev"] = (
            f"{task.split.dev:.0%} carved from {origin['train']}, stratified, seed {task.seed}"
        )
    return s, origin


def _label_names(raw: RawData) -> list[str] | None:
    if raw.label_type == "regression":
        return None
    if raw.label_names:
        return list(raw.label_names)
    seen = set()
    for rows in raw.splits.values():
        for r in rows:
            if raw.kind == "token":
                seen.update(r["tags"])
            else:
                seen.add(r["label"])
    return sorted(seen)


def _check_label_type(label_names: list[str] | None, raw: RawData, key: str) -> None:
    """A classification task whose labels are many non-integer numbers is a regression task mislabelled."""
    if label_names is None or len(label_names) <= 10:
        return
    try:
        values = [float(n) for n in label_names]
    except ValueError:
        return
    if any(v != int(v) for v in values):
        raise IsoprobeError(
            f"{key}: column '{raw.label_column}' holds {len(label_names)} distinct numeric labels "
            f"(e.g. {label_names[:3]}): a regression target, not classes; set {key}.label_type: regression"
        )


def _final_row(r: dict, raw: RawData, index: dict[str, int] | None) -> dict:
    if raw.kind == "token":
        return {"id": r["origin"], "tokens": r["tokens"], "tags": [index[t] for t in r["tags"]]}
    label = r["label"] if index is None else index[r["label"]]
    return {"id": r["origin"], "text_a": r["text_a"], "text_b": r["text_b"], "label": label}


def _text_key(r: dict) -> tuple:
    return (
        tuple(r["tokens"])
        if "tokens" in r
        else (r["text_a"].strip().lower(), (r["text_b"] or "").strip().lower())
    )


def prepare_task(raw: RawData, task: TaskConfig, name: str) -> PreparedTask:
    """Validate, dedupe, split and subsample `raw`; never drops a row without counting it."""
    key = f"tasks.{name}"
    tally = raw.tally
    _check_rows(raw, key, tally, from_train=_labels_from_train(raw))
    if task.dedupe and raw.kind == "sentence":
        raw.splits = {s: _dedupe(rows, raw.label_type, s, tally) for s, rows in raw.splits.items()}
    _enforce_policy(task, key, tally)
    if not any(raw.splits.values()):
        dropped = ", ".join(f"{r} {tally.counts[r]}" for r in ROW_REASONS if tally.counts[r])
        raise IsoprobeError(
            f"{key}: no usable rows in {task.source} (dropped: {dropped or 'none'}); "
            f"check {key}.source, its columns and {key}.invalid_rows"
        )
    label_names = _label_names(raw)
    _check_label_type(label_names, raw, key)
    if (
        task.metric == "correlation"
        and raw.label_type != "regression"
        or (task.metric in ("accuracy", "mcc", "f1") and raw.label_type == "regression")
    ):
        raise IsoprobeError(f"{key}.metric: '{task.metric}' does not fit a {raw.label_type} task")
    if label_names is not None and len(label_names) < 2:
        raise IsoprobeError(
            f"{key}: found {len(label_names)} label(s) {label_names}; a classification task needs >= 2"
        )
    splits, origin = _assign_splits(raw, task)
    _drop_leakage(splits, tally)
    _enforce_policy(task, key, tally)
    available = {s: len(rows) for s, rows in splits.items()}
    for i, split in enumerate(SPLITS):
        limit = getattr(task.max_rows, split)
        if limit is not None and limit < len(splits[split]):
            idx = stratified_sample(_strata(splits[split], raw), limit, task.seed + 2 + i)
            splits[split] = [splits[split][j] for j in idx]
        if not splits[split]:
            raise IsoprobeError(
                f"{key}: the {split} split is empty after splitting and subsampling "
                f"({available[split]} rows available, max_rows.{split} = {limit}); "
                f"check {key}.source, {key}.split and {key}.max_rows"
            )
    index = {n: i for i, n in enumerate(label_names)} if label_names is not None else None
    final = {s: [_final_row(r, raw, index) for r in splits[s]] for s in SPLITS}
    train_keys = {_text_key(r) for r in final["train"]}
    overlap = {s: sum(_text_key(r) in train_keys for r in final[s]) for s in ("dev", "test")}
    meta = {
        "task": name,
        "source": task.source,
        "kind": raw.kind,
        "label_type": raw.label_type,
        "label_names": label_names,
        "num_labels": len(label_names) if label_names else 1,
        "metric": task.metric
        or raw.metric
        or ("correlation" if raw.label_type == "regression" else "accuracy"),
        "text_columns": raw.text_columns,
        "label_column": raw.label_column,
        "pair": raw.kind == "sentence" and any(r["text_b"] is not None for r in final["train"]),
        "counts": {s: _counts(final[s], raw, label_names) for s in SPLITS},
        "available": available,
        "split_origin": {s: origin[s] for s in SPLITS},
        "dropped": {r: tally.counts[r] for r in ROW_REASONS},
        "invalid_rows": {r: task.policy(r) for r in ROW_REASONS},
        "dropped_examples": dict(sorted(tally.examples.items())),
        "decoded_with_fallback": {
            k: v for k, v in tally.counts.items() if k.startswith("decoded_with_")
        },
        "overlap_with_train": overlap,
        "seed": task.seed,
        "source_files": [{"path": portable_path(p), "sha256": sha256_file(p)} for p in raw.files],
        "isoprobe_version": __version__,
    }
    if raw.source_splits is not None:  # hf: which dataset split became which (null: carved)
        meta["source_splits"] = {s: raw.source_splits.get(s) for s in SPLITS}
    return PreparedTask(final, meta)


def _counts(rows: list[dict], raw: RawData, label_names: list[str] | None) -> dict:
    out: dict = {"rows": len(rows)}
    if raw.kind == "token":
        tags = np.bincount([t for r in rows for t in r["tags"]], minlength=len(label_names))
        out["words"] = int(tags.sum())
        out["labels"] = {n: int(c) for n, c in zip(label_names, tags, strict=True)}
    elif label_names is not None:
        c = np.bincount([r["label"] for r in rows], minlength=len(label_names))
        out["labels"] = {n: int(v) for n, v in zip(label_names, c, strict=True)}
    else:
        y = np.array([r["label"] for r in rows], dtype=float)
        out["label_mean"], out["label_std"] = float(y.mean()), float(y.std())
    return out


def write_prepared(prepared: PreparedTask, out_dir: Path) -> None:
    """Write <split>.jsonl and meta.json into `out_dir` (the caller makes it atomic)."""
    h = hashlib.sha256()
    for split in SPLITS:
        path = out_dir / f"{split}.jsonl"
        write_jsonl(path, prepared.splits[split])
        h.update(path.read_bytes())
    prepared.meta["content_sha256"] = h.hexdigest()
    write_json(out_dir / "meta.json", prepared.meta)


def load_meta(task_dir: str | Path) -> dict:
    path = Path(task_dir) / "meta.json"
    if not path.is_file():
        raise IsoprobeError(f"prepared task not found: {path} (run the prepare stage first)")
    return read_json(path)


def load_split(task_dir: str | Path, split: str) -> list[dict]:
    path = Path(task_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise IsoprobeError(f"prepared split not found: {path} (run the prepare stage first)")
    return read_jsonl(path)
