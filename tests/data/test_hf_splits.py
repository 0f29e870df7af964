"""Hugging Face split names as users meet them: a local dataset folder laid out like GLUE's MNLI on
the hub (a README.md `configs:` block, parquet files per split: train, validation_matched,
validation_mismatched, unlabeled test_matched / test_mismatched; ClassLabel features). The matched
validation split is the test split by default; `hf_splits` names others; meta.json says which split
became which."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_sources import prepare

from isoprobe.core.config import TaskConfig
from isoprobe.core.errors import IsoprobeError
from isoprobe.data.sources import read_source

NAMES = ["entailment", "neutral", "contradiction"]
SIZES = {
    "train": 60,
    "validation_matched": 12,
    "validation_mismatched": 9,
    "test_matched": 7,
    "test_mismatched": 5,
}
README = """---
configs:
- config_name: mnli
  data_files:
{files}
---
# GLUE (local copy, MNLI only)
"""


@pytest.fixture
def mnli(tmp_path, monkeypatch) -> Path:
    """A folder `glue/` with config `mnli` in the hub's layout and features."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    root = tmp_path / "glue"
    (root / "mnli").mkdir(parents=True)
    features = datasets.Features(
        premise=datasets.Value("string"),
        hypothesis=datasets.Value("string"),
        label=datasets.ClassLabel(names=NAMES),
        idx=datasets.Value("int32"),
    )
    files = []
    for split, n in SIZES.items():
        labels = [-1] * n if split.startswith("test") else [i % 3 for i in range(n)]
        ds = datasets.Dataset.from_dict(
            {
                "premise": [f"{split} premise {i}" for i in range(n)],
                "hypothesis": [f"{split} hypothesis {i}" for i in range(n)],
                "label": labels,
                "idx": list(range(n)),
            },
            features=features,
        )
        ds.to_parquet(str(root / "mnli" / f"{split}-00000-of-00001.parquet"))
        files.append(f"  - split: {split}\n    path: mnli/{split}-00000-of-00001.parquet")
    (root / "README.md").write_text(README.format(files="\n".join(files)))
    return root


def test_default_takes_the_matched_validation_split_as_test(mnli):
    raw, p = prepare(f"hf:{mnli}:mnli", name="mnli")
    m = p.meta
    assert raw.text_columns == ["premise", "hypothesis"] and m["pair"]
    assert m["label_names"] == NAMES
    assert m["source_splits"] == {"train": "train", "dev": None, "test": "validation_matched"}
    assert "[validation_matched]" in m["split_origin"]["test"]
    assert "carved" in m["split_origin"]["dev"]
    assert m["counts"]["test"]["rows"] == SIZES["validation_matched"]
    assert m["counts"]["train"]["rows"] + m["counts"]["dev"]["rows"] == SIZES["train"]
    assert all(r["id"].startswith("validation_matched:") for r in p.splits["test"])
    assert all(r["id"].startswith("train:") for r in p.splits["dev"])


def test_named_splits_are_used_as_named(mnli):
    splits = {"dev": "validation_mismatched", "test": "validation_matched"}
    _, p = prepare(f"hf:{mnli}:mnli", name="mnli", hf_splits=splits)
    m = p.meta
    assert m["source_splits"] == {"train": "train", **splits}
    assert m["counts"]["dev"]["rows"] == SIZES["validation_mismatched"]
    assert m["counts"]["test"]["rows"] == SIZES["validation_matched"]
    assert m["counts"]["train"]["rows"] == SIZES["train"]
    assert all(r["id"].startswith("validation_mismatched:") for r in p.splits["dev"])


def test_naming_only_test_leaves_dev_to_the_default_rule(mnli):
    _, p = prepare(f"hf:{mnli}:mnli", name="mnli", hf_splits={"test": "validation_mismatched"})
    # the default dev split (validation_matched) is free: it stays dev, nothing is carved
    assert p.meta["source_splits"] == {
        "train": "train",
        "dev": "validation_matched",
        "test": "validation_mismatched",
    }
    assert p.meta["counts"]["train"]["rows"] == SIZES["train"]


@pytest.mark.parametrize(
    ("splits", "expected"),
    [
        ({"test": "validation"}, "tasks.mnli.hf_splits.test: no split 'validation'"),
        ({"test": "test_matched"}, "tasks.mnli.hf_splits.test: split 'test_matched'"),
        ({"dev": "test_mismatched"}, "has no labels"),
    ],
)
def test_a_bad_split_name_is_one_clear_error(mnli, splits, expected):
    task = TaskConfig(source=f"hf:{mnli}:mnli", hf_splits=splits)
    with pytest.raises(IsoprobeError) as err:
        read_source(task, "tasks.mnli")
    assert expected in str(err.value)
    if "no split" in expected:
        assert "validation_matched" in str(err.value)  # the splits it has are listed


def test_hf_splits_is_validated_with_the_params():
    with pytest.raises(ValueError, match="hf: sources only"):
        TaskConfig(source="embedded:tweets", hf_splits={"test": "x"})
    with pytest.raises(ValueError, match="different splits"):
        TaskConfig(source="hf:glue:mnli", hf_splits={"dev": "a", "test": "a"})
    with pytest.raises(ValueError, match="extra"):
        TaskConfig(source="hf:glue:mnli", hf_splits={"validation": "a"})
