"""What every stage script shares: an IsoprobeError or a file-system OSError becomes one line on
stderr and exit code 2 (no traceback)."""

from __future__ import annotations

import errno
import os

import pytest

from isoprobe.core.errors import IsoprobeError
from isoprobe.core.stage import run_stage


def failing(err: Exception):
    def main() -> None:
        raise err

    return main


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "no permission"),
        (errno.ENOTDIR, "a file is where a folder goes"),
        (errno.EIO, "check the path, free space and permissions"),
    ],
)
def test_file_system_errors_are_one_line_and_exit_2(capsys, code, hint):
    err = OSError(code, os.strerror(code), "data/embeddings/pretrained/t/.train.tmp")
    with pytest.raises(SystemExit) as exit_:
        run_stage(failing(err))
    assert exit_.value.code == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and message.startswith("isoprobe: error: ")
    assert "data/embeddings/pretrained/t/.train.tmp" in message and os.strerror(code) in message
    assert hint in message


def test_a_rename_names_both_paths(capsys):
    err = OSError(errno.EXDEV, os.strerror(errno.EXDEV), "a.tmp", None, "a")
    with pytest.raises(SystemExit):
        run_stage(failing(err))
    assert "a.tmp -> a" in capsys.readouterr().err


def test_isoprobe_errors_keep_their_message(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_stage(failing(IsoprobeError("tasks.t.source: data file not found")))
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "isoprobe: error: tasks.t.source: data file not found\n"


def test_other_errors_are_not_hidden():
    with pytest.raises(ZeroDivisionError):
        run_stage(failing(ZeroDivisionError("a bug shows as a bug")))
