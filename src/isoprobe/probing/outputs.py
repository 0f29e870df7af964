"""Inputs and outputs of the probe stages: probe vectors from embedding arrays, and the metrics JSON,
by-layer CSV, arrays file and MLflow logging of one probed encoder (or the files of a skipped one)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from isoprobe.core.errors import IsoprobeError
from isoprobe.core.io import atomic_file, write_json, write_safetensors
from isoprobe.probing.layers import ProbeResult, Split, summary

CSV_COLUMNS = (
    "layer", "linear_train", "linear_test", "mlp_train", "mlp_test", "clusters", "min_distance",
    "directprobe_test", "similarity_train_test", "cka_to_pretrained", "similarity_to_pretrained",
    "centroid_movement_mean",
)  # fmt: skip


def probe_split(arrays: dict[str, np.ndarray], rows: list[dict], kind: str, features: str) -> Split:
    """Vectors and label codes of one split. Sentence tasks: `features` ("cls" or "mean") [L+1, N, H]
    with the row labels; token tasks: the word vectors whose sub-words fit max_length (`word_valid`)
    with their tags (the others are left out, counted by `words_cut`)."""
    if kind == "token":
        valid = arrays["word_valid"].astype(bool)
        tags = np.concatenate([np.asarray(r["tags"], dtype=np.int64) for r in rows])
        if len(tags) != len(valid):
            raise IsoprobeError(
                f"embedding file has {len(valid)} words, the prepared split {len(tags)}: rerun embed"
            )
        return Split(np.ascontiguousarray(arrays["words"][:, valid]), tags[valid])
    X = arrays[features]
    y = np.array([r["label"] for r in rows], dtype=np.int64)
    if X.shape[1] != len(y):
        raise IsoprobeError(
            f"embedding file has {X.shape[1]} rows, the prepared split {len(y)}: rerun embed"
        )
    return Split(X, y)


def load_probe_data(
    emb_dir: Path, splits: dict[str, list[dict]], kind: str, features: str
) -> tuple[dict[str, Split], dict[str, int]]:
    """Probe vectors of every split from `<emb_dir>/<split>.safetensors`, and the words left out
    per split (cut by max_length; token tasks)."""
    from isoprobe.embed.extract import load_embeddings

    keys = ("words", "word_valid") if kind == "token" else (features,)
    data, cut = {}, {}
    for split, rows in splits.items():
        arrays = {k: load_embeddings(emb_dir / f"{split}.safetensors", k) for k in keys}
        data[split], cut[split] = probe_split(arrays, rows, kind, features), words_cut(arrays)
    return data, cut


def words_cut(arrays: dict[str, np.ndarray]) -> int:
    return int((arrays["word_valid"] == 0).sum()) if "word_valid" in arrays else 0


def report(result: ProbeResult, context: dict) -> dict:
    """The metrics JSON: `context`, the last probed layer's summary at the top level (what
    `dvc metrics show` lists) and every layer in `layers`."""
    last = result.layers[-1]
    return {**context, "layer": last["layer"], **summary(last), "layers": result.layers}


def write_csv(result: ProbeResult, path: Path) -> None:
    """Summary metrics by layer (a DVC data plot)."""
    with atomic_file(path) as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for layer in result.layers:
            s = {"layer": layer["layer"], **summary(layer)}
            w.writerow(["" if s.get(c) is None else f"{s[c]:.6g}" for c in CSV_COLUMNS])


def write_outputs(
    result: ProbeResult,
    report_: dict,
    metrics_path: Path,
    arrays_path: Path,
    plot_path: Path,
    metadata: dict[str, str],
) -> None:
    write_safetensors(
        arrays_path,
        {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in result.arrays.items()},
        {k: str(v) for k, v in metadata.items()},
    )
    write_csv(result, plot_path)
    write_json(metrics_path, report_)


def write_skipped_outputs(
    record: dict, metrics_path: Path, arrays_path: Path, plot_path: Path
) -> None:
    """The files of an encoder a probe stage skipped (`record`: `isoprobe.core.skipped.skipped_record`):
    a safetensors file with no arrays, the CSV header only (`dvc plots show` draws nothing) and
    `record` as the metrics JSON."""
    keys = ("status", "reason", "task", "encoder")
    write_safetensors(arrays_path, {}, {k: record[k] for k in keys})
    with atomic_file(plot_path) as f:
        csv.writer(f).writerow(CSV_COLUMNS)
    write_json(metrics_path, record)


def log_layers(run, result: ProbeResult) -> None:
    """Per-layer summary metrics as `probe_<name>` with step = layer."""
    for layer in result.layers:
        run.log_metrics({f"probe_{k}": v for k, v in summary(layer).items()}, step=layer["layer"])
