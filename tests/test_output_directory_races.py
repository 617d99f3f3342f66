"""A directory under --o (or --o itself) replaced by a symbolic link after the run checked it:
the TIFF lands in the directory that was checked, or the movie fails with a message; nothing is
ever written through the link."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

import cryotiff.convert as C
import cryotiff.io.tiff as T
from cryotiff.cli import main
from cryotiff.io.atomic import TEMPORARY_MARK
from cryotiff.simulate.write import write_mrc_movie


def movie(path: Path, seed: int = 1) -> np.ndarray:
    frames = np.random.default_rng(seed).integers(0, 9, (3, 24, 32)).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mrc_movie(path, frames, 1, pixel_size_angstrom=1.05)
    return frames


def swap_for_link(directory: Path, aside: Path, target: Path) -> None:
    """``directory`` is moved to ``aside`` and a symbolic link to ``target`` takes its name."""
    target.mkdir(exist_ok=True)
    os.rename(directory, aside)
    os.symlink(target, directory)


def temporaries(*directories: Path) -> list[Path]:
    return [p for d in directories for p in d.iterdir() if TEMPORARY_MARK in p.name]


def test_a_directory_under_o_replaced_by_a_link_before_the_write_fails_the_movie(
        in_tmp: Path, capsys, monkeypatch) -> None:
    movie(Path("Movies/a.mrc"))
    other = movie(Path("b.mrc"), 2)
    real = C.open_page_source
    swapped = []

    def opened_then_swapped(path, options, context=None):  # after run_job made and checked out/Movies
        source = real(path, options, context)
        if path.name == "a.mrc" and not swapped:
            swapped.append(path)
            swap_for_link(Path("out/Movies"), Path("out/Movies.checked"), Path("elsewhere").resolve())
        return source

    monkeypatch.setattr(C, "open_page_source", opened_then_swapped)
    assert main(["--i", "Movies/a.mrc", "b.mrc", "--o", "out"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert ("out/Movies: the output directory was replaced (by a symbolic link or another directory) since the run "
            "checked it; nothing is written there") in err, err
    assert list(Path("elsewhere").iterdir()) == []  # nothing through the link
    assert list(Path("out/Movies.checked").iterdir()) == []
    np.testing.assert_array_equal(tifffile.imread("out/b.tif")[..., ::-1, :], other)  # the other movie converts


def test_a_directory_replaced_by_a_link_during_the_write_keeps_the_file_where_it_was_written(
        in_tmp: Path, capsys, monkeypatch) -> None:
    frames = movie(Path("Movies/a.mrc"))
    real_check = T.check_complete

    def checked_then_swapped(*args, **kwargs):  # the pages are written; the rename comes next
        real_check(*args, **kwargs)
        swap_for_link(Path("out/Movies"), Path("out/Movies.checked"), Path("elsewhere").resolve())

    monkeypatch.setattr(T, "check_complete", checked_then_swapped)
    assert main(["--i", "Movies/a.mrc", "--o", "out"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert ("out/Movies/a.tif: its directory was replaced (by a symbolic link or another directory) while the file "
            "was written; the file went into the directory that was there when the writing began") in err, err
    assert list(Path("elsewhere").iterdir()) == []
    assert temporaries(Path("out/Movies.checked")) == []
    np.testing.assert_array_equal(tifffile.imread("out/Movies.checked/a.tif")[..., ::-1, :], frames)


def test_o_given_as_a_link_is_followed_but_not_a_change_of_it_during_the_run(
        in_tmp: Path, capsys, monkeypatch) -> None:
    first = movie(Path("a.mrc"))
    movie(Path("b.mrc"), 2)
    Path("disk1").mkdir()
    Path("disk2").mkdir()
    os.symlink("disk1", "out")  # a user's --o that is a link: followed
    real = C.open_page_source

    def opened_then_retargeted(path, options, context=None):
        if path.name == "b.mrc":  # another process points the link elsewhere during the run
            os.unlink("out")
            os.symlink("disk2", "out")
        return real(path, options, context)

    monkeypatch.setattr(C, "open_page_source", opened_then_retargeted)
    assert main(["--i", "a.mrc", "b.mrc", "--o", "out"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    np.testing.assert_array_equal(tifffile.imread("disk1/a.tif")[..., ::-1, :], first)
    assert "out: the output directory was replaced (by a symbolic link or another directory) since the run" in err
    assert not Path("disk2/b.tif").exists() and not Path("disk1/b.tif").exists()
    assert temporaries(Path("disk1"), Path("disk2")) == []


def test_a_link_under_o_that_was_there_when_checked_is_still_followed(in_tmp: Path) -> None:
    frames = movie(Path("Movies/a.mrc"))
    Path("fast").mkdir()
    Path("out").mkdir()
    os.symlink(Path("fast").resolve(), "out/Movies")  # docs/conventions.md: an output tree over several disks
    assert main(["--i", "Movies/a.mrc", "--o", "out"]) == 0
    np.testing.assert_array_equal(tifffile.imread("fast/a.tif")[..., ::-1, :], frames)
