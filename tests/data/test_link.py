"""data/sources/<task>: the link DVC hashes points at exactly what the task's source reads."""

from __future__ import annotations

import json

import pytest

from isoprobe.core.config import TaskConfig
from isoprobe.core.errors import IsoprobeError
from isoprobe.data.link import check_link, link_source, source_target
from isoprobe.data.sources import tweets_path


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / ".git").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_file_source_is_linked_and_relinked_atomically(project):
    (project / "a.csv").write_text("text,label\nx,0\n")
    (project / "b.csv").write_text("text,label\ny,1\n")
    link = link_source("mine", TaskConfig(source="csv:a.csv"))
    assert link.is_symlink() and link.resolve() == (project / "a.csv").resolve()
    assert link.read_text() == "text,label\nx,0\n"
    link_source("mine", TaskConfig(source="csv:b.csv"))  # replaces the old link
    assert link.resolve() == (project / "b.csv").resolve()
    assert sorted(p.name for p in link.parent.iterdir()) == ["mine"]  # no temporary left


def test_folder_and_embedded_sources(project):
    (project / "glue").mkdir()
    assert source_target(TaskConfig(source="glue_tsv:glue"), "t") == (project / "glue").resolve()
    link = link_source("tweets", TaskConfig(source="embedded:tweets"))
    assert link.resolve() == tweets_path().resolve()


def test_hub_dataset_gets_a_pin_file(project):
    link = link_source("hub", TaskConfig(source="hf:some/dataset:cfg"))
    assert not link.is_symlink()
    assert json.loads(link.read_text()) == {"source": "hf:some/dataset:cfg"}


def test_missing_data_names_the_key(project):
    (project / "a.csv").write_text("text,label\nx,0\n")
    link_source("mine", TaskConfig(source="csv:a.csv"))
    with pytest.raises(
        IsoprobeError, match=r"tasks\.mine\.source: data file or directory not found"
    ):
        link_source("mine", TaskConfig(source="csv:nope.csv"))
    assert not (project / "data" / "sources" / "mine").exists()


def test_stale_link_stops_prepare(project):
    (project / "a.csv").write_text("text,label\nx,0\n")
    (project / "b.csv").write_text("text,label\ny,1\n")
    link_source("mine", TaskConfig(source="csv:a.csv"))
    check_link("mine", TaskConfig(source="csv:a.csv"))  # consistent: passes
    with pytest.raises(IsoprobeError, match=r"dvc repro link@mine"):
        check_link("mine", TaskConfig(source="csv:b.csv"))
    check_link("other", TaskConfig(source="csv:b.csv"))  # no link (outside DVC): passes
