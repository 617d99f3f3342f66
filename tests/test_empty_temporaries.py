"""An empty temporary file whose lock is free is removed at once, not only once it is 10
minutes old: a writer that had created it but not locked it yet sees its name gone once it has
its lock, and writes under another name, so removing it never costs a writer its file."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import numpy as np

import cryotiff.io.atomic as A
from cryotiff.cli import main
from cryotiff.simulate.write import write_mrc_movie

from .helpers import read_tiff_frames


def test_an_empty_temporary_left_a_moment_ago_by_a_dead_writer_is_removed(tmp_path: Path) -> None:
    left = tmp_path / A.temporary_name("a.tif", "999999-0123abcd")
    left.write_bytes(b"")  # killed between its creation and its lock: now, not 10 minutes ago
    assert A.remove_if_stale(left)
    assert not left.exists()


def test_a_rerun_removes_the_empty_temporary_of_a_killed_conversion(in_tmp: Path, capsys) -> None:
    frames = np.random.default_rng(2).integers(0, 9, (2, 16, 20)).astype(np.int16)
    write_mrc_movie(Path("a.mrc"), frames, 1, pixel_size_angstrom=1.0)
    Path("out").mkdir()
    left = Path("out") / A.temporary_name("a.tif", "999999-0123abcd")
    left.write_bytes(b"")
    assert main(["--i", "a.mrc", "--o", "out", "--only_do_unfinished"]) == 0
    assert f"Removed {left}: a temporary file left by an interrupted conversion" in capsys.readouterr().out
    assert sorted(p.name for p in Path("out").iterdir() if A.TEMPORARY_MARK in p.name) == []
    np.testing.assert_array_equal(read_tiff_frames(Path("out/a.tif")), frames)


def test_a_writer_whose_empty_temporary_is_removed_before_it_locks_it_writes_under_another_name(
        tmp_path: Path, monkeypatch) -> None:
    real_flock = fcntl.flock
    removed: list[str] = []

    def removed_before_the_lock(fd, operation):
        if operation == fcntl.LOCK_EX and not removed:
            # another run's stale check, between the writer's creation of the file and its lock
            [name] = [p for p in os.listdir(tmp_path) if A.TEMPORARY_MARK in p]
            assert A.remove_if_stale(tmp_path / name)
            removed.append(name)
        return real_flock(fd, operation)

    monkeypatch.setattr(A.fcntl, "flock", removed_before_the_lock)
    A.write_bytes_atomically(tmp_path / "a.bin", b"complete")
    assert removed and (tmp_path / "a.bin").read_bytes() == b"complete"
    assert [p for p in os.listdir(tmp_path) if A.TEMPORARY_MARK in p] == []
