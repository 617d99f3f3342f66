"""File systems whose ``flock`` fails: Lustre mounted without ``-o flock`` (its default gives
ENOSYS), NFS without its lock service (ENOLCK), some FUSE and SMB mounts (EOPNOTSUPP, EINVAL).
A run into such an ``--o`` must still convert every movie, bit for bit, with its manifest line
and movies.star, and say what it could not guarantee; before, every TIFF failed at its
temporary file's lock."""

from __future__ import annotations

import errno
import fcntl
from pathlib import Path

import numpy as np
import pytest

import cryotiff.io.atomic as atomic
from cryotiff.cli import main
from cryotiff.manifest import read_manifest

from .helpers import int16_movie, read_tiff_frames, temporary_files_of


@pytest.fixture(params=[errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL],
                ids=["ENOSYS", "ENOLCK", "EOPNOTSUPP", "EINVAL"])
def no_locks(request, monkeypatch) -> int:
    """Every ``flock`` in the process fails with the parametrised errno."""

    def flock(fd, operation):
        raise OSError(request.param, "simulated: " + errno.errorcode[request.param])

    monkeypatch.setattr(fcntl, "flock", flock)
    return request.param


def test_a_run_into_a_file_system_without_locks_converts_every_movie(tmp_path: Path, no_locks, capsys,
                                                                     monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    movies = {name: int16_movie(tmp_path / "in" / f"{name}.mrc", seed, n_frames=3) for seed, name in enumerate("ab")}
    out = tmp_path / "out"
    assert main(["--i", "in/*.mrc", "--o", str(out)]) == 0
    printed = capsys.readouterr()
    for name, frames in movies.items():
        np.testing.assert_array_equal(read_tiff_frames(out / "in" / f"{name}.tif"), frames)
        assert temporary_files_of(out / "in" / f"{name}.tif") == []
    assert sorted(read_manifest(out)) == ["in/a.tif", "in/b.tif"]
    assert (out / "movies.star").exists()
    assert "cannot lock files" in printed.out + printed.err
    assert "Traceback" not in printed.err
    assert main(["--verify_only", "--o", str(out)]) == 0


def test_without_locks_a_leftover_temporary_is_left_alone(tmp_path: Path, no_locks) -> None:
    """Without locks a temporary cannot be told from one being written: never removed."""
    leftover = tmp_path / "a.tif.cryotiff-4711-0123abcd.tmp"
    leftover.write_bytes(b"")
    assert atomic.remove_if_stale(leftover) is False
    assert leftover.exists()


def test_an_unexpected_lock_error_still_fails_the_movie_with_a_message(tmp_path: Path, monkeypatch, capsys) -> None:
    """EIO, say, is not 'no locks here': the TIFF is not written, and the message names it."""

    def flock(fd, operation):
        raise OSError(errno.EIO, "Input/output error")

    int16_movie(tmp_path / "a.mrc", 1)
    monkeypatch.setattr(fcntl, "flock", flock)
    assert main(["--i", str(tmp_path / "a.mrc"), "--o", str(tmp_path / "out")]) == 1
    printed = capsys.readouterr()
    assert not (tmp_path / "out" / "a.tif").exists() and temporary_files_of(tmp_path / "out" / "a.tif") == []
    assert "a.tif" in printed.err and "Input/output error" in printed.err, printed.err
    assert "Traceback" not in printed.err
