"""Atomic outputs: a writer killed at any moment leaves the previous complete output (or none), and
the next write clears what the killed one left behind."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from isoprobe.core.io import atomic_dir, atomic_file, read_json, write_json, write_safetensors

KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from isoprobe.core.io import atomic_dir, atomic_file, write_safetensors
    import numpy as np
    kind, target = sys.argv[1], Path(sys.argv[2])
    if kind == "file":
        with atomic_file(target) as f:
            f.write('{"half": ')
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "dir":
        with atomic_dir(target) as tmp:
            (tmp / "a.json").write_text("{}")
            os.kill(os.getpid(), signal.SIGKILL)
    else:
        import safetensors.numpy as st
        def killed(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        st.save_file = killed
        write_safetensors(target, {"x": np.zeros(3)})
    """
)


def kill_while_writing(kind: str, target) -> None:
    res = subprocess.run([sys.executable, "-c", KILLED_WRITER, kind, str(target)], check=False)
    assert res.returncode == -9


@pytest.mark.parametrize("kind", ["file", "dir", "safetensors"])
def test_killed_writer_keeps_the_previous_output_and_next_write_cleans_up(tmp_path, kind):
    target = tmp_path / {"file": "m.json", "dir": "out", "safetensors": "e.safetensors"}[kind]

    def write_complete(value: int) -> None:
        if kind == "file":
            write_json(target, {"v": value})
        elif kind == "dir":
            with atomic_dir(target) as tmp:
                write_json(tmp / "a.json", {"v": value})
        else:
            write_safetensors(target, {"x": np.full(3, value, dtype=np.float32)})

    def read() -> int:
        if kind == "file":
            return read_json(target)["v"]
        if kind == "dir":
            return read_json(target / "a.json")["v"]
        from safetensors.numpy import load_file

        return int(load_file(str(target))["x"][0])

    write_complete(1)
    kill_while_writing(kind, target)
    assert read() == 1  # the complete previous output, untouched
    stale = list(tmp_path.glob(f".{target.name}.tmp-*"))
    assert stale, "the killed writer left no temporary (the test did not kill mid-write)"
    write_complete(2)
    assert read() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_killed_first_write_leaves_no_output(tmp_path):
    target = tmp_path / "new.json"
    kill_while_writing("file", target)
    assert not target.exists()


def test_failed_write_leaves_no_output_and_no_temporary(tmp_path):
    target = tmp_path / "m.json"
    with pytest.raises(ValueError):
        write_json(target, {"bad": float("nan")})  # JSON has no NaN: refused, nothing published
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("partial")
        raise RuntimeError("stage failed")
    assert list(tmp_path.iterdir()) == []


def test_other_files_in_the_folder_are_not_touched(tmp_path):
    (tmp_path / ".other.json.tmp-abc").write_text("someone else's")
    with atomic_file(tmp_path / "m.json") as f:
        json.dump({}, f)
    assert (tmp_path / ".other.json.tmp-abc").exists()
