"""The one write path: links never followed, files never replaced unless the tools wrote them, a full disk named."""

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from erl_plugin.utils.outputs import (
    MARKER,
    DiskFullError,
    OutputError,
    OutputFolder,
    output_lock,
    staged_directory,
    write_file,
)


def test_write_file_replaces_atomically_and_refuses_links_and_unwanted_replacement(tmp_path: Path) -> None:
    target = tmp_path / "a/b.bin"
    digest = write_file(target, b"one")
    assert target.read_bytes() == b"one" and len(digest) == 64
    with pytest.raises(OutputError, match="already exists"):
        write_file(target, b"two", replace=False)
    write_file(target, b"two")
    assert target.read_bytes() == b"two"
    precious = tmp_path / "precious"
    precious.write_bytes(b"keep")
    (tmp_path / "link").symlink_to(precious)
    with pytest.raises(OutputError, match="is a symbolic link"):
        write_file(tmp_path / "link", b"overwritten")
    assert precious.read_bytes() == b"keep" and (tmp_path / "link").is_symlink()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.bin"]  # no temporary file left


def test_a_full_disk_is_named_and_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "net.pth"
    target.write_bytes(b"previous")

    def no_space(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DiskFullError, match=f"no space left on the device writing {target}"):
        write_file(target, b"new")
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["net.pth"]


def test_an_output_folder_writes_beside_the_users_files_and_replaces_only_its_own(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out/notes.txt").write_text("mine")
    with OutputFolder(tmp_path / "out", tool="t") as out:
        out.claim(["table.md", "picture.png"])
        out.write_text("table.md", "| a |\n")
        out.write_image("picture.png", np.zeros((4, 4, 3), np.uint8))
        with pytest.raises(OutputError, match="notes.txt exists and was not written by the tools"):
            out.claim(["notes.txt"])
        with pytest.raises(OutputError, match="must stay inside"):
            out.claim(["../escape.md"])
    assert json.loads((tmp_path / "out" / MARKER).read_text()) == {"tool": "t", "files": ["picture.png", "table.md"]}
    with OutputFolder(tmp_path / "out", tool="t") as out, pytest.raises(OutputError, match="pass --overwrite"):
        out.claim(["table.md"])
    with OutputFolder(tmp_path / "out", tool="t", overwrite=True) as out:
        out.write_text("table.md", "| b |\n")
    assert (tmp_path / "out/table.md").read_text() == "| b |\n" and (tmp_path / "out/notes.txt").read_text() == "mine"
    with pytest.raises(OutputError, match="is the input"):
        OutputFolder(tmp_path / "out", tool="t", inputs=[tmp_path / "out"])


def test_overwrite_of_a_staged_folder_refuses_a_users_file_inside(tmp_path: Path) -> None:
    with staged_directory(tmp_path / "data", tool="t") as staging:
        (staging / "x.txt").write_text("x")
    assert json.loads((tmp_path / "data" / MARKER).read_text()) == {"tool": "t", "files": ["x.txt"]}
    (tmp_path / "data/mine.txt").write_text("mine")
    with pytest.raises(OutputError, match="mine.txt was not written by the tools"):
        with staged_directory(tmp_path / "data", overwrite=True, tool="t"):
            pass
    (tmp_path / "data/mine.txt").unlink()
    with staged_directory(tmp_path / "data", overwrite=True, tool="t") as staging:
        (staging / "y.txt").write_text("y")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [MARKER, "y.txt"]


def test_a_lock_of_a_dead_run_removes_only_what_it_recorded(tmp_path: Path) -> None:
    (tmp_path / "out.tmp-999999").mkdir()  # recorded by the dead run
    (tmp_path / "out.old-2024").mkdir()  # the user's, named like a leftover
    record = {"owner": "erl_plugin", "pid": 999999, "host": os.uname().nodename, "creates": ["out.tmp-999999"]}
    (tmp_path / "out.lock").write_text(json.dumps(record))
    with output_lock(tmp_path / "out"):
        assert json.loads((tmp_path / "out.lock").read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.old-2024"]
