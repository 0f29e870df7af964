"""prepare_task: row-level policy, dedupe, splitting, subsampling, determinism and the written files."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from isoprobe.core.config import TaskConfig
from isoprobe.core.errors import IsoprobeError
from isoprobe.data.prepare import load_meta, load_split, prepare_task, write_prepared
from isoprobe.data.sources import read_source
from isoprobe.data.split import carve, strata_of, stratified_sample

SPLITS = ("train", "dev", "test")

# --------------------------------------------------------------------------- helpers


def write_csv(path: Path, rows: list[list], header=("text", "label"), delimiter=",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def run(source: str, name: str = "t", **kw):
    task = TaskConfig(source=source, **kw)
    return prepare_task(read_source(task, f"tasks.{name}"), task, name)


def sizes(p) -> dict[str, int]:
    return {s: len(p.splits[s]) for s in SPLITS}


def ids(p, split: str) -> list[str]:
    return [r["id"] for r in p.splits[split]]


def balanced_rows(n: int, shares=(("a", 0.6), ("b", 0.3), ("c", 0.1)), prefix="row") -> list[list]:
    labels = [lab for lab, share in shares for _ in range(round(n * share))]
    return [[f"{prefix} {i}", lab] for i, lab in enumerate(labels)]


@pytest.fixture
def pool_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "pool.csv", balanced_rows(1000))


# --------------------------------------------------------------------------- row-level policy


def _dirty_rows() -> list[list]:
    rows = [[f"good {i}", "ab"[i % 2]] for i in range(40)]
    rows += [["   ", "a"], ["", "b"]]  # empty text
    rows += [["no label here", ""], ["nan label", "NaN"]]  # missing label
    return rows


def test_empty_text_and_missing_label_dropped_and_counted(tmp_path):
    f = write_csv(tmp_path / "dirty.csv", _dirty_rows())
    p = run(f"csv:{f}", invalid_rows="drop")
    d = p.meta["dropped"]
    assert d["empty_text"] == 2
    assert d["missing_label"] == 2
    assert sum(sizes(p).values()) == 40
    texts = {r["text_a"] for s in SPLITS for r in p.splits[s]}
    assert "no label here" not in texts and "nan label" not in texts
    assert "pool row dirty.csv:" in p.meta["dropped_examples"]["empty_text"]


@pytest.mark.parametrize(
    ("extra", "reason"),
    [([["   ", "a"]], "empty text"), ([["no label here", ""]], "missing label")],
)
def test_invalid_rows_fail_raises(tmp_path, extra, reason):
    f = write_csv(tmp_path / "dirty.csv", [[f"good {i}", "ab"[i % 2]] for i in range(20)] + extra)
    with pytest.raises(IsoprobeError) as ei:
        run(f"csv:{f}", invalid_rows="fail", name="dirty")
    msg = str(ei.value)
    assert reason in msg
    assert "tasks.dirty.invalid_rows" in msg
    assert "dirty.csv:22" in msg  # the first offending row


def test_tsv_wrong_field_count_counted_or_fatal(tmp_path):
    f = tmp_path / "d.tsv"
    lines = ["text\tlabel"] + [f"row {i}\t{'ab'[i % 2]}" for i in range(20)]
    lines += ["too\tmany\tfields", "too few"]
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    p = run(f"tsv:{f}")
    assert p.meta["dropped"]["bad_field_count"] == 2
    assert sum(sizes(p).values()) == 20
    assert "d.tsv:22 has 3 fields, expected 2" in p.meta["dropped_examples"]["bad_field_count"]
    with pytest.raises(IsoprobeError) as ei:
        run(f"tsv:{f}", invalid_rows="fail", name="tsvtask")
    assert "bad field count" in str(ei.value)
    assert "tasks.tsvtask.invalid_rows" in str(ei.value)
    assert str(f) in str(ei.value)


def test_dedupe_duplicates_and_conflicting_labels(tmp_path):
    rows = [[f"unique {i}", "ab"[i % 2]] for i in range(30)]
    rows += [["same text", "a"]] * 3  # exact duplicates: keep one
    rows += [["clash", "a"], ["clash", "b"]]  # different labels: drop all copies
    f = write_csv(tmp_path / "dup.csv", rows)
    p = run(f"csv:{f}")
    d = p.meta["dropped"]
    assert d["duplicate"] == 2
    assert d["conflicting_label"] == 2
    texts = Counter(r["text_a"] for s in SPLITS for r in p.splits[s])
    assert texts["same text"] == 1
    assert texts["clash"] == 0
    assert sum(sizes(p).values()) == 31
    # the kept copy is the first one
    kept = next(r for s in SPLITS for r in p.splits[s] if r["text_a"] == "same text")
    assert kept["id"] == "dup.csv:32"

    off = run(f"csv:{f}", dedupe=False)
    assert off.meta["dropped"]["duplicate"] == 0
    assert off.meta["dropped"]["conflicting_label"] == 0
    assert sum(sizes(off).values()) == 35


def test_dedupe_pairs_use_both_texts(tmp_path):
    rows = [[f"p {i}", f"h {i}", "ab"[i % 2]] for i in range(20)]
    rows += [["p 0", "other hypothesis", "b"]]  # same text_a, different text_b: not a duplicate
    f = write_csv(tmp_path / "pairs.csv", rows, header=("a", "b", "label"))
    p = run(f"csv:{f}", text_columns=["a", "b"])
    assert p.meta["dropped"]["duplicate"] == 0
    assert p.meta["dropped"]["conflicting_label"] == 0
    assert sum(sizes(p).values()) == 21


def test_pool_nothing_silently_lost(tmp_path):
    rows = [[f"clean {i}", "xyz"[i % 3]] for i in range(60)]
    rows += [["", "x"], ["   ", "y"], ["no label", ""]]
    rows += [["dup", "x"]] * 4 + [["conflict", "x"], ["conflict", "y"], ["conflict", "z"]]
    f = tmp_path / "mixed.csv"
    write_csv(f, rows)
    with open(f, "a", encoding="utf-8") as fh:
        fh.write("one,too,many\nonly-one-field\n\n")  # 2 bad rows and a blank line
    n_input = len(rows) + 2
    p = run(f"csv:{f}")
    d = p.meta["dropped"]
    assert d == {
        "bad_field_count": 2,
        "malformed_line": 0,
        "undecodable": 0,
        "empty_text": 2,
        "missing_label": 1,
        "unknown_label": 0,
        "duplicate": 3,
        "conflicting_label": 3,
        "leakage": 0,
    }
    assert sum(sizes(p).values()) + sum(d.values()) == n_input
    assert sum(p.meta["available"].values()) == sum(sizes(p).values())


def test_folder_source_nothing_silently_lost(tmp_path):
    d = tmp_path / "folder"
    write_csv(d / "train.csv", [[f"tr {i}", "ab"[i % 2]] for i in range(30)] + [["", "a"]])
    write_csv(d / "dev.csv", [[f"dv {i}", "ab"[i % 2]] for i in range(6)] + [["x", ""]])
    write_csv(d / "test.csv", [[f"te {i}", "ab"[i % 2]] for i in range(8)] + [["te 0", "a"]])
    p = run(f"csv:{d}")
    assert sizes(p) == {"train": 30, "dev": 6, "test": 8}
    assert sum(sizes(p).values()) + sum(p.meta["dropped"].values()) == 30 + 6 + 8 + 3


# --------------------------------------------------------------------------- label errors


def test_label_outside_configured_set(tmp_path):
    rows = [[f"t {i}", "ab"[i % 2]] for i in range(20)] + [["odd one", "maybe"]]
    f = write_csv(tmp_path / "l.csv", rows)
    p = run(f"csv:{f}", labels=["a", "b"], name="lab")  # default policy: drop, counted
    assert p.meta["dropped"]["unknown_label"] == 1 and sum(sizes(p).values()) == 20
    assert "'maybe'" in p.meta["dropped_examples"]["unknown_label"]
    with pytest.raises(IsoprobeError) as ei:
        run(f"csv:{f}", labels=["a", "b"], name="lab", invalid_rows={"unknown_label": "fail"})
    msg = str(ei.value)
    assert "'maybe'" in msg
    assert "tasks.lab.labels" in msg and "tasks.lab.invalid_rows" in msg
    assert "l.csv:22" in msg


def test_configured_labels_fix_order_and_allow_absent_classes(tmp_path):
    f = write_csv(tmp_path / "l.csv", [[f"t {i}", "ab"[i % 2]] for i in range(20)])
    p = run(f"csv:{f}", labels=["b", "a", "c"])
    assert p.meta["label_names"] == ["b", "a", "c"]
    assert p.meta["counts"]["test"]["labels"]["c"] == 0
    by_text = {r["text_a"]: r["label"] for s in SPLITS for r in p.splits[s]}
    assert by_text["t 0"] == 1 and by_text["t 1"] == 0


def test_non_numeric_regression_label(tmp_path):
    rows = [[f"t {i}", str(i / 10)] for i in range(20)] + [["bad score", "high"]]
    f = write_csv(tmp_path / "r.csv", rows, header=("text", "score"))
    p = run(f"csv:{f}", label_column="score", label_type="regression", name="reg")
    assert p.meta["dropped"]["unknown_label"] == 1 and sum(sizes(p).values()) == 20
    with pytest.raises(IsoprobeError) as ei:
        run(
            f"csv:{f}",
            label_column="score",
            label_type="regression",
            name="reg",
            invalid_rows="fail",
        )
    msg = str(ei.value)
    assert "'high'" in msg
    assert "tasks.reg" in msg
    assert "'score'" in msg
    assert "r.csv:22" in msg


def test_regression_pool_is_carved_by_quantile_bins(tmp_path):
    rows = [[f"t {i}", f"{i / 10:.1f}"] for i in range(100)]
    f = write_csv(tmp_path / "r.csv", rows, header=("text", "score"))
    p = run(f"csv:{f}", label_column="score", label_type="regression")
    assert sizes(p) == {"train": 80, "dev": 10, "test": 10}
    assert p.meta["label_names"] is None
    test_scores = sorted(r["label"] for r in p.splits["test"])
    # one score per decile bin
    assert [int(s) for s in test_scores] == list(range(10))


def test_fewer_than_two_classes(tmp_path):
    f = write_csv(tmp_path / "one.csv", [[f"t {i}", "only"] for i in range(20)])
    with pytest.raises(IsoprobeError) as ei:
        run(f"csv:{f}", name="one")
    msg = str(ei.value)
    assert "tasks.one" in msg
    assert ">= 2" in msg
    assert "only" in msg


def test_empty_split_after_splitting(tmp_path):
    f = write_csv(tmp_path / "tiny.csv", [["t 0", "a"], ["t 1", "b"], ["t 2", "a"], ["t 3", "b"]])
    with pytest.raises(IsoprobeError) as ei:
        run(f"csv:{f}", name="tiny")
    msg = str(ei.value)
    assert "empty" in msg
    assert "tasks.tiny" in msg
    assert "dev" in msg


def test_csv_folder_with_only_train_gets_dev_and_test(tmp_path):
    """A folder with only train.csv is accepted by the reader; the prepare step must then carve
    both dev and test (SplitFractions: shares carved when a source has no split of that name)."""
    d = tmp_path / "onlytrain"
    write_csv(d / "train.csv", [[f"t {i}", "ab"[i % 2]] for i in range(40)])
    p = run(f"csv:{d}")
    assert all(sizes(p)[s] > 0 for s in SPLITS)
    assert sum(sizes(p).values()) == 40


# --------------------------------------------------------------------------- split primitives


@pytest.mark.parametrize("n", [0, 1, 7, 33, 50, 99])
def test_stratified_sample_properties(n):
    strata = np.array([0] * 50 + [1] * 30 + [2] * 15 + [3] * 5)
    rng = np.random.default_rng(123)
    strata = strata[rng.permutation(len(strata))]
    idx = stratified_sample(strata, n, seed=7)
    assert len(idx) == n
    assert np.all(np.diff(idx) > 0)  # sorted and unique
    assert idx.min(initial=0) >= 0 and idx.max(initial=0) < len(strata)
    got = np.bincount(strata[idx], minlength=4)
    share = np.bincount(strata) * n / len(strata)
    assert np.all(np.abs(got - share) < 1), (got, share)
    np.testing.assert_array_equal(idx, stratified_sample(strata, n, seed=7))


def test_stratified_sample_seed_changes_choice():
    strata = np.array([0] * 50 + [1] * 50)
    a = stratified_sample(strata, 20, seed=0)
    b = stratified_sample(strata, 20, seed=1)
    assert not np.array_equal(a, b)
    assert np.bincount(strata[a]).tolist() == np.bincount(strata[b]).tolist() == [10, 10]


def test_stratified_sample_n_at_least_total_returns_all():
    strata = np.array([1, 0, 1, 2])
    np.testing.assert_array_equal(stratified_sample(strata, 4, seed=0), np.arange(4))
    np.testing.assert_array_equal(stratified_sample(strata, 10, seed=0), np.arange(4))


@pytest.mark.parametrize(("n", "fraction"), [(100, 0.1), (37, 0.2), (10, 0.5), (3, 0.1)])
def test_carve_sizes_and_partition(n, fraction):
    strata = np.arange(n) % 3
    rest, carved = carve(strata, fraction, seed=4)
    assert len(carved) == int(round(fraction * n))
    assert len(rest) + len(carved) == n
    assert set(rest.tolist()).isdisjoint(carved.tolist())
    assert sorted([*rest.tolist(), *carved.tolist()]) == list(range(n))
    assert np.all(np.diff(rest) > 0)


def test_strata_of_classification_and_regression():
    np.testing.assert_array_equal(
        strata_of(["b", "a", "b", "c"], "classification"), np.array([1, 0, 1, 2])
    )
    y = np.linspace(0, 1, 100)
    s = strata_of(y.tolist(), "regression", bins=4)
    assert np.bincount(s).tolist() == [25, 25, 25, 25]
    assert np.all(np.diff(s) >= 0)


# --------------------------------------------------------------------------- subsampling


def test_max_rows_keeps_label_proportions(pool_csv):
    p = run(f"csv:{pool_csv}", max_rows={"train": 50, "dev": 20, "test": 30})
    assert sizes(p) == {"train": 50, "dev": 20, "test": 30}
    assert p.meta["available"] == {"train": 800, "dev": 100, "test": 100}
    share = {"a": 0.6, "b": 0.3, "c": 0.1}
    for split in SPLITS:
        n = p.meta["counts"][split]["rows"]
        for lab, c in p.meta["counts"][split]["labels"].items():
            assert abs(c - share[lab] * n) <= 1, (split, lab, c)


def test_max_rows_train_does_not_change_dev_or_test(pool_csv):
    a = run(f"csv:{pool_csv}", max_rows={"train": 50, "test": 40})
    b = run(f"csv:{pool_csv}", max_rows={"train": 300, "test": 40})
    c = run(f"csv:{pool_csv}", max_rows={"test": 40})
    assert ids(a, "test") == ids(b, "test") == ids(c, "test")
    assert ids(a, "dev") == ids(b, "dev") == ids(c, "dev")
    assert len(a.splits["train"]) == 50 and len(b.splits["train"]) == 300
    assert set(ids(a, "train")) <= set(ids(c, "train"))


def test_max_rows_above_available_keeps_all(pool_csv):
    p = run(f"csv:{pool_csv}", max_rows={"dev": 10_000})
    assert sizes(p) == {"train": 800, "dev": 100, "test": 100}


def test_prepare_is_deterministic_and_seeded(pool_csv):
    a = run(f"csv:{pool_csv}", max_rows={"train": 100})
    b = run(f"csv:{pool_csv}", max_rows={"train": 100})
    assert a.splits == b.splits
    assert a.meta == b.meta
    other = run(f"csv:{pool_csv}", max_rows={"train": 100}, seed=1)
    assert ids(other, "test") != ids(a, "test")
    assert ids(other, "train") != ids(a, "train")
    assert other.meta["seed"] == 1
    for split in SPLITS:
        assert other.meta["counts"][split] == a.meta["counts"][split]


def test_splits_are_disjoint(pool_csv):
    p = run(f"csv:{pool_csv}")
    seen = [set(ids(p, s)) for s in SPLITS]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert p.meta["overlap_with_train"] == {"dev": 0, "test": 0}


def test_custom_split_fractions(pool_csv):
    p = run(f"csv:{pool_csv}", split={"dev": 0.2, "test": 0.3})
    assert sizes(p) == {"train": 500, "dev": 200, "test": 300}


# --------------------------------------------------------------------------- files


def test_write_and_load_round_trip(pool_csv, tmp_path):
    p = run(f"csv:{pool_csv}", max_rows={"train": 40, "dev": 10, "test": 10}, name="rt")
    out = tmp_path / "prepared" / "rt"
    out.mkdir(parents=True)
    write_prepared(p, out)
    assert sorted(x.name for x in out.iterdir()) == [
        "dev.jsonl",
        "meta.json",
        "test.jsonl",
        "train.jsonl",
    ]
    for split in SPLITS:
        assert load_split(out, split) == p.splits[split]
    meta = load_meta(out)
    assert meta == json.loads(json.dumps(p.meta))
    h = hashlib.sha256()
    for split in SPLITS:
        h.update((out / f"{split}.jsonl").read_bytes())
    assert meta["content_sha256"] == h.hexdigest()
    assert meta["source_files"] == [
        {"path": str(pool_csv), "sha256": hashlib.sha256(pool_csv.read_bytes()).hexdigest()}
    ]
    for split in SPLITS:
        c = meta["counts"][split]
        assert c["rows"] == len(p.splits[split])
        assert sum(c["labels"].values()) == c["rows"]
        assert set(c["labels"]) == {"a", "b", "c"}
    assert meta["task"] == "rt" and meta["source"] == f"csv:{pool_csv}"
    assert meta["label_names"] == ["a", "b", "c"]


def test_write_prepared_is_deterministic(pool_csv, tmp_path):
    shas = []
    for k in range(2):
        out = tmp_path / f"o{k}"
        out.mkdir()
        write_prepared(run(f"csv:{pool_csv}", max_rows={"train": 30}), out)
        shas.append(load_meta(out)["content_sha256"])
    assert shas[0] == shas[1]


def test_round_trip_keeps_unicode_and_floats(tmp_path):
    rows = [[f"naïve café ☕ {i}", f"{i * 0.25:.2f}"] for i in range(30)]
    f = write_csv(tmp_path / "u.csv", rows)
    p = run(f"csv:{f}", label_type="regression")
    out = tmp_path / "out"
    out.mkdir()
    write_prepared(p, out)
    for split in SPLITS:
        assert load_split(out, split) == p.splits[split]
    assert "naïve café ☕" in (out / "train.jsonl").read_text(encoding="utf-8")


def test_load_missing_prepared_task(tmp_path):
    with pytest.raises(IsoprobeError) as ei:
        load_meta(tmp_path / "nothing")
    assert str(tmp_path / "nothing" / "meta.json") in str(ei.value)
    with pytest.raises(IsoprobeError) as ei:
        load_split(tmp_path / "nothing", "train")
    assert str(tmp_path / "nothing" / "train.jsonl") in str(ei.value)


def test_numeric_labels_on_a_classification_task_are_refused(tmp_path):
    """A regression target read with a classification head (STS-B scores as classes) stops cleanly."""
    lines = ["text,label"] + [f"sentence number {i},{(i % 50) / 10 + 0.05:.2f}" for i in range(200)]
    (tmp_path / "scores.csv").write_text("\n".join(lines) + "\n")
    task = TaskConfig(source=f"csv:{tmp_path / 'scores.csv'}", label_type="classification")
    with pytest.raises(
        IsoprobeError, match="regression target, not classes; set tasks.s.label_type: regression"
    ):
        prepare_task(read_source(task, "tasks.s"), task, "s")
    task = TaskConfig(source=f"csv:{tmp_path / 'scores.csv'}", label_type="regression")
    assert prepare_task(read_source(task, "tasks.s"), task, "s").meta["metric"] == "correlation"
